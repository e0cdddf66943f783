"""Per-candidate-model quality classifier: p(answer acceptable | prompt) for every model, and selectors.

Pure (no I/O, no clock, no randomness). The model is one logistic regression per candidate model over
word TF-IDF, optionally with standardised structure features (router/features.py), fitted by scikit-learn offline
(``router.offline.train``) and frozen into numpy arrays, so one decision is a sparse dot product and a
sigmoid. For two models the routing score is ``p_strong − p_weak``.

Where the training data names groups (MMLU's subjects, RouterBench's tasks), a :class:`GroupPrior`
adds one input per model to every head: the logit of that model's accuracy on the groups the prompt
resembles. The group is not known at routing time; it is read from the prompt's TF-IDF row (nearest
group centroids), so the prior costs one more sparse product. Heavier parts (boosted stackers, a tree
model of the strong−weak gap, character n-grams, the structure features) moved APGR/AIQ by less than the
fold-to-fold noise and are gone (bench/RESULTS.md, the ablation table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from router.features import PromptFeatures, TextFeaturizer

__all__ = [
    "CostModel",
    "GroupPrior",
    "QualityClassifier",
    "sigmoid",
    "cheapest_above",
    "best_tradeoff",
    "calibrate_gap_threshold",
    "calibrate_quality_threshold",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, clipped so extreme logits neither overflow nor underflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


@dataclass
class CostModel:
    """Expected USD per request for each model: ``base[j] + per_char[j] · prompt_chars``.

    Prompt price scales with input tokens, and the answer length is roughly constant per task, so a
    per-model affine function of the prompt length is a cheap, decent predictor.
    """

    models: list[str]
    base: np.ndarray
    per_char: np.ndarray

    def predict(self, n_chars: int) -> np.ndarray:
        return np.maximum(self.base + self.per_char * float(n_chars), 0.0)

    def as_dict(self, n_chars: int) -> dict[str, float]:
        return dict(zip(self.models, self.predict(n_chars).tolist(), strict=True))


def softmax_rows(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (n, G) or (G,) array."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def prob_logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 − p))`` with ``p`` clipped to [1e-4, 1 − 1e-4], so a certain prior stays finite."""
    p = np.clip(p, 1e-4, 1.0 - 1e-4)
    return np.log(p / (1.0 - p))


@dataclass
class GroupPrior:
    """How well each model does on the groups (subjects, tasks) a prompt resembles.

    ``P(group | prompt) = softmax(x · coef + intercept)`` over the prompt's L2-normalised TF-IDF row
    ``x``; with ``coef`` the groups' centroids times a temperature, that is a soft nearest-centroid
    match. The prior of model ``m`` is ``Σ_g P(g | prompt) · accuracy[g, m]``, its expected accuracy
    under the group uncertainty, so confusing two groups on which the models do alike costs nothing.
    """

    groups: list[str]
    coef: np.ndarray  # (V, G) over the featuriser's TF-IDF block
    intercept: np.ndarray  # (G,)
    accuracy: np.ndarray  # (G, M) each model's accuracy on each group, shrunk toward its overall accuracy

    def __post_init__(self) -> None:
        # a mixture of rates inside [1e-4, 1 − 1e-4] stays inside: the logit needs no clip per decision
        self.accuracy = np.clip(np.asarray(self.accuracy, dtype=np.float64), 1e-4, 1.0 - 1e-4)

    def posterior(self, f: PromptFeatures) -> np.ndarray:
        """(G,) P(group | prompt)."""
        z = f.text_val @ self.coef[f.text_idx] if len(f.text_idx) else np.zeros(len(self.groups))
        return softmax_rows(z + self.intercept)

    def logits_of(self, z: np.ndarray) -> np.ndarray:
        """(..., M) logit of each model's expected accuracy, from the group scores ``x · coef`` (..., G):
        the softmax's normalisation is applied after the product with ``accuracy`` (fewer operations)."""
        z = z + self.intercept
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        p = (e @ self.accuracy) / e.sum(axis=-1, keepdims=True)
        return np.log(p / (1.0 - p))

    def logits(self, f: PromptFeatures) -> np.ndarray:
        """(M,) logit of each model's expected accuracy on the prompt's groups."""
        z = f.text_val @ self.coef[f.text_idx] if len(f.text_idx) else np.zeros(len(self.groups))
        return self.logits_of(z)

    def logits_many(self, x: object) -> np.ndarray:
        """(n, M) :meth:`logits` of the rows of a (n, V) TF-IDF matrix (sparse or dense)."""
        return self.logits_of(np.asarray(x @ self.coef, dtype=np.float64))  # type: ignore[operator]


