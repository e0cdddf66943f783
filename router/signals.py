"""The signals snapshot the router decides on, and the little math that produces some of them.

Why a snapshot: the router is pure. Everything live (breaker states, latencies, budgets, the local
model's queue) is read by the gateway *before* the decision and handed over as plain values, so a
decision can be replayed exactly from a logged snapshot (simulate, benchmarks, off-policy eval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

BreakerStateName = Literal["closed", "open", "half_open"]


@dataclass(slots=True, frozen=True)
class BudgetSnapshot:
    """One budget account as seen right now (USD)."""

    limit_usd: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    @property
    def remaining_usd(self) -> float:
        return self.limit_usd - self.spent_usd - self.reserved_usd

    @property
    def fraction_remaining(self) -> float:
        """0..1 (clamped); a zero limit counts as fully spent."""
        if self.limit_usd <= 0:
            return 0.0
        return min(1.0, max(0.0, self.remaining_usd / self.limit_usd))


@dataclass(slots=True, frozen=True)
class LocalLoad:
    """Load of a self-hosted deployment, as its engine reports it."""

    queue_depth: int = 0
    free_slots: int | None = None  # None: unknown


@dataclass(slots=True)
class Signals:
    """Live state at decision time. Every mapping is keyed by deployment name, except ``budgets``,
    keyed by scope ``"key:<id>"``, ``"user:<name>"`` or ``"team:<name>"`` (the tightest account
    of that scope when it has several periods).

    Missing entries mean "no information": breaker closed, latency unknown, nothing in flight,
    no budget limit.
    """

    breakers: Mapping[str, BreakerStateName] = field(default_factory=dict)
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    in_flight: Mapping[str, int] = field(default_factory=dict)
    budgets: Mapping[str, BudgetSnapshot] = field(default_factory=dict)
    local_load: Mapping[str, LocalLoad] = field(default_factory=dict)
    # USD per million tokens (input, output) resolved by the gateway (e.g. from litellm's cost map)
    # for deployments whose config leaves pricing empty.
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def budget_fraction(self, key_id: str | None, user: str | None, team: str | None, scope: str = "any") -> float:
        """Tightest fraction of budget left among the caller's scopes; 1.0 when none has a limit."""
        frac = 1.0
        for kind, ident in (("key", key_id), ("user", user), ("team", team)):
            if ident is None or (scope != "any" and scope != kind):
                continue
            snap = self.budgets.get(f"{kind}:{ident}")
            if snap is not None:
                frac = min(frac, snap.fraction_remaining)
        return frac


def ewma_update(prev: float | None, sample: float, dt_s: float, half_life_s: float) -> float:
    """Time-decayed EWMA: a sample's weight halves every ``half_life_s``.

    Why time-decayed rather than a fixed alpha: traffic to a deployment is bursty; with a fixed
    alpha a rarely used deployment would keep a stale latency forever, and a busy one would forget
    in milliseconds. Decaying by elapsed time makes "recent" mean the same thing for both.
    """
    if prev is None:
        return sample
    if half_life_s <= 0:
        return sample
    alpha = 1.0 - math.pow(0.5, max(dt_s, 0.0) / half_life_s)
    # Even back-to-back samples move the average a little.
    alpha = max(alpha, 0.05)
    return prev + alpha * (sample - prev)
