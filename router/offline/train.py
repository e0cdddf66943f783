"""Offline training of :class:`router.classifier.QualityClassifier` (scikit-learn lives here only).

Recipe: the word TF-IDF featuriser (router/features.py; the structure-feature block is optional and off
by default) → one logistic regression per model on the rows where that model's label is known (unknown labels, NaN, are left out of its fit), and, where the
data has costs, a per-model affine cost model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

from router.classifier import CostModel, QualityClassifier
from router.features import fit_featurizer
from router.offline.datasets import LabeledDataset

__all__ = ["TrainConfig", "train_classifier", "fit_cost_model"]


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults were chosen by cross-validation (bench/router_ablation.py)."""

    C: float = 1.0
    min_df: int = 2
    max_features: int = 60000
    dense: bool = False  # the structure-feature block: within noise in cross-validation, so off
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
    x = sparse.hstack([xt, sparse.csr_matrix(xd)]).tocsr()
    m = len(ds.models)
    coef = np.zeros((x.shape[1], m))
    b = np.zeros(m)
    for j in range(m):
        known = ~np.isnan(ds.labels[:, j])
        coef[:, j], b[j] = _logreg(x[known], ds.labels[known, j], cfg.C, cfg.seed)
    if strong is None and weak is None and ds.strong_weak is not None:
        strong, weak = ds.strong_weak
    return QualityClassifier(
        featurizer=fz,
        models=list(ds.models),
        text_coef=coef[: fz.n_text].copy(),
        dense_coef=coef[fz.n_text :].copy(),
        intercept=b,
        strong=strong,
        weak=weak,
        cost_model=fit_cost_model(ds),
        metadata={
            "train_config": asdict(cfg),
            "n_train": len(ds),
            "train_seconds": round(time.perf_counter() - t0, 2),
            "vocab_size": fz.n_text,
        },
    )
