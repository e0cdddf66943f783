"""Offline training of :class:`router.classifier.QualityClassifier` (scikit-learn lives here only).

Recipe (see router/classifier.py for the model): frozen TF-IDF + dense featuriser → per-model logistic
heads, and, where the data names subjects or tasks, a group prior (router/group_prior.py) → per-model
gradient-boosted stackers on out-of-fold head logits + group priors + dense features → for two-model
data, a boosted model of the strong−weak gap (a residual on the group prior's gap when there is one).
Unknown labels (NaN) are left out of each model's fit.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

from router.classifier import CompiledTrees, CostModel, QualityClassifier, compile_hist_gb, logit, sigmoid
from router.features import fit_featurizer
from router.group_prior import GroupPrior, group_accuracy
from router.offline.datasets import LabeledDataset

__all__ = ["TrainConfig", "train_classifier", "fit_cost_model"]


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults were chosen by cross-validation on training halves only."""

    C: float = 1.0
    min_df: int = 2
    max_features: int = 60000
    stack: bool = True
    pair_gap: bool = True
    n_folds: int = 5
    gb_iter: int = 200
    gb_lr: float = 0.05
    gb_depth: int = 3
    gb_min_leaf: int = 40
    gb_l2: float = 1.0
    aux_difficulty: bool = True
    group_classifier: bool = True
    group_char_features: int = 15000  # χ²-selected against the groups (router.features.fit_char_ngrams)
    group_char_min_groups: int = 8  # a few coarse tasks are told apart by words alone: no char block
    group_C: float = 30.0
    group_prior_n: float = 10.0
    gap_iter: int = 100
    gap_min_leaf: int = 100
    svd_dims: int = 0
    seed: int = 0


def _expand_soft(x, y: np.ndarray):  # noqa: ANN001, ANN202 - sparse or dense matrix
    """Soft labels q ∈ [0, 1] (feedback scores) → each row twice, as 1 with weight q and 0 with weight 1 − q.

    This is exactly the log-likelihood of a Bernoulli with target q, so binary data is unchanged.
    """
    if np.all((y == 0) | (y == 1)):
        return x, y, None
    stack = sparse.vstack if sparse.issparse(x) else np.vstack
    return stack([x, x]), np.r_[np.ones(len(y)), np.zeros(len(y))], np.r_[y, 1.0 - y]


