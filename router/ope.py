"""Off-policy evaluation of a candidate routing policy from logged traffic. Pure numpy; RNG injected.

Logged rows are (context, action, propensity, reward): the action the logging policy took, the
probability it had of taking it, and the observed reward (quality − λ·cost). The candidate policy is
given by its action probabilities on each logged context, ``target_probs[i, k]``.

Estimators (all return an :class:`Estimate` with a confidence interval):

* **IPS** — mean of ``w_i · r_i`` with ``w_i = π(a_i|x_i) / μ(a_i|x_i)``: unbiased, high variance.
* **SNIPS** — ``Σ w r / Σ w``: slightly biased, much lower variance, invariant to reward shifts.
* **DR** — doubly robust: ``Σ_k π(k|x) q̂(x,k) + w (r − q̂(x,a))``: unbiased if propensities are right,
  low variance if the reward model ``q̂`` is good (e.g. the quality classifier's p − λ·cost).

Confidence intervals: ``ci="normal"`` uses the CLT on the per-row terms (delta method for SNIPS);
``ci="bootstrap"`` resamples rows with the injected generator (percentile interval).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

__all__ = ["Estimate", "ips", "snips", "doubly_robust", "tabular_reward_model", "importance_weights"]

CIKind = Literal["normal", "bootstrap"]


@dataclass(frozen=True)
class Estimate:
    """Point estimate with a two-sided confidence interval at ``level``."""

    method: str
    value: float
    lo: float
    hi: float
    se: float
    n: int
    level: float

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


def importance_weights(
    actions: Sequence[int] | np.ndarray, propensities: Sequence[float] | np.ndarray, target_probs: np.ndarray
) -> np.ndarray:
    """``π(a_i|x_i) / μ(a_i|x_i)`` for logged actions (indices into the columns of ``target_probs``)."""
    a = np.asarray(actions, dtype=int)
    mu = np.asarray(propensities, dtype=float)
    if np.any(mu <= 0):
        raise ValueError("logged propensities must be > 0 (log them from an exploring policy)")
    pi = np.asarray(target_probs, dtype=float)[np.arange(len(a)), a]
    return pi / mu


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _finish(
    method: str,
    terms_fn: Callable[[np.ndarray], float],
    n: int,
    value: float,
    se: float,
    level: float,
    ci: CIKind,
    rng: np.random.Generator | None,
    n_boot: int,
) -> Estimate:
    if ci == "normal":
        z = _z(level)
        return Estimate(method, value, value - z * se, value + z * se, se, n, level)
    if rng is None:
        raise ValueError("bootstrap intervals need an injected rng")
    stats = np.array([terms_fn(rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(method, value, float(lo), float(hi), float(stats.std(ddof=1)), n, level)


def ips(
    actions: Sequence[int] | np.ndarray,
    propensities: Sequence[float] | np.ndarray,
    rewards: Sequence[float] | np.ndarray,
    target_probs: np.ndarray,
    level: float = 0.95,
    ci: CIKind = "normal",
    rng: np.random.Generator | None = None,
    n_boot: int = 500,
) -> Estimate:
    """Inverse propensity scoring estimate of the target policy's mean reward."""
    w = importance_weights(actions, propensities, target_probs)
    t = w * np.asarray(rewards, dtype=float)
    n = len(t)
    se = float(t.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return _finish("ips", lambda idx: float(t[idx].mean()), n, float(t.mean()), se, level, ci, rng, n_boot)


def snips(
    actions: Sequence[int] | np.ndarray,
    propensities: Sequence[float] | np.ndarray,
    rewards: Sequence[float] | np.ndarray,
    target_probs: np.ndarray,
    level: float = 0.95,
    ci: CIKind = "normal",
    rng: np.random.Generator | None = None,
    n_boot: int = 500,
) -> Estimate:
    """Self-normalised IPS; the normal interval uses the delta method ``var(w(r − v̂)) / mean(w)²``."""
    w = importance_weights(actions, propensities, target_probs)
    r = np.asarray(rewards, dtype=float)
    n = len(r)
    value = float((w * r).sum() / w.sum())
    se = float(np.sqrt(np.var(w * (r - value), ddof=1) / n) / w.mean()) if n > 1 else float("inf")

    def stat(idx: np.ndarray) -> float:
        ws = w[idx]
        return float((ws * r[idx]).sum() / ws.sum())

    return _finish("snips", stat, n, value, se, level, ci, rng, n_boot)


def doubly_robust(
    actions: Sequence[int] | np.ndarray,
    propensities: Sequence[float] | np.ndarray,
    rewards: Sequence[float] | np.ndarray,
    target_probs: np.ndarray,
    reward_model: np.ndarray,
    level: float = 0.95,
    ci: CIKind = "normal",
    rng: np.random.Generator | None = None,
    n_boot: int = 500,
) -> Estimate:
    """Doubly robust estimate; ``reward_model[i, k]`` = predicted reward of action k on logged context i."""
    a = np.asarray(actions, dtype=int)
    w = importance_weights(a, propensities, target_probs)
    r = np.asarray(rewards, dtype=float)
    q = np.asarray(reward_model, dtype=float)
    pi = np.asarray(target_probs, dtype=float)
    t = (pi * q).sum(axis=1) + w * (r - q[np.arange(len(a)), a])
    n = len(t)
    se = float(t.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return _finish("dr", lambda idx: float(t[idx].mean()), n, float(t.mean()), se, level, ci, rng, n_boot)


def tabular_reward_model(
    actions: Sequence[int] | np.ndarray,
    rewards: Sequence[float] | np.ndarray,
    n_actions: int,
    n_rows: int | None = None,
) -> np.ndarray:
    """Context-free reward model (mean logged reward per action, 0 if never seen) as an (n, K) array.

    A weak but assumption-free ``q̂`` for DR when no per-context model is available.
    """
    a = np.asarray(actions, dtype=int)
    r = np.asarray(rewards, dtype=float)
    sums = np.bincount(a, weights=r, minlength=n_actions)
    cnt = np.bincount(a, minlength=n_actions)
    means = np.divide(sums, cnt, out=np.zeros(n_actions), where=cnt > 0)
    return np.tile(means, (n_rows if n_rows is not None else len(a), 1))
