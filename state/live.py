"""Per-process live signals: EWMA latency and in-flight counts per deployment.

Kept per process on purpose: latency is a property of the upstream that every process measures
equally well from its own traffic, and in-flight counts are read on every decision, where a Redis
round-trip would cost more than the decision itself. (Shared in-flight counts, when a hard
concurrency cap is needed, are the ``acquire_slot`` leases of `state.ratelimits`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from router.signals import ewma_update


class LatencyTracker:
    """Time-decayed EWMA of attempt latency (ms) per deployment."""

    def __init__(self, *, half_life_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.half_life_s = half_life_s
        self._clock = clock
        self._values: dict[str, tuple[float, float]] = {}  # deployment -> (ewma_ms, last update time)

    def observe(self, deployment: str, latency_ms: float) -> float:
        now = self._clock()
        prev = self._values.get(deployment)
        value = ewma_update(prev[0] if prev else None, latency_ms, now - prev[1] if prev else 0.0, self.half_life_s)
        self._values[deployment] = (value, now)
        return value

    def snapshot(self) -> dict[str, float]:
        return {d: v for d, (v, _) in self._values.items()}


class InFlight:
    """Requests currently running per deployment in this process."""

    def __init__(self) -> None:
        self._n: dict[str, int] = {}

    def start(self, deployment: str) -> None:
        self._n[deployment] = self._n.get(deployment, 0) + 1

    def finish(self, deployment: str) -> None:
        n = self._n.get(deployment, 0) - 1
        if n > 0:
            self._n[deployment] = n
        else:
            self._n.pop(deployment, None)

    def snapshot(self) -> dict[str, int]:
        return dict(self._n)
