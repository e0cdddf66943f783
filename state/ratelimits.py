"""Rate-limit and concurrency storage: in-process, and Redis (atomic Lua mirrors of
`router.ratelimit`). Redis errors fall back to in-process state: limits become per-process for
the duration of the outage, which over-admits at worst by the number of processes, instead of
failing requests.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import redis.asyncio as aioredis

from router.ratelimit import GcraTable, Leases, LimitKind, RateDecision, RateLimit
from state.redis_util import RedisGuard


class RateLimitStore(Protocol):
    async def hit(self, limits: Sequence[RateLimit], tokens: int) -> RateDecision:
        """Admit one request of ``tokens`` estimated tokens against every limit, or none of them."""
        ...

    async def adjust_tokens(self, limits: Sequence[RateLimit], delta: int) -> None:
        """After the call: actual − estimated tokens (negative refunds)."""
        ...

    async def acquire_slot(
        self, scope: str, limit: int, lease_id: str | None = None, ttl_s: float = 600.0
    ) -> str | None:
        """A concurrency lease (its id), or None when ``limit`` are already held."""
        ...

    async def release_slot(self, scope: str, lease_id: str) -> None: ...

    async def in_flight(self, scopes: Iterable[str]) -> dict[str, int]: ...


class InProcessRateLimitStore:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.table = GcraTable()
        self.leases: dict[str, Leases] = {}

    async def hit(self, limits: Sequence[RateLimit], tokens: int) -> RateDecision:
        return self.table.hit(list(limits), tokens, self._clock())

    async def adjust_tokens(self, limits: Sequence[RateLimit], delta: int) -> None:
        self.table.adjust_tokens(list(limits), delta, self._clock())

    async def acquire_slot(
        self, scope: str, limit: int, lease_id: str | None = None, ttl_s: float = 600.0
    ) -> str | None:
        lid = lease_id or uuid.uuid4().hex
        leases = self.leases.setdefault(scope, Leases({}))
        return lid if leases.acquire(lid, limit, self._clock(), ttl_s) else None

    async def release_slot(self, scope: str, lease_id: str) -> None:
        leases = self.leases.get(scope)
        if leases is not None:
            leases.held.pop(lease_id, None)

    async def in_flight(self, scopes: Iterable[str]) -> dict[str, int]:
        now = self._clock()
        return {s: (self.leases[s].active(now) if s in self.leases else 0) for s in scopes}


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


class RedisRateLimitStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "hg:",
        clock: Callable[[], float] = time.time,
        retry_after_s: float = 2.0,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._clock = clock
        self._hit = client.register_script(HIT_LUA)
        self._adjust = client.register_script(ADJUST_LUA)
        self._acquire = client.register_script(ACQUIRE_LUA)
        self.fallback = InProcessRateLimitStore(clock=clock)
        self.guard = RedisGuard("ratelimits", retry_after_s=retry_after_s)

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
        self, scope: str, limit: int, lease_id: str | None = None, ttl_s: float = 600.0
    ) -> str | None:
        lid = lease_id or uuid.uuid4().hex

        async def remote() -> str | None:
            now = self._clock()
            args = [repr(now), lid, limit, repr(now + ttl_s), math.ceil(ttl_s * 1000) + 1000]
            return lid if int(await self._acquire(keys=[self._lease_key(scope)], args=args)) else None

        return await self.guard.run(remote, lambda: self.fallback.acquire_slot(scope, limit, lid, ttl_s))

    async def release_slot(self, scope: str, lease_id: str) -> None:
        async def remote() -> None:
            await self._r.zrem(self._lease_key(scope), lease_id)

        await self.guard.run(remote, lambda: self.fallback.release_slot(scope, lease_id))

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