def _logreg(x: sparse.csr_matrix, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    x, y_fit, w = _expand_soft(x, y)
    if len(np.unique(y)) < 2 or (w is not None and (w[: len(y)].sum() == 0 or w[len(y) :].sum() == 0)):
        # a model that is always right (or wrong) on the data: constant prediction
        p = float(np.clip(y.mean() if len(y) else 0.5, 1e-3, 1 - 1e-3))
        return np.zeros(x.shape[1]), float(np.log(p / (1 - p)))
    m = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    m.fit(x, y_fit, sample_weight=w)
    return m.coef_.ravel().copy(), float(m.intercept_[0])


def _fit_heads(
    x: sparse.csr_matrix, labels: np.ndarray, c: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-model logistic heads on rows where that model's label is known. Returns (F, M) coef, (M,) b."""
    m = labels.shape[1]
    coef = np.zeros((x.shape[1], m))
    b = np.zeros(m)
    for j in range(m):
        known = ~np.isnan(labels[:, j])
        coef[:, j], b[j] = _logreg(x[known], labels[known, j], c, seed)
    return coef, b


def _fit_group_classifier(
    xw: sparse.csr_matrix, xc: sparse.csr_matrix, groups: np.ndarray, names: list[str], cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression P(group | word + char TF-IDF) → (word coef, char coef, intercept).

    Columns follow ``names``; a group absent from these rows (a CV fold) gets a very low intercept.
    ``tol=1e-3`` because subject accuracy is flat past it while the fit takes a third of the time.
    """
    from sklearn.linear_model import LogisticRegression

    x = sparse.hstack([xw, xc]).tocsr()
    m = LogisticRegression(C=cfg.group_C, max_iter=300, tol=1e-3, random_state=cfg.seed).fit(x, groups)
    coef = m.coef_.T
    icpt = m.intercept_
    if len(m.classes_) == 2:  # sklearn keeps one column for two classes: logits [0, z]
        coef = np.hstack([np.zeros_like(coef), coef])
        icpt = np.r_[0.0, icpt]
    full_coef = np.zeros((x.shape[1], len(names)), dtype=np.float32)
    full_b = np.full(len(names), -30.0)
    for k, cls in enumerate(m.classes_):
        j = names.index(cls)
        full_coef[:, j] = coef[:, k]
        full_b[j] = icpt[k]
    nw = xw.shape[1]
    return full_coef[:nw], full_coef[nw:], full_b


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return [perm[i::k] for i in range(k)]


def _gb(kind: str, cfg: TrainConfig, seed: int):  # noqa: ANN202 - sklearn estimator
    """Boosted trees: per-model stackers ("clf") or the strong−weak gap ("gap", a regression).

    The gap's target (−1/0/+1) is much noisier than a model's 0/1 label, so its trees are fewer and
    their leaves larger.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    common = dict(
        max_iter=cfg.gap_iter if kind == "gap" else cfg.gb_iter,
        learning_rate=cfg.gb_lr,
        max_depth=cfg.gb_depth,
        min_samples_leaf=cfg.gap_min_leaf if kind == "gap" else cfg.gb_min_leaf,
        l2_regularization=cfg.gb_l2,
        early_stopping=False,
        random_state=seed,
    )
    if kind == "clf":
        return HistGradientBoostingClassifier(**common)
    return HistGradientBoostingRegressor(**common)


def fit_cost_model(ds: LabeledDataset) -> CostModel | None:
    """Least-squares ``cost ≈ base + per_char·len(prompt)`` per model (None when the data has no costs)."""
    if ds.costs is None:
        return None
    n_chars = np.array([len(p) for p in ds.prompts], dtype=float)
    base = np.zeros(len(ds.models))
    per = np.zeros(len(ds.models))
    for j in range(len(ds.models)):
        c = ds.costs[:, j]
        ok = ~np.isnan(c)
        if ok.sum() >= 2 and np.ptp(n_chars[ok]) > 0:
            a = np.vstack([np.ones(ok.sum()), n_chars[ok]]).T
            sol, *_ = np.linalg.lstsq(a, c[ok], rcond=None)
            base[j], per[j] = sol
        elif ok.any():
            base[j] = float(c[ok].mean())
    return CostModel(models=list(ds.models), base=base, per_char=per)


def _oof_apgr(score: np.ndarray, d: np.ndarray) -> float:
    """APGR-equivalent ranking quality of ``score`` for gains ``d = strong − weak`` (training data only)."""
    from router.metrics import apgr, routing_curve

    strong = (d > 0).astype(float)
    weak = (d < 0).astype(float)
    return apgr(routing_curve(score, strong, weak))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _stacker_oof(z: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> np.ndarray | None:
    """Out-of-fold probabilities of a model's boosted stacker (None when a fold has one class only)."""
    oof = np.zeros(len(y))
    for te in _folds(len(y), cfg.n_folds, cfg.seed + 2):
        tr = np.setdiff1d(np.arange(len(y)), te)
        zz, yy, ww = _expand_soft(z[tr], y[tr])
        if len(np.unique(yy)) < 2:
            return None
        oof[te] = _gb("clf", cfg, cfg.seed).fit(zz, yy, sample_weight=ww).predict_proba(z[te])[:, 1]
    return oof


def _prior_weight(y: np.ndarray, p: np.ndarray, prior: np.ndarray) -> float:
    """Weight w of the group prior in ``(1 − w)·p + w·prior`` that minimises out-of-fold log-loss.

    Why: with many models and few prompts per model (RouterBench: 11 models, ~1k prompts) the per-prompt
    estimates are noisy, and ``argmax_m p_m − λ·c_m`` picks whichever model's noise is highest (the
    winner's curse); shrinking toward the inferred task's accuracy counters it, by as much as the
    training data says.
    """
    grid = np.linspace(0.0, 1.0, 11)
    losses = [_log_loss(y, (1 - w) * p + w * prior) for w in grid]
    return float(grid[int(np.argmin(losses))])


def _choose_gap_blend(
    z: np.ndarray, d: np.ndarray, base: np.ndarray, oof_logits: np.ndarray, cfg: TrainConfig
) -> tuple[float, float, float]:
    """(linear weight, residual-tree weight, OOF APGR) of the gap, picked by out-of-fold APGR on training data.

    The gap is ``a·(p_s − p_w)_linear + (1 − a)·(base + k·tree)``, where ``base`` is the group prior's gap
    (zeros without one) and the tree fits ``d − base``. Why let the data pick: with little data (GSM8K, a
    few hundred prompts) the trees overfit and the linear heads rank better; with more (MMLU) the
    group prior and the trees win.
    """
    tree_oof = np.zeros(len(d))
    for te in _folds(len(d), cfg.n_folds, cfg.seed + 1):
        tr = np.setdiff1d(np.arange(len(d)), te)
        est = _gb("gap", cfg, cfg.seed).fit(z[tr], d[tr] - base[tr])
        tree_oof[te] = est.predict(z[te])
    p = sigmoid(oof_logits)
    lin_gap = p[:, 0] - p[:, 1]
    scales = (0.0, 0.5, 1.0) if np.any(base) else (1.0,)
    best, best_a, best_k = -np.inf, 0.0, 1.0
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        for k in scales:
            v = _oof_apgr(a * lin_gap + (1 - a) * (base + k * tree_oof), d)
            if v > best + 1e-9:
                best, best_a, best_k = v, a, k
    return best_a, best_k, best


def train_classifier(
    ds: LabeledDataset,
    cfg: TrainConfig | None = None,
    strong: str | None = None,
    weak: str | None = None,
) -> QualityClassifier:
    """Fit the full model on ``ds``. Deterministic for a given config and data."""
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    groups = ds.subjects if ds.subjects is not None else ds.tasks
    use_groups = cfg.group_classifier and groups is not None and len(set(groups)) > 1
    use_char = use_groups and groups is not None and len(set(groups)) >= cfg.group_char_min_groups
    fz = fit_featurizer(
        ds.prompts,
        min_df=cfg.min_df,
        max_features=cfg.max_features,
        char_features=cfg.group_char_features if use_char else 0,
        char_labels=groups if use_char else None,
    )
    xt, xc, xd = fz.blocks(fz.featurize_many(ds.prompts))
    x = sparse.hstack([xt, sparse.csr_matrix(xd)]).tocsr()
    labels = ds.labels
    n_text = fz.n_text
    m = len(ds.models)
    if cfg.aux_difficulty and m >= 2:
        # joint "easiness" target: share of models right on the prompt (soft label). Much less noisy than
        # any single model's 0/1 label, it gives the stackers an IRT-like difficulty estimate.
        known = ~np.isnan(labels)
        easy = np.where(
            known.any(axis=1), np.nansum(labels, axis=1) / np.maximum(known.sum(axis=1), 1), np.nan
        )
        head_labels = np.hstack([labels, easy[:, None]])
    else:
        head_labels = labels
    group_prior: GroupPrior | None = None
    prior_oof: np.ndarray | None = None
    if use_groups:
        g_arr = np.asarray(groups)
        names = sorted(set(g_arr.tolist()))
        # out-of-fold priors for the training rows: classifier *and* accuracy table from the other folds,
        # so the stackers learn how far to trust the prior on prompts it has not seen
        prior_oof = np.zeros(labels.shape)
        for te in _folds(len(ds), cfg.n_folds, cfg.seed + 3):
            tr = np.setdiff1d(np.arange(len(ds)), te)
            wc, cc, gb = _fit_group_classifier(xt[tr], xc[tr], g_arr[tr], names, cfg)
            acc = group_accuracy(labels[tr], g_arr[tr], names, cfg.group_prior_n)
            prior_oof[te] = GroupPrior(names, wc, cc, gb, acc, fz.char).model_prior_many(xt[te], xc[te])
        wc, cc, gb = _fit_group_classifier(xt, xc, g_arr, names, cfg)
        group_prior = GroupPrior(
            names, wc, cc, gb, group_accuracy(labels, g_arr, names, cfg.group_prior_n), fz.char
        )
    coef, b = _fit_heads(x, head_labels, cfg.C, cfg.seed)

    if strong is None and weak is None and ds.strong_weak is not None:
        strong, weak = ds.strong_weak
    stackers: list[CompiledTrees] | None = None
    gap: CompiledTrees | None = None
    gap_blend = 0.0
    gap_tree_scale = 1.0
    gap_inputs: np.ndarray | None = None
    prior_w = np.zeros(len(ds.models))
    stack_mask: list[bool] = []
    svd_proj: np.ndarray | None = None
    oof_metrics: dict[str, float] = {}
    want_gap = cfg.pair_gap and strong is not None and weak is not None and len(ds.models) == 2
    if cfg.stack or want_gap:
        # out-of-fold linear logits: the stacker must see logits of the quality it will see at test time
        oof = np.zeros(head_labels.shape)
        for te in _folds(len(ds), cfg.n_folds, cfg.seed):
            tr = np.setdiff1d(np.arange(len(ds)), te)
            c_f, b_f = _fit_heads(x[tr], head_labels[tr], cfg.C, cfg.seed)
            oof[te] = (x[te] @ c_f) + b_f
        z = np.hstack([xd, oof] + ([logit(prior_oof)] if prior_oof is not None else []))
        for j, name in enumerate(ds.models):
            known = ~np.isnan(labels[:, j])
            if known.any():
                p_oof = sigmoid(oof[known, j])
                oof_metrics[f"oof_logloss_linear[{name}]"] = round(_log_loss(labels[known, j], p_oof), 4)
        if cfg.svd_dims:
            from sklearn.decomposition import TruncatedSVD

            k = min(cfg.svd_dims, xt.shape[1] - 1, len(ds) - 1)
            if k >= 2:
                svd = TruncatedSVD(n_components=k, random_state=cfg.seed).fit(xt)
                svd_proj = svd.components_.T.copy()
                z = np.hstack([z, xt @ svd_proj])
        if cfg.stack:
            stackers = []
            for j in range(len(ds.models)):
                known = ~np.isnan(labels[:, j])
                y = labels[known, j]
                if len(np.unique(y)) < 2:
                    stackers = None
                    break
                zz, yy, ww = _expand_soft(z[known], y)
                est = _gb("clf", cfg, cfg.seed).fit(zz, yy, sample_weight=ww)
                stackers.append(compile_hist_gb(est))
                p_lin = sigmoid(oof[known, j])
                p_stack = _stacker_oof(z[known], y, cfg)
                # keep a model's stacker only where it beats the linear head out-of-fold: on small or
                # mostly-textual data the trees add variance, on MMLU they add signal
                use = p_stack is not None and _log_loss(y, p_stack) < _log_loss(y, p_lin)
                stack_mask.append(use)
                if prior_oof is not None:
                    prior_w[j] = _prior_weight(y, p_stack if use else p_lin, prior_oof[known, j])
        if want_gap:
            i_s, i_w = ds.models.index(strong), ds.models.index(weak)  # type: ignore[arg-type]
            known = ~np.isnan(labels[:, i_s]) & ~np.isnan(labels[:, i_w])
            d = labels[known, i_s] - labels[known, i_w]
            base = np.zeros(len(d))
            if prior_oof is not None:
                base = prior_oof[known, i_s] - prior_oof[known, i_w]
            # with a group prior the residual tree sees only the structure features and the priors: on
            # MMLU training folds the per-prompt head logits added variance, not ranking signal
            n_d = xd.shape[1]
            gap_inputs = (
                np.r_[np.arange(n_d), np.arange(n_d + oof.shape[1], z.shape[1])]
                if prior_oof is not None
                else np.arange(z.shape[1])
            )
            zg = z[known][:, gap_inputs]
            gap = compile_hist_gb(_gb("gap", cfg, cfg.seed).fit(zg, d - base))
            gap_blend, gap_tree_scale, oof_apgr = _choose_gap_blend(
                zg, d, base, oof[known][:, [i_s, i_w]], cfg
            )
            oof_metrics["oof_apgr_gap"] = round(oof_apgr, 4)

    clf = QualityClassifier(
        featurizer=fz,
        models=list(ds.models),
        text_coef=coef[:n_text].copy(),
        dense_coef=coef[n_text:].copy(),
        intercept=b,
        stackers=stackers,
        stack_mask=stack_mask if stackers is not None else None,
        gap=gap,
        strong=strong,
        weak=weak,
        gap_blend=gap_blend,
        group_prior=group_prior,
        gap_on_prior=group_prior is not None,
        gap_tree_scale=gap_tree_scale,
        gap_inputs=gap_inputs,
        prior_weight=prior_w if group_prior is not None and prior_w.any() else None,
        svd=svd_proj,
        cost_model=fit_cost_model(ds),
        metadata={
            "train_config": asdict(cfg),
            "n_train": len(ds),
            "train_seconds": round(time.perf_counter() - t0, 2),
            "vocab_size": n_text,
            "oof_metrics": oof_metrics,
            "stack_mask": stack_mask if stackers is not None else None,
            "prior_weight": prior_w.round(2).tolist() if group_prior is not None else None,
        },
    )
    return clf
