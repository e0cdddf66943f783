"""Rate-limit arithmetic: GCRA for requests/min and tokens/min, leases for concurrency caps.

Why GCRA (generic cell rate algorithm): one number of state per limit (the "theoretical arrival
time"), exact sliding behaviour without per-request timestamps, an exact Retry-After, and trivial
to make atomic in a Redis script. A limit of R per minute with burst B admits B at once, then one
every 60/R seconds.

Pure: times are passed in; state lives in `state.ratelimits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LimitKind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Limits for one scope (``"key:<id>"``, ``"user:<u>"``, ``"team:<t>"``, ``"deployment:<d>"``).

    ``burst`` is in the limit's own units; None means one minute's worth (``per_min``).
    """

    scope: str
    requests_per_min: float | None = None
    tokens_per_min: float | None = None
    request_burst: float | None = None
    token_burst: float | None = None

    def cells(self) -> list[tuple[LimitKind, float, float]]:
        """(kind, units per second, burst) for each configured limit."""
        out: list[tuple[LimitKind, float, float]] = []
        if self.requests_per_min:
            out.append(("requests", self.requests_per_min / 60.0, self.request_burst or self.requests_per_min))
        if self.tokens_per_min:
            out.append(("tokens", self.tokens_per_min / 60.0, self.token_burst or self.tokens_per_min))
        return out


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0
    scope: str | None = None  # the scope that refused
    kind: LimitKind | None = None


def gcra(tat: float, now: float, cost: float, rate_per_s: float, burst: float) -> tuple[bool, float, float]:
    """One GCRA step: (allowed, new theoretical arrival time, retry_after_s).

    A request costing more than the whole burst can never fit; it is admitted only when the
    limiter is idle (``tat <= now``), and then pushes later requests back accordingly, so an
    oversized prompt is slowed down rather than rejected forever. Its retry_after_s is therefore
    the time until the limiter is idle (``tat``), not until a fit that never comes.
    """
    interval = 1.0 / rate_per_s
    base = max(tat, now)
    new_tat = base + cost * interval
    allow_at = new_tat - burst * interval
    if allow_at <= now or (cost > burst and tat <= now):
        return True, new_tat, 0.0
    return False, tat, (tat if cost > burst else allow_at) - now


def adjust(tat: float, now: float, delta: float, rate_per_s: float) -> float:
    """Charge ``delta`` more units (negative: refund estimated tokens that were not used).
    A refund never goes below ``now``: an idle limiter cannot bank credit beyond its burst."""
    if delta >= 0:
        return max(tat, now) + delta / rate_per_s
    return max(now, tat + delta / rate_per_s)


class GcraTable:
    """In-memory GCRA state: the reference model for the Redis script.

    ``hit`` is all-or-nothing across limits: a request refused by tokens/min does not use up a
    requests/min cell.
    """

    def __init__(self) -> None:
        self.tat: dict[str, float] = {}

    @staticmethod
    def key(scope: str, kind: LimitKind) -> str:
        return f"{scope}:{kind}"

    def hit(self, limits: list[RateLimit], tokens: float, now: float) -> RateDecision:
        updates: list[tuple[str, float]] = []
        for lim in limits:
            for kind, rate, burst in lim.cells():
                cost = 1.0 if kind == "requests" else tokens
                k = self.key(lim.scope, kind)
                ok, new_tat, retry = gcra(self.tat.get(k, now), now, cost, rate, burst)
                if not ok:
                    return RateDecision(False, retry, lim.scope, kind)
                updates.append((k, new_tat))
        for k, t in updates:
            self.tat[k] = t
        return RateDecision(True)

    def adjust_tokens(self, limits: list[RateLimit], delta: float, now: float) -> None:
        """After the call: ``delta`` = actual tokens − estimated (negative refunds)."""
        for lim in limits:
            for kind, rate, _ in lim.cells():
                if kind == "tokens":
                    k = self.key(lim.scope, kind)
                    self.tat[k] = adjust(self.tat.get(k, now), now, delta, rate)


@dataclass(slots=True)
class Leases:
    """Concurrency cap state for one scope: lease id → expiry. Expired leases (their process died
    mid-request) stop counting."""

    held: dict[str, float]

    def active(self, now: float) -> int:
        for lid in [k for k, exp in self.held.items() if exp <= now]:
            del self.held[lid]
        return len(self.held)

    def acquire(self, lease_id: str, limit: int, now: float, ttl_s: float) -> bool:
        if lease_id in self.held:
            self.held[lease_id] = now + ttl_s
            return True
        if self.active(now) >= limit:
            return False
        self.held[lease_id] = now + ttl_s
        return True
