"""Rate-limit and concurrency storage: in-process, and Redis (atomic Lua mirrors of
`router.ratelimit`). Redis errors fall back to in-process state: limits become per-process for
the duration of the outage, which over-admits at worst by the number of processes, instead of
failing requests.

Concurrency leases in Redis outlive nothing by much: each lives ``lease_ttl_s`` (seconds) and is
renewed by `maintain` while its request runs, so a process that dies frees its slots within
that time. A release that cannot reach Redis (or an acquire whose answer was lost, which may
have taken a slot) is retried by `maintain` until Redis answers or the lease has expired anyway.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from router.ratelimit import GcraTable, Leases, LimitKind, RateDecision, RateLimit
from state.redis_util import MAX_RENEW_S, REDIS_ERRORS, RedisGuard


class RateLimitStore(Protocol):
    async def hit(self, limits: Sequence[RateLimit], tokens: int) -> RateDecision:
        """Admit one request of ``tokens`` estimated tokens against every limit, or none of them."""
        ...

    async def adjust_tokens(self, limits: Sequence[RateLimit], delta: int) -> None:
        """After the call: actual − estimated tokens (negative refunds)."""
        ...

    async def acquire_slot(
        self, scope: str, limit: int, lease_id: str | None = None, ttl_s: float | None = None
    ) -> str | None:
        """A concurrency lease (its id), or None when ``limit`` are already held. ``ttl_s``: how
        long the lease lasts unless renewed (None: the store's default)."""
        ...

    async def release_slot(self, scope: str, lease_id: str) -> None: ...

    async def in_flight(self, scopes: Iterable[str]) -> dict[str, int]: ...

    async def maintain(self) -> None:
        """Renew the leases held by running requests and retry releases that did not reach the
        shared store (a periodic job; a no-op for in-process state)."""
        ...


class InProcessRateLimitStore:
    """Leases live as long as their process, so they only expire (after ``lease_ttl_s``) when a
    request never released its lease; nothing needs renewing."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, lease_ttl_s: float = 600.0) -> None:
        self._clock = clock
        self.lease_ttl_s = lease_ttl_s
        self.table = GcraTable()
        self.leases: dict[str, Leases] = {}

    async def hit(self, limits: Sequence[RateLimit], tokens: int) -> RateDecision:
        return self.table.hit(list(limits), tokens, self._clock())

    async def adjust_tokens(self, limits: Sequence[RateLimit], delta: int) -> None:
        self.table.adjust_tokens(list(limits), delta, self._clock())

    async def acquire_slot(
        self, scope: str, limit: int, lease_id: str | None = None, ttl_s: float | None = None
    ) -> str | None:
        lid = lease_id or uuid.uuid4().hex
        leases = self.leases.setdefault(scope, Leases({}))
        return lid if leases.acquire(lid, limit, self._clock(), ttl_s or self.lease_ttl_s) else None

    async def release_slot(self, scope: str, lease_id: str) -> None:
        leases = self.leases.get(scope)
        if leases is not None:
            leases.held.pop(lease_id, None)

    async def in_flight(self, scopes: Iterable[str]) -> dict[str, int]:
        now = self._clock()
        return {s: (self.leases[s].active(now) if s in self.leases else 0) for s in scopes}

    async def maintain(self) -> None:
        return None


# KEYS: one TAT key per limit cell. ARGV: now, then per cell: cost, rate_per_s, burst.
# Returns {0, "0"} when admitted (all cells charged), else {i, retry_after_s} (nothing charged).
HIT_LUA = r"""
local now = tonumber(ARGV[1])
local new = {}
for i = 1, #KEYS do
  local cost, rate, burst = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or ARGV[1])
  local interval = 1.0 / rate
  local nt = math.max(tat, now) + cost * interval
  local allow_at = nt - burst * interval
  if not (allow_at <= now or (cost > burst and tat <= now)) then
    if cost > burst then allow_at = tat end  -- admitted once the limiter is idle (router.ratelimit.gcra)
    return {i, string.format('%.17g', allow_at - now)}
  end
  new[i] = nt
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.17g', new[i]), 'PX', math.ceil((new[i] - now) * 1000) + 1000)
end
return {0, '0'}
"""

# KEYS: token TAT keys. ARGV: now, delta, then rate_per_s per key.
ADJUST_LUA = r"""
local now, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 + i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or ARGV[1])
  local nt
  if delta >= 0 then nt = math.max(tat, now) + delta / rate else nt = math.max(now, tat + delta / rate) end
  redis.call('SET', KEYS[i], string.format('%.17g', nt), 'PX', math.ceil((nt - now) * 1000) + 1000)
end
return 0
"""

# KEYS: lease zset. ARGV: now, lease id, limit, expires_at, key ttl ms. Returns 1 if acquired.
ACQUIRE_LUA = r"""
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: lease zsets; ARGV: expires_at, key ttl ms, then one lease id per key. Extends leases that
# are still held (XX: a lease released meanwhile is not brought back).
RENEW_LUA = r"""
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', ARGV[1], ARGV[2 + i])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 0
"""


@dataclass(slots=True)
class _Lease:
    scope: str
    lease_id: str
    renewed_at: float  # store clock; the lease lasts until renewed_at + ttl_s
    ttl_s: float
    since: float = 0.0  # when it was taken: renewals stop after MAX_RENEW_S


class RedisRateLimitStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "hg:",
        clock: Callable[[], float] = time.time,
        retry_after_s: float = 2.0,
        lease_ttl_s: float = 10.0,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._clock = clock
        self.lease_ttl_s = lease_ttl_s
        self._hit = client.register_script(HIT_LUA)
        self._adjust = client.register_script(ADJUST_LUA)
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self.fallback = InProcessRateLimitStore(clock=clock)
        self.guard = RedisGuard("ratelimits", retry_after_s=retry_after_s)
        self._held: dict[str, _Lease] = {}  # lease id -> a lease held in Redis by a running request
        self._unreleased: dict[str, _Lease] = {}  # lease id -> a lease Redis may still hold

    def _tat_key(self, scope: str, kind: LimitKind) -> str:
        return f"{self._prefix}rl:{GcraTable.key(scope, kind)}"

    def _lease_key(self, scope: str) -> str:
        return f"{self._prefix}conc:{scope}"

    async def hit(self, limits: Sequence[RateLimit], tokens: int) -> RateDecision:
        cells = [(lim.scope, kind, rate, burst) for lim in limits for kind, rate, burst in lim.cells()]
        if not cells:
            return RateDecision(True)

        async def remote() -> RateDecision:
            args: list[str] = [repr(self._clock())]
            for _, kind, rate, burst in cells:
                args += [repr(1.0 if kind == "requests" else float(tokens)), repr(rate), repr(float(burst))]
            res = await self._hit(keys=[self._tat_key(s, k) for s, k, _, _ in cells], args=args)
            i = int(res[0])
            if i == 0:
                return RateDecision(True)
            scope, kind, _, _ = cells[i - 1]
            return RateDecision(False, float(res[1]), scope, kind)

        return await self.guard.run(remote, lambda: self.fallback.hit(limits, tokens))

    async def adjust_tokens(self, limits: Sequence[RateLimit], delta: int) -> None:
        cells = [(lim.scope, rate) for lim in limits for kind, rate, _ in lim.cells() if kind == "tokens"]
        if not cells or delta == 0:
            return

        async def remote() -> None:
            args = [repr(self._clock()), repr(float(delta)), *(repr(rate) for _, rate in cells)]
            await self._adjust(keys=[self._tat_key(s, "tokens") for s, _ in cells], args=args)

        await self.guard.run(remote, lambda: self.fallback.adjust_tokens(limits, delta))

    async def acquire_slot(
        self, scope: str, limit: int, lease_id: str | None = None, ttl_s: float | None = None
    ) -> str | None:
        lid = lease_id or uuid.uuid4().hex
        ttl = ttl_s or self.lease_ttl_s
        now = self._clock()

        async def remote() -> str | None:
            args = [repr(now), lid, limit, repr(now + ttl), math.ceil(ttl * 1000) + 1000]
            if not int(await self._acquire(keys=[self._lease_key(scope)], args=args)):
                return None
            self._held[lid] = _Lease(scope, lid, now, ttl, now)
            return lid

        async def local() -> str | None:
            # The script may have run although its answer was lost: release there too, later.
            self._unreleased[lid] = _Lease(scope, lid, now, ttl)
            return await self.fallback.acquire_slot(scope, limit, lid, ttl)

        return await self.guard.run(remote, local)

    async def release_slot(self, scope: str, lease_id: str) -> None:
        held = self._held.pop(lease_id, None)
        await self.fallback.release_slot(scope, lease_id)

        async def remote() -> None:
            await self._r.zrem(self._lease_key(scope), lease_id)
            self._unreleased.pop(lease_id, None)

        async def later() -> None:
            self._unreleased.setdefault(
                lease_id, held or _Lease(scope, lease_id, self._clock(), self.lease_ttl_s)
            )

        await self.guard.run(remote, later)

    async def maintain(self) -> None:
        """Renew held leases a third of their TTL before they lapse; retry lost releases until
        Redis answers or the lease has expired there anyway."""
        now = self._clock()
        for lid in [lid for lid, lease in self._unreleased.items() if lease.renewed_at + lease.ttl_s < now]:
            del self._unreleased[lid]
        for lid in [lid for lid, lease in self._held.items() if now - lease.since > MAX_RENEW_S]:
            del self._held[lid]
        due = [lease for lease in self._held.values() if now - lease.renewed_at >= lease.ttl_s / 3]
        gone = list(self._unreleased.values())
        if not due and not gone:
            return

        async def remote() -> None:
            async with self._r.pipeline(transaction=False) as pipe:
                for lease in gone:
                    pipe.zrem(self._lease_key(lease.scope), lease.lease_id)
                for lease in due:
                    await self._renew(
                        keys=[self._lease_key(lease.scope)],
                        args=[repr(now + lease.ttl_s), math.ceil(lease.ttl_s * 1000) + 1000, lease.lease_id],
                        client=pipe,
                    )
                await pipe.execute()
            for lease in gone:
                self._unreleased.pop(lease.lease_id, None)
            for lease in due:
                lease.renewed_at = now

        # Straight to Redis, not through the guard: the guard keeps requests off a Redis that just
        # failed for a while, but these retries should land as soon as it answers again.
        with contextlib.suppress(*REDIS_ERRORS):
            await remote()

    async def in_flight(self, scopes: Iterable[str]) -> dict[str, int]:
        names = list(scopes)

        async def remote() -> dict[str, int]:
            now = self._clock()
            async with self._r.pipeline(transaction=False) as pipe:
                for s in names:
                    pipe.zcount(self._lease_key(s), f"({now!r}", "+inf")
                counts = await pipe.execute()
            return {s: int(c) for s, c in zip(names, counts, strict=True)}

        return await self.guard.run(remote, lambda: self.fallback.in_flight(names))
