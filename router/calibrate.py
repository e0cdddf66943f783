"""Calibrate a classifier policy's cost weight (``lambda``) to a target share of traffic for one model.

Operators think in shares ("send about 20% to the strong model"), the classifier selector in a trade-off
(`p − λ·relative cost`). The share a λ gives depends on the scorer, the candidates' prices and every
rule and filter of the policy, so it is measured, not derived: the policy's own `decide()` runs on
representative prompts for candidate values of λ, and bisection finds the smallest λ whose share of
decisions for the model is at most the target (the share falls as λ grows). Nothing is called: pure,
like `decide`; the scorer's answers are computed once per prompt and reused across the candidates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.types import DeploymentConfig, RequestFeatures
from policies.schema import ClassifierSelector, Policy
from router.decide import decide
from router.protocols import Plugins, Scorer
from router.signals import Signals

__all__ = ["Calibration", "calibrate_cost_weight", "memoized"]


@dataclass(frozen=True)
class Calibration:
    cost_weight: float  # the policy's `lambda` to use
    share: float  # share of the prompts routed first to the model with it
    share_at_zero: float  # the largest share reachable (λ = 0: quality alone)
    n: int

    def as_dict(self) -> dict[str, float | int]:
        # rounded up: the share only falls as the weight grows, so the printed value keeps the promise
        return {"lambda": math.ceil(self.cost_weight * 1e6) / 1e6, "share": round(self.share, 4),
                "share_at_lambda_0": round(self.share_at_zero, 4), "n": self.n}


class _Memo:
    """A scorer that asks the real one once per prompt (calibration re-decides the same prompts)."""

    def __init__(self, inner: Scorer) -> None:
        self._inner = inner
        self._seen: dict[tuple[str, str], Mapping[str, float]] = {}

    def predict(self, prompt_text: str, metadata: Mapping[str, Any]) -> Mapping[str, float]:
        key = (prompt_text, repr(sorted(metadata.items())))
        got = self._seen.get(key)
        if got is None:
            got = self._seen[key] = self._inner.predict(prompt_text, metadata)
        return got


def memoized(plugins: Plugins) -> Plugins:
    """``plugins`` whose scorers answer each distinct prompt once. A caller that must not run the real
    scorer off its own thread (its per-word memos are not thread-safe) can ask every prompt first,
    then hand the result to :func:`calibrate_cost_weight` in a worker thread."""
    if all(isinstance(s, _Memo) for s in plugins.scorers.values()):
        return plugins
    return Plugins(scorers={k: _Memo(v) for k, v in plugins.scorers.items()}, bandits=plugins.bandits,
                   verifiers=plugins.verifiers)


def _with_weight(policy: Policy, weight: float) -> Policy:
    sel = policy.selector
    assert isinstance(sel, ClassifierSelector)
    copy = policy.model_copy(update={"selector": sel.model_copy(update={"cost_weight": weight})})
    copy._compiled = None  # model_copy shares the private compile cache; keep the live policy's intact
    return copy


def calibrate_cost_weight(
    policy: Policy,
    requests: Sequence[RequestFeatures],
    deployments: Sequence[DeploymentConfig],
    signals: Signals,
    plugins: Plugins,
    model: str,
    share: float,
    now: datetime,
    *,
    max_weight: float = 1000.0,
    iters: int = 40,
) -> Calibration:
    """The cost weight at which about ``share`` of ``requests`` go first to ``model``.

    Raises ValueError when the policy's selector is not a classifier or there are no requests.
    """
    if not isinstance(policy.selector, ClassifierSelector):
        raise ValueError(f"policy {policy.name!r} has a {policy.selector.type} selector; only classifier "
                         "selectors have a cost weight to calibrate")
    if not requests:
        raise ValueError("no prompts to calibrate on")
    memo = memoized(plugins)

    def share_at(weight: float) -> float:
        pol = _with_weight(policy, weight)
        hits = 0
        for r in requests:
            d = decide(r, pol, deployments, signals, random.Random(0), now, plugins=memo)
            hits += d.primary is not None and d.primary.model == model
        return hits / len(requests)

    top = share_at(0.0)
    if top <= share:
        return Calibration(0.0, top, top, len(requests))
    lo, hi = 0.0, 1.0
    while share_at(hi) > share and hi < max_weight:
        lo, hi = hi, hi * 4
    for _ in range(iters):
        mid = (lo + hi) / 2
        if share_at(mid) > share:
            lo = mid
        else:
            hi = mid
    return Calibration(hi, share_at(hi), top, len(requests))
