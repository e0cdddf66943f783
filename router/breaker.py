"""Circuit breaker state machine, pure: every method takes ``now`` (seconds) explicitly.

closed ──(error rate over window ≥ bound with ≥ min requests | N consecutive failures |
          latency quantile over window > bound)──▶ open
open ──(cooldown elapsed, next allow())──▶ half_open  (never closed → half_open directly)
half_open: admits K probes at a time; ``successes_to_close`` successes → closed, any failure → open
forced open / forced closed: manual override until cleared (clearing starts closed, fresh).
An attempt that says nothing about the deployment's health (a client-caused failure, a client that
left) is ``release``d instead of recorded: a half-open probe slot it took is given back, nothing else.

Each half-open probe slot is held under a token (`Admission.probe`) until its attempt is recorded or
released with that token, or ``probe_timeout_s`` passes. Giving back a token that no longer holds a slot
(expired, or already given back) changes nothing, so a give-back may be repeated safely: one that a
store could not deliver at the time (shared state unreachable) is retried later, and can never free
another attempt's slot.

Why pure: the same transition function backs the in-process store, is mirrored by the Redis Lua
script (tests run both on the same event sequences and compare), and is property-tested.

The sliding window is bucketed (``buckets`` slots of ``window_s / buckets``): constant memory
and the same arithmetic in Lua. Latencies keep the last ``latency_samples`` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

BreakerStateName = Literal["closed", "open", "half_open"]
ForceMode = Literal["open", "closed"]

@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_s: float = 30.0
    buckets: int = 10
    min_requests: int = 10
    error_rate: float = 0.5  # trip when failures / requests ≥ this (and ≥ min_requests requests)
    consecutive_failures: int = 5  # 0 disables
    latency_ms: float | None = None  # trip when the latency quantile over the window exceeds this
    latency_quantile: float = 0.95
    latency_samples: int = 100
    cooldown_s: float = 30.0
    half_open_probes: int = 1  # probes admitted at the same time in half_open
    successes_to_close: int = 1
    probe_timeout_s: float = 60.0  # a probe whose result never arrives frees its slot after this

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.buckets < 1 or self.half_open_probes < 1 or self.successes_to_close < 1:
            raise ValueError("window_s > 0, buckets ≥ 1, half_open_probes ≥ 1, successes_to_close ≥ 1")


@dataclass(frozen=True, slots=True)
class Admission:
    """What `CircuitBreaker.allow` (and every breaker store) answers for one attempt: whether it may go,
    and the token of the half-open probe slot it took (None when it took none: closed, forced closed,
    refused). The attempt hands the token back to ``record``/``release``; truthy when admitted."""

    allowed: bool
    probe: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """What the breaker stores report of one deployment's breaker for operators: its state as routing
    sees it and the manual override holding it there, if any (None: automatic operation)."""

    state: BreakerStateName
    forced: ForceMode | None = None


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (the Lua script computes the same)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


def seconds_until_half_open(
    state: BreakerStateName, forced: ForceMode | None, opened_at: float, cooldown_s: float, now: float
) -> float | None:
    """How long until a breaker in ``state`` (opened at ``opened_at``) admits a half-open probe: 0 when it
    would admit traffic now (closed, half-open, or open past its cooldown), None when it never will on its
    own (forced open: only an operator reopens it). Shared by the in-process and Redis stores."""
    if forced == "open":
        return None
    if forced == "closed" or state != "open":
        return 0.0
    return max(0.0, opened_at + cooldown_s - now)


@dataclass(slots=True)
class CircuitBreaker:
    """State of one deployment's breaker plus the transition functions."""

    config: BreakerConfig = field(default_factory=BreakerConfig)
    state: BreakerStateName = "closed"
    forced: ForceMode | None = None
    opened_at: float = 0.0
    consecutive: int = 0
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket index -> [requests, failures]
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (time, ms), oldest first
    probes: dict[str, float] = field(default_factory=dict)  # half-open probe slots held: token -> expiry
    probe_successes: int = 0
    probes_issued: int = 0  # probe tokens this breaker numbered itself so far

    # ---- queries -----------------------------------------------------------------------------------

    def state_at(self, now: float) -> BreakerStateName:
        """The state as routing should see it: an open breaker past its cooldown reads half_open
        (a probe would be admitted), without changing anything."""
        if self.forced is not None:
            return self.forced
        if self.state == "open" and now >= self.opened_at + self.config.cooldown_s:
            return "half_open"
        return self.state

    def status(self, now: float) -> BreakerStatus:
        """The state as routing sees it (`state_at`) and the manual override, if any."""
        return BreakerStatus(self.state_at(now), self.forced)

    def seconds_until_half_open(self, now: float) -> float | None:
        """Seconds until this breaker goes half-open (`seconds_until_half_open`): what a client refused
        because it is open should wait before trying again."""
        return seconds_until_half_open(self.state, self.forced, self.opened_at, self.config.cooldown_s, now)

    def window_counts(self, now: float) -> tuple[int, int]:
        """(requests, failures) in the sliding window ending at ``now``."""
        lo = self._bucket(now) - self.config.buckets
        req = fail = 0
        for idx, (r, f) in self.buckets.items():
            if idx > lo:
                req += r
                fail += f
        return req, fail

    # ---- transitions ---------------------------------------------------------------------------------

    def allow(self, now: float, token: str | None = None) -> Admission:
        """May a request go to this deployment now? In half_open this *takes* a probe slot, held under
        ``token`` (default: the next of this breaker's own numbered tokens), so call it once per attempt,
        right before the attempt, and always `record` (or `release`) the outcome with the admission's
        ``probe``."""
        if self.forced == "open":
            return Admission(False)
        if self.forced == "closed" or self.state == "closed":
            return Admission(True)
        cfg = self.config
        if self.state == "open":
            if now < self.opened_at + cfg.cooldown_s:
                return Admission(False)
            self.state = "half_open"
            self.probes.clear()
            self.probe_successes = 0
        # a probe whose result never came back frees its slot when its timeout passes
        self.probes = {t: exp for t, exp in self.probes.items() if now < exp}
        if len(self.probes) >= cfg.half_open_probes:
            return Admission(False)
        if token is None:
            self.probes_issued += 1
            token = f"p{self.probes_issued}"
        self.probes[token] = now + cfg.probe_timeout_s
        return Admission(True, token)

    def record(
        self, now: float, ok: bool, latency_ms: float | None = None, probe: str | None = None
    ) -> BreakerStateName:
        """Account one finished attempt; returns the state after it. ``probe``: the token of the
        half-open slot the attempt took (`Admission.probe`), given back if it still holds one."""
        cfg = self.config
        if probe is not None:
            self.probes.pop(probe, None)
        if self.state == "open":
            return self.state_at(now)  # a straggler admitted before the breaker opened: ignore
        if self.state == "half_open" and self.forced is None:
            if ok:
                self.probe_successes += 1
                if self.probe_successes >= cfg.successes_to_close:
                    self._close()
            else:
                self._open(now)
            return self.state_at(now)
        # closed (or forced): keep the window current
        idx = self._bucket(now)
        lo = idx - cfg.buckets
        for old in [k for k in self.buckets if k <= lo]:
            del self.buckets[old]
        counts = self.buckets.setdefault(idx, [0, 0])
        counts[0] += 1
        if ok:
            self.consecutive = 0
        else:
            counts[1] += 1
            self.consecutive += 1
        if latency_ms is not None:
            self.latencies.append((now, latency_ms))
            if len(self.latencies) > cfg.latency_samples:
                del self.latencies[: len(self.latencies) - cfg.latency_samples]
        if self.forced is None and self.state == "closed" and self._should_trip(now):
            self._open(now)
        return self.state_at(now)

    def release(self, now: float, probe: str | None) -> BreakerStateName:
        """An attempt admitted by `allow` ended with no verdict on the deployment's health (the
        upstream refused the client's request as invalid, or the client left): give back the
        half-open probe slot it took (``probe``, its `Admission.probe`), so the next request can
        probe, and change nothing else. Without this the slot stays taken until ``probe_timeout_s``
        and the breaker stays half-open, admitting nothing, however healthy the deployment is. A
        token that holds no slot (already given back, expired, None) changes nothing."""
        if probe is not None:
            self.probes.pop(probe, None)
        return self.state_at(now)

    def force(self, mode: ForceMode | None) -> None:
        """Manual override. ``None`` returns to automatic operation, starting closed and fresh."""
        self.forced = mode
        if mode is None or mode == "closed":
            self._close()

    # ---- internals ------------------------------------------------------------------------------------

    def _bucket(self, now: float) -> int:
        return math.floor(now / (self.config.window_s / self.config.buckets))

    def _should_trip(self, now: float) -> bool:
        cfg = self.config
        if cfg.consecutive_failures > 0 and self.consecutive >= cfg.consecutive_failures:
            return True
        req, fail = self.window_counts(now)
        if req >= cfg.min_requests and fail >= cfg.error_rate * req:
            return True
        if cfg.latency_ms is not None:
            recent = [ms for t, ms in self.latencies if t > now - cfg.window_s]
            if recent and len(recent) >= cfg.min_requests and quantile(recent, cfg.latency_quantile) > cfg.latency_ms:
                return True
        return False

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.probes.clear()
        self.probe_successes = 0
        self._reset_window()

    def _close(self) -> None:
        self.state = "closed"
        self.probes.clear()
        self.probe_successes = 0
        self._reset_window()

    def _reset_window(self) -> None:
        self.consecutive = 0
        self.buckets.clear()
        self.latencies.clear()
