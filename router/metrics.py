"""Routing quality metrics: RouteLLM's APGR / CPT(x%) and RouterBench's cost–quality curve / AIQ.

Pure numpy, no I/O. Definitions follow the data README (shared/data/routing/README.md):

* **Two-model curve** (RouteLLM ``evals/evaluate.py``): a router gives each prompt a score; sending every
  prompt with ``score >= t`` to the strong model and sweeping ``t`` gives points
  (share of strong calls, mean quality). ``num_thresholds=None`` sweeps every distinct score (exact
  curve); ``num_thresholds=k`` reproduces RouteLLM's ``pd.qcut(scores, k)`` bin edges (k+1 points,
  the last edge using ``>`` so that it routes nothing), which is what their published tables use.
* **APGR** = (AUC − weak AUC) / (strong AUC − weak AUC), trapezoid rule over the call-share axis,
  the weak/strong "areas" being the constant weak/strong accuracies integrated over the same points.
* **CPT(x)** = the smallest strong-call share at which quality reaches ``weak + x·(strong − weak)``,
  by linear interpolation between curve points.
* **RouterBench**: a router's (mean USD per prompt, mean quality) points; **AIQ** = area under the
  non-decreasing convex hull of those points, normalised by the cost range (so it is on the quality
  scale: the average hull quality over the range of costs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RoutingCurve",
    "routing_curve",
    "apgr",
    "cpt",
    "two_model_report",
    "oracle_scores",
    "random_scores",
    "length_scores",
    "CostQualityCurve",
    "cost_quality_points",
    "nondecreasing_convex_hull",
    "aiq",
    "oracle_choice",
    "tradeoff_sweep",
    "cost_to_match",
    "single_model_points",
    "random_mix_curve",
]


# --------------------------------------------------------------------------------------------------
# Two-model (RouteLLM) metrics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingCurve:
    """Points of a two-model routing curve, sorted by strong-call share (0..1)."""

    share: np.ndarray
    quality: np.ndarray
    weak_quality: float
    strong_quality: float


def _as_float(a: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=float).ravel()


def routing_curve(
    scores: Sequence[float] | np.ndarray,
    strong_ok: Sequence[float] | np.ndarray,
    weak_ok: Sequence[float] | np.ndarray,
    num_thresholds: int | None = None,
) -> RoutingCurve:
    """Sweep a threshold over ``scores`` (higher = more in need of the strong model).

    ``num_thresholds=None`` gives the exact curve (one point per distinct score, plus share 0); an integer
    reproduces RouteLLM's quantile thresholds. Ties are routed together, exactly like ``score >= t``.
    """
    s = _as_float(scores)
    st = _as_float(strong_ok)
    wk = _as_float(weak_ok)
    n = len(s)
    if not (len(st) == len(wk) == n) or n == 0:
        raise ValueError("scores, strong_ok and weak_ok must be non-empty and of equal length")
    weak_q = float(wk.mean())
    strong_q = float(st.mean())
    if num_thresholds is None:
        order = np.argsort(-s, kind="mergesort")
        ss = s[order]
        gain = np.cumsum(st[order] - wk[order])
        # a threshold at each distinct value routes every prompt with score >= it: cut after the last tie
        last_of_tie = np.r_[ss[1:] != ss[:-1], True]
        counts = np.r_[0, np.nonzero(last_of_tie)[0] + 1]
        gains = np.r_[0.0, gain[last_of_tie]]
        share = counts / n
        quality = weak_q + gains / n
    else:
        edges = np.quantile(s, np.linspace(0.0, 1.0, num_thresholds + 1))
        pts = []
        for i, t in enumerate(edges):
            sel = s >= t if i != len(edges) - 1 else s > t
            pts.append((sel.mean(), float(np.where(sel, st, wk).mean())))
        pts.sort()
        share = np.array([p[0] for p in pts])
        quality = np.array([p[1] for p in pts])
    return RoutingCurve(share=share, quality=quality, weak_quality=weak_q, strong_quality=strong_q)


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0)) if len(x) > 1 else 0.0


def apgr(curve: RoutingCurve) -> float:
    """Average performance gap recovered (RouteLLM): 0 = weak-only, 1 = strong-only area, random ≈ 0.5."""
    x, y = curve.share, curve.quality
    auc = _trapz(y, x)
    width = float(x[-1] - x[0])
    weak_auc = curve.weak_quality * width
    strong_auc = curve.strong_quality * width
    denom = strong_auc - weak_auc
    if denom == 0:
        return float("nan")
    return (auc - weak_auc) / denom


def cpt(curve: RoutingCurve, x: float) -> float:
    """Call-performance threshold: least strong-call share reaching ``weak + x·(strong − weak)`` (0..1).

    Walks the curve in share order and interpolates linearly inside the first segment that crosses the
    target; NaN if the curve never reaches it.
    """
    target = curve.weak_quality + x * (curve.strong_quality - curve.weak_quality)
    sh, q = curve.share, curve.quality
    if q[0] >= target:
        return float(sh[0])
    for i in range(1, len(sh)):
        if q[i] >= target:
            q0, q1 = q[i - 1], q[i]
            if q1 == q0:
                return float(sh[i])
            return float(sh[i - 1] + (target - q0) * (sh[i] - sh[i - 1]) / (q1 - q0))
    return float("nan")


def two_model_report(
    scores: Sequence[float] | np.ndarray,
    strong_ok: Sequence[float] | np.ndarray,
    weak_ok: Sequence[float] | np.ndarray,
    num_thresholds: int | None = None,
) -> dict[str, float]:
    """APGR, CPT(50%), CPT(80%) (as shares 0..1) plus the end-point accuracies."""
    c = routing_curve(scores, strong_ok, weak_ok, num_thresholds)
    return {
        "apgr": apgr(c),
        "cpt50": cpt(c, 0.5),
        "cpt80": cpt(c, 0.8),
        "weak_acc": c.weak_quality,
        "strong_acc": c.strong_quality,
    }


def oracle_scores(
    strong_ok: Sequence[float] | np.ndarray, weak_ok: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Perfect-hindsight scores: strong − weak correctness (strong-only wins first, weak-only last)."""
    return _as_float(strong_ok) - _as_float(weak_ok)