@dataclass
class QualityClassifier:
    """Frozen router model. ``predict(prompt)`` → ``{model: p_acceptable}``; plain arrays, no sklearn."""

    featurizer: TextFeaturizer
    models: list[str]
    text_coef: np.ndarray  # (V, M) logistic heads, TF-IDF block
    dense_coef: np.ndarray  # (K, M) logistic heads, structure block (K = 0 without one)
    intercept: np.ndarray  # (M,)
    strong: str | None = None
    weak: str | None = None
    cost_model: CostModel | None = None
    metadata: dict[str, object] = field(default_factory=dict)
    prior: GroupPrior | None = None
    prior_coef: np.ndarray | None = None  # (M, M): head j's weight on the prior logit of model i at [i, j]
    # the heads' and the prior's TF-IDF coefficients side by side, (V, M + G): one gather per decision
    _rows: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prior is not None and self.prior_coef is not None:
            m = len(self.models)
            self._rows = np.hstack([self.text_coef, self.prior.coef.astype(self.text_coef.dtype)])
            self.prior.coef = self._rows[:, m:]  # the prior reads the same memory: no second copy

    def features(self, prompt: str) -> PromptFeatures:
        return self.featurizer.featurize(prompt)

    def logits(self, f: PromptFeatures) -> np.ndarray:
        """(M,) logits: the intercepts, the dense block's product, the prompt's TF-IDF rows and, with a
        group prior, the prior's logits."""
        z = self.intercept + f.dense @ self.dense_coef
        if self._rows is not None and self.prior is not None and self.prior_coef is not None:
            m = len(self.models)
            both = f.text_val @ self._rows[f.text_idx] if len(f.text_idx) else np.zeros(self._rows.shape[1])
            return z + both[:m] + self.prior.logits_of(both[m:]) @ self.prior_coef
        if len(f.text_idx):
            z = z + f.text_val @ self.text_coef[f.text_idx]
        return z

    def predict_array(self, f: PromptFeatures) -> np.ndarray:
        """Probabilities in ``self.models`` order."""
        return sigmoid(self.logits(f))

    def predict(self, prompt_or_features: str | PromptFeatures) -> dict[str, float]:
        """``{model: p_acceptable}`` for one prompt (or precomputed features)."""
        f = (
            prompt_or_features
            if isinstance(prompt_or_features, PromptFeatures)
            else self.featurizer.featurize(prompt_or_features)
        )
        return dict(zip(self.models, self.predict_array(f).tolist(), strict=True))

    def predict_many(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, M) probabilities; offline/batch convenience (same arithmetic as :meth:`predict`)."""
        x, dense = self.featurizer.matrices(prompts)
        z = self.intercept + dense @ self.dense_coef + np.asarray(x @ self.text_coef)
        if self.prior is not None and self.prior_coef is not None:
            z = z + self.prior.logits_many(x) @ self.prior_coef
        return sigmoid(z).reshape(len(prompts), len(self.models))

    def gap_score(self, probs: Mapping[str, float] | np.ndarray) -> float:
        """Two-model routing score ``p_strong − p_weak`` (higher → strong model more worth its price)."""
        if self.strong is None or self.weak is None:
            raise ValueError("not a two-model classifier")
        if isinstance(probs, np.ndarray):
            return float(probs[self.models.index(self.strong)] - probs[self.models.index(self.weak)])
        return float(probs[self.strong] - probs[self.weak])


# ---- selectors (pure functions over probabilities and costs) -------------------------------------


def cheapest_above(probs: Mapping[str, float], costs: Mapping[str, float], threshold: float) -> str:
    """Cheapest model whose predicted quality clears ``threshold``; the most likely model if none does.

    Why the fallback: refusing to route is never an option for a gateway, and when nothing is predicted
    good enough the best bet is the model most likely to be acceptable.
    """
    ok = [m for m, p in probs.items() if p >= threshold and m in costs]
    if ok:
        return min(ok, key=lambda m: (costs[m], -probs[m], m))
    return max(probs, key=lambda m: (probs[m], -costs.get(m, math.inf), m))


def best_tradeoff(probs: Mapping[str, float], costs: Mapping[str, float], lam: float) -> str:
    """``argmax_m p_m − λ·cost_m`` (λ in quality points per USD); ties go to the cheaper model."""
    return max(probs, key=lambda m: (probs[m] - lam * costs.get(m, 0.0), -costs.get(m, 0.0), m))


def calibrate_gap_threshold(gap_scores: Sequence[float] | np.ndarray, target_strong_share: float) -> float:
    """Threshold on ``p_strong − p_weak`` so that about ``target_strong_share`` of traffic goes strong.

    Uses the empirical quantile of scores on representative (unlabeled) traffic: route strong iff
    ``gap >= threshold``.
    """
    s = np.sort(np.asarray(gap_scores, dtype=float))[::-1]
    if len(s) == 0:
        raise ValueError("no scores")
    k = int(round(min(max(target_strong_share, 0.0), 1.0) * len(s)))
    if k <= 0:
        return float(np.nextafter(s[0], np.inf))
    return float(s[min(k, len(s)) - 1])


def calibrate_quality_threshold(
    probs: np.ndarray,
    costs: np.ndarray,
    strong_index: int,
    target_strong_share: float,
    iters: int = 40,
) -> float:
    """Threshold for :func:`cheapest_above` giving ~``target_strong_share`` of calls to the strong model.

    ``probs``/``costs`` are (n, M) arrays on representative traffic. A higher threshold sends more
    traffic to the expensive, better model; the share is monotone enough in practice for bisection.
    """

    def share(t: float) -> float:
        ok = probs >= t
        c = np.where(ok, costs, np.inf)
        choice = np.argmin(c, axis=1)
        none = ~ok.any(axis=1)
        choice[none] = np.argmax(probs[none], axis=1)
        return float(np.mean(choice == strong_index))

    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if share(mid) < target_strong_share:
            lo = mid
        else:
            hi = mid
    return hi
