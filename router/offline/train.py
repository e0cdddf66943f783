"""Offline training of :class:`router.classifier.QualityClassifier` (scikit-learn lives here only).

Recipe: the word TF-IDF featuriser (router/features.py; the structure-feature block is optional and off
by default); where the data names two or more groups (subjects or tasks), a group prior
(:func:`fit_group_prior`); then one logistic regression per model on the TF-IDF row plus the prior's
logits, on the rows where that model's label is known (unknown labels, NaN, are left out of its fit);
and, where the data has costs, a per-model affine cost model.

The heads learn how far to trust the prior from *cross-fitted* prior logits: each training row's prior
comes from centroids and accuracies fitted on the other inner folds, so it is as (im)precise as the
prior of a prompt never seen. Fitted on a row's own label, the prior would look better than it is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

from router.classifier import CostModel, GroupPrior, QualityClassifier, prob_logit, softmax_rows
from router.features import fit_featurizer
from router.offline.datasets import LabeledDataset

__all__ = ["TrainConfig", "train_classifier", "fit_cost_model", "fit_group_prior"]


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults were chosen by cross-validation (bench/router_ablation.py)."""

    C: float = 1.0
    min_df: int = 2
    max_features: int = 60000
    dense: bool = False  # the structure-feature block: within noise in cross-validation, so off
    group_prior: bool = True  # used only when the data names 2 to max_groups groups
    max_groups: int = 256  # bounds the prior's (vocabulary × groups) matrix
    group_prior_n: float = 10.0  # pseudo-observations at a model's overall accuracy in each group's rate
    # softmax temperatures of the centroid match; the one with the best cross-fitted group likelihood wins
    group_temperatures: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0)
    inner_folds: int = 5
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


def train_classifier(
    ds: LabeledDataset,
    cfg: TrainConfig | None = None,
    strong: str | None = None,
    weak: str | None = None,
) -> QualityClassifier:
    """Fit the model on ``ds``. Deterministic for a given config and data."""
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    fz = fit_featurizer(ds.prompts, min_df=cfg.min_df, max_features=cfg.max_features, dense=cfg.dense)
    xt, xd = fz.matrices(ds.prompts)
    groups = ds.subjects if ds.subjects is not None else ds.tasks
    prior: GroupPrior | None = None
    prior_fit: dict[str, float] = {}
    blocks = [xt, sparse.csr_matrix(xd)]
    if cfg.group_prior and groups is not None and 2 <= len(set(groups)) <= cfg.max_groups:
        prior, prior_oof, prior_fit = fit_group_prior(xt, groups, ds.labels, cfg)
        blocks.append(sparse.csr_matrix(prior_oof))
    x = sparse.hstack(blocks).tocsr()
    coef, b = _fit_heads(x, ds.labels, cfg.C, cfg.seed)
    if strong is None and weak is None and ds.strong_weak is not None:
        strong, weak = ds.strong_weak
    n_text, n_dense = fz.n_text, fz.n_dense
    return QualityClassifier(
        featurizer=fz,
        models=list(ds.models),
        text_coef=coef[:n_text].copy(),
        dense_coef=coef[n_text : n_text + n_dense].copy(),
        intercept=b,
        strong=strong,
        weak=weak,
        cost_model=fit_cost_model(ds),
        prior=prior,
        prior_coef=coef[n_text + n_dense :].copy() if prior is not None else None,
        metadata={
            "train_config": asdict(cfg),
            "n_train": len(ds),
            "train_seconds": round(time.perf_counter() - t0, 2),
            "vocab_size": fz.n_text,
            "groups": len(prior.groups) if prior is not None else 0,
            **prior_fit,
        },
    )


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint index sets covering ``range(n)`` (a seeded permutation dealt round-robin)."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[i::k]) for i in range(k)]


def _centroids(x: sparse.csr_matrix, g: np.ndarray, k: int) -> np.ndarray:
    """(V, k) L2-normalised mean TF-IDF row of each group ``0..k-1`` (zeros for a group absent here)."""
    onehot = sparse.csr_matrix((np.ones(len(g)), (g, np.arange(len(g)))), shape=(k, len(g)))
    c = np.asarray((onehot @ x).todense()).T  # (V, k) sums; normalising makes them means' directions
    norm = np.linalg.norm(c, axis=0)
    return c / np.where(norm > 0, norm, 1.0)


def _group_accuracy(labels: np.ndarray, g: np.ndarray, k: int, prior_n: float) -> np.ndarray:
    """(k, M) accuracy of every model on every group, shrunk toward the model's overall accuracy by
    ``prior_n`` pseudo-observations (small groups do not swing the prior); NaN labels count for neither
    numerator nor denominator."""
    glob = np.nanmean(labels, axis=0) if len(labels) else np.full(labels.shape[1], 0.5)
    glob = np.where(np.isnan(glob), 0.5, glob)
    known = ~np.isnan(labels)
    onehot = sparse.csr_matrix((np.ones(len(g)), (g, np.arange(len(g)))), shape=(k, len(g)))
    hits = onehot @ np.where(known, labels, 0.0)
    seen = onehot @ known.astype(float)
    return (hits + prior_n * glob) / (seen + prior_n)


def fit_group_prior(
    xt: sparse.csr_matrix, groups: list[str], labels: np.ndarray, cfg: TrainConfig
) -> tuple[GroupPrior, np.ndarray, dict[str, float]]:
    """The group prior on all rows, each row's cross-fitted prior logits (n, M), and what was picked
    (temperature, log-frequency weight, cross-fitted top-1 group accuracy) for the manifest.

    Centroid similarities and accuracy tables are computed per inner fold from the other folds; the
    softmax temperature (and whether the groups' log-frequencies enter as intercepts) is the one whose
    cross-fitted posteriors give the true groups the highest likelihood. Only the group names pick it,
    never the correctness labels the heads are then fitted on.
    """
    names = sorted(set(groups))
    k = len(names)
    g = np.searchsorted(names, np.asarray(groups))
    n = len(g)
    sims = np.zeros((n, k))
    log_freq = np.zeros((n, k))
    acc_of_row = np.zeros((n, k, labels.shape[1]))
    for te in _folds(n, cfg.inner_folds, cfg.seed + 7):
        tr = np.setdiff1d(np.arange(n), te)
        sims[te] = np.asarray(xt[te] @ _centroids(xt[tr], g[tr], k))
        log_freq[te] = np.log((np.bincount(g[tr], minlength=k) + 1.0) / (len(tr) + k))
        acc_of_row[te] = _group_accuracy(labels[tr], g[tr], k, cfg.group_prior_n)
    best: tuple[float, float, float] | None = None
    for t in cfg.group_temperatures:
        for w in (0.0, 1.0):
            post = softmax_rows(t * sims + w * log_freq)
            ll = float(np.log(np.maximum(post[np.arange(n), g], 1e-300)).sum())
            if best is None or ll > best[0]:
                best = (ll, t, w)
    assert best is not None
    _, temp, w = best
    post = softmax_rows(temp * sims + w * log_freq)
    oof = prob_logit(np.einsum("ng,ngm->nm", post, acc_of_row))
    prior = GroupPrior(
        groups=names,
        coef=(temp * _centroids(xt, g, k)).astype(np.float32),
        intercept=w * np.log((np.bincount(g, minlength=k) + 1.0) / (n + k)),
        accuracy=_group_accuracy(labels, g, k, cfg.group_prior_n),
    )
    picked = {
        "group_temperature": temp,
        "group_log_frequency_weight": w,
        "group_top1_crossfit": round(float(np.mean(post.argmax(axis=1) == g)), 4),
    }
    return prior, oof, picked