def random_scores(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random router baseline (APGR ≈ 0.5, CPT(x) ≈ x); the RNG is injected for reproducibility."""
    return rng.random(n)


def length_scores(prompts: Sequence[str]) -> np.ndarray:
    """Length heuristic: longer prompts go to the strong model first."""
    return np.array([len(p) for p in prompts], dtype=float)


# --------------------------------------------------------------------------------------------------
# Multi-model (RouterBench) metrics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostQualityCurve:
    """(mean USD per prompt, mean quality) points of one router, one point per operating setting."""

    cost: np.ndarray
    quality: np.ndarray
    settings: np.ndarray


def _quality_of_choice(labels: np.ndarray, choice: np.ndarray) -> float:
    """Mean quality of routed answers; unknown (NaN) labels are skipped, not counted as wrong."""
    q = labels[np.arange(len(choice)), choice]
    return float(np.nanmean(q)) if np.any(~np.isnan(q)) else float("nan")


def cost_quality_points(labels: np.ndarray, costs: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """Mean cost and quality when prompt ``i`` is sent to model ``choice[i]``."""
    choice = np.asarray(choice, dtype=int)
    c = costs[np.arange(len(choice)), choice]
    return float(np.nanmean(c)), _quality_of_choice(labels, choice)


def tradeoff_sweep(
    pred_quality: np.ndarray,
    pred_cost: np.ndarray,
    labels: np.ndarray,
    true_costs: np.ndarray,
    lambdas: Sequence[float] | np.ndarray,
) -> CostQualityCurve:
    """Curve of the rule ``argmax_j pred_quality[i,j] − λ·pred_cost[i,j]`` over a sweep of λ."""
    pts_c, pts_q = [], []
    for lam in lambdas:
        choice = np.argmax(pred_quality - lam * pred_cost, axis=1)
        c, q = cost_quality_points(labels, true_costs, choice)
        pts_c.append(c)
        pts_q.append(q)
    return CostQualityCurve(np.array(pts_c), np.array(pts_q), np.asarray(lambdas, dtype=float))


def oracle_choice(labels: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Cheapest model that answers correctly (cheapest overall when none does, or when unknown)."""
    lab = np.nan_to_num(labels, nan=0.0)
    big = np.where(lab > 0, costs, np.inf)
    choice = np.argmin(big, axis=1)
    none = ~np.isfinite(big.min(axis=1))
    choice[none] = np.argmin(costs[none], axis=1)
    return choice


def nondecreasing_convex_hull(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper concave envelope of the points, kept only where quality does not decrease with cost.

    Why: a router operator can mix any two operating points at random (so the upper hull is reachable),
    and would never pay more for less quality (so the hull is cut where it starts to fall).
    """
    pts = sorted(
        {
            (float(c), float(q))
            for c, q in zip(cost, quality, strict=True)
            if np.isfinite(c) and np.isfinite(q)
        }
    )
    # keep the best quality for each cost
    best: dict[float, float] = {}
    for c, q in pts:
        best[c] = max(q, best.get(c, -np.inf))
    pts = sorted(best.items())
    # drop dominated points (more cost, no more quality)
    frontier: list[tuple[float, float]] = []
    for c, q in pts:
        if not frontier or q > frontier[-1][1]:
            frontier.append((c, q))
    hull: list[tuple[float, float]] = []
    for p in frontier:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # remove hull[-1] if it lies on or below the segment hull[-2] -> p
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return np.array([h[0] for h in hull]), np.array([h[1] for h in hull])


def aiq(cost: np.ndarray, quality: np.ndarray, cost_range: tuple[float, float] | None = None) -> float:
    """Average improvement in quality (RouterBench): hull area over ``[c_min, c_max]`` / (c_max − c_min).

    ``cost_range`` should be shared by the routers being compared (we use the cheapest and the most
    expensive single model's mean cost); the hull is extended flat to the right of its last point and
    to the left of its first point uses that point's quality only from where it exists (area 0 before).
    """
    hx, hy = nondecreasing_convex_hull(np.asarray(cost, float), np.asarray(quality, float))
    if len(hx) == 0:
        return float("nan")
    lo, hi = cost_range if cost_range is not None else (float(hx[0]), float(hx[-1]))
    if hi <= lo:
        return float(hy[-1])
    grid_x = np.concatenate([[lo], hx[(hx > lo) & (hx < hi)], [hi]])
    # hull value at each grid point: interpolate, flat extension to the right, 0 left of the first point
    vals = np.interp(grid_x, hx, hy, left=np.nan, right=hy[-1])
    vals = np.where(grid_x < hx[0], 0.0, vals)
    if grid_x[0] < hx[0] < grid_x[-1]:
        # start the area exactly at the hull's first point
        k = np.searchsorted(grid_x, hx[0])
        grid_x = np.insert(grid_x, k, hx[0])
        vals = np.insert(vals, k, hy[0])
        vals[:k] = 0.0
    return _trapz(np.nan_to_num(vals), grid_x) / (hi - lo)


def cost_to_match(curve: CostQualityCurve, target_quality: float) -> float:
    """Least mean cost at which the router's hull reaches ``target_quality`` (NaN if never)."""
    hx, hy = nondecreasing_convex_hull(curve.cost, curve.quality)
    if len(hx) == 0 or hy[-1] < target_quality:
        return float("nan")
    if hy[0] >= target_quality:
        return float(hx[0])
    i = int(np.argmax(hy >= target_quality))
    return float(hx[i - 1] + (target_quality - hy[i - 1]) * (hx[i] - hx[i - 1]) / (hy[i] - hy[i - 1]))


def single_model_points(labels: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean cost, mean quality) of always using each model (unknown labels skipped)."""
    return np.nanmean(costs, axis=0), np.nanmean(labels, axis=0)


def random_mix_curve(
    labels: np.ndarray, costs: np.ndarray, rng: np.random.Generator, n_points: int = 11
) -> CostQualityCurve:
    """Random router: send a share p of prompts to the best single model and the rest to the cheapest."""
    mc, mq = single_model_points(labels, costs)
    best, cheap = int(np.nanargmax(mq)), int(np.nanargmin(mc))
    n = labels.shape[0]
    cs, qs = [], []
    for p in np.linspace(0, 1, n_points):
        choice = np.where(rng.random(n) < p, best, cheap)
        c, q = cost_quality_points(labels, costs, choice)
        cs.append(c)
        qs.append(q)
    return CostQualityCurve(np.array(cs), np.array(qs), np.linspace(0, 1, n_points))


ScoreFn = Callable[[Sequence[str]], np.ndarray]
