"""Offline training of :class:`router.classifier.QualityClassifier` (scikit-learn lives here only).

Recipe (see router/classifier.py for the model): frozen TF-IDF + dense featuriser → per-model logistic
heads → per-model gradient-boosted stackers on out-of-fold head logits + dense features → for two-model
data, a boosted model of the strong−weak gap. Unknown labels (NaN) are left out of each model's fit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

from router.classifier import CompiledTrees, CostModel, QualityClassifier, compile_hist_gb
from router.features import fit_featurizer
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
    aux_group_priors: bool = True
    group_prior_n: float = 10.0
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


def _group_priors(labels: np.ndarray, groups: Sequence[str], prior_n: float) -> np.ndarray:
    """Leave-one-out, shrunk per-group (MMLU subject / task) accuracy of every model, as soft labels.

    Why: the subject explains much of when the strong model is needed (in-sample, a perfect subject
    prior alone reaches APGR ≈ 0.76 on MMLU) but is not given at routing time. Regressing these
    low-noise group-level targets on the text teaches heads that infer the subject's prior from the
    prompt alone; the stackers then combine them with the per-prompt heads.
    """
    g = np.asarray(groups)
    out = np.full(labels.shape, np.nan)
    glob = np.nanmean(labels, axis=0)
    for key in np.unique(g):
        m = g == key
        lab = labels[m]
        known = ~np.isnan(lab)
        s = np.nansum(lab, axis=0)
        n = known.sum(axis=0)
        own = np.nan_to_num(lab)
        out[m] = (s - own + prior_n * glob) / (n - known + prior_n)
    return out


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return [perm[i::k] for i in range(k)]


def _gb(kind: str, cfg: TrainConfig, seed: int):  # noqa: ANN202 - sklearn estimator
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    common = dict(
        max_iter=cfg.gb_iter,
        learning_rate=cfg.gb_lr,
        max_depth=cfg.gb_depth,
        min_samples_leaf=cfg.gb_min_leaf,
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


def _stacker_beats_linear(z: np.ndarray, y: np.ndarray, oof_logit: np.ndarray, cfg: TrainConfig) -> bool:
    """Keep a model's boosted stacker only if its out-of-fold log-loss beats the linear head's.

    Why: on small or mostly-textual data (RouterBench, ~1k prompts) the trees add variance, on MMLU they
    add signal; the training data decides, per model.
    """
    oof = np.zeros(len(y))
    for te in _folds(len(y), cfg.n_folds, cfg.seed + 2):
        tr = np.setdiff1d(np.arange(len(y)), te)
        zz, yy, ww = _expand_soft(z[tr], y[tr])
        if len(np.unique(yy)) < 2:
            return False
        oof[te] = _gb("clf", cfg, cfg.seed).fit(zz, yy, sample_weight=ww).predict_proba(z[te])[:, 1]
    return _log_loss(y, oof) < _log_loss(y, 1.0 / (1.0 + np.exp(-oof_logit)))


def _choose_gap_blend(
    z: np.ndarray, d: np.ndarray, oof_logits: np.ndarray, cfg: TrainConfig
) -> tuple[float, float]:
    """Weight of the linear p_s − p_w vs the tree gap, picked by out-of-fold APGR on the training data.

    Why: with little data (GSM8K: a few hundred prompts) the trees overfit and the linear heads rank
    better; with more data (MMLU) the trees win. Letting the training data decide avoids hand-tuning.
    """
    tree_oof = np.zeros(len(d))
    for te in _folds(len(d), cfg.n_folds, cfg.seed + 1):
        tr = np.setdiff1d(np.arange(len(d)), te)
        est = _gb("reg", cfg, cfg.seed).fit(z[tr], d[tr])
        tree_oof[te] = est.predict(z[te])
    p = 1.0 / (1.0 + np.exp(-oof_logits))
    lin_gap = p[:, 0] - p[:, 1]
    best, best_a = -np.inf, 0.0
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        v = _oof_apgr(a * lin_gap + (1 - a) * tree_oof, d)
        if v > best + 1e-9:
            best, best_a = v, a
    return best_a, best


def train_classifier(
    ds: LabeledDataset,
    cfg: TrainConfig | None = None,
    strong: str | None = None,
    weak: str | None = None,
) -> QualityClassifier:
    """Fit the full model on ``ds``. Deterministic for a given config and data."""
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    fz = fit_featurizer(ds.prompts, min_df=cfg.min_df, max_features=cfg.max_features)
    xt, xd = fz.matrices(ds.prompts)
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
    groups = ds.subjects if ds.subjects is not None else ds.tasks
    if cfg.aux_group_priors and groups is not None and len(set(groups)) > 1:
        head_labels = np.hstack([head_labels, _group_priors(labels, groups, cfg.group_prior_n)])
    coef, b = _fit_heads(x, head_labels, cfg.C, cfg.seed)

    if strong is None and weak is None and ds.strong_weak is not None:
        strong, weak = ds.strong_weak
    stackers: list[CompiledTrees] | None = None
    gap: CompiledTrees | None = None
    gap_blend = 0.0
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
        z = np.hstack([xd, oof])
        for j, name in enumerate(ds.models):
            known = ~np.isnan(labels[:, j])
            if known.any():
                p_oof = 1.0 / (1.0 + np.exp(-oof[known, j]))
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
            stack_mask: list[bool] = []
            for j in range(len(ds.models)):
                known = ~np.isnan(labels[:, j])
                y = labels[known, j]
                if len(np.unique(y)) < 2:
                    stackers = None
                    break
                zz, yy, ww = _expand_soft(z[known], y)
                est = _gb("clf", cfg, cfg.seed).fit(zz, yy, sample_weight=ww)
                stackers.append(compile_hist_gb(est))
                stack_mask.append(_stacker_beats_linear(z[known], y, oof[known, j], cfg))
        if want_gap:
            i_s, i_w = ds.models.index(strong), ds.models.index(weak)  # type: ignore[arg-type]
            known = ~np.isnan(labels[:, i_s]) & ~np.isnan(labels[:, i_w])
            d = labels[known, i_s] - labels[known, i_w]
            gap = compile_hist_gb(_gb("reg", cfg, cfg.seed).fit(z[known], d))
            gap_blend, oof_apgr = _choose_gap_blend(z[known], d, oof[known][:, [i_s, i_w]], cfg)
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
        svd=svd_proj,
        cost_model=fit_cost_model(ds),
        metadata={
            "train_config": asdict(cfg),
            "n_train": len(ds),
            "train_seconds": round(time.perf_counter() - t0, 2),
            "vocab_size": n_text,
            "oof_metrics": oof_metrics,
            "stack_mask": stack_mask if stackers is not None else None,
        },
    )
    return clf
