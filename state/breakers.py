"""Breaker storage: in-process, and Redis (one Lua script, so every gateway process sees one state).

The Lua script mirrors `router.breaker.CircuitBreaker` transition for transition; the tests run
both on the same random event sequences and compare. Times: the in-process store may use a
monotonic clock, but the Redis store needs a clock all processes share, so it defaults to
``time.time`` (inject a fake one in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import redis.asyncio as aioredis

from router.breaker import BreakerConfig, BreakerStateName, CircuitBreaker, ForceMode, seconds_until_half_open
from state.redis_util import RedisGuard


class BreakerStore(Protocol):
    """Per-deployment breakers. ``allow`` takes a half-open probe slot: call it right before an
    attempt and always ``record`` the attempt's outcome afterwards."""

    async def allow(self, deployment: str) -> bool: ...

    async def record(self, deployment: str, ok: bool, latency_ms: float | None = None) -> BreakerStateName: ...

    async def release(self, deployment: str) -> None:
        """Instead of ``record``, for an attempt that says nothing about the deployment's health
        (a client-caused failure, a cancelled attempt): gives back a half-open probe slot it took."""
        ...

    async def state(self, deployment: str) -> BreakerStateName: ...

    async def states(self, deployments: Iterable[str]) -> dict[str, BreakerStateName]: ...

    async def seconds_until_half_open(self, deployments: Iterable[str]) -> dict[str, float | None]:
        """Per deployment, seconds until its breaker admits a half-open probe
        (`router.breaker.seconds_until_half_open`): 0 when it admits traffic now, None when forced open."""
        ...

    async def force(self, deployment: str, mode: ForceMode | None) -> None: ...


class _Configs:
    def __init__(self, config: BreakerConfig | None, overrides: Mapping[str, BreakerConfig] | None) -> None:
        self.default = config or BreakerConfig()
        self.overrides = dict(overrides or {})

    def __call__(self, deployment: str) -> BreakerConfig:
        return self.overrides.get(deployment, self.default)


class InProcessBreakerStore:
    """Breakers in this process's memory. Also the Redis store's fallback."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        overrides: Mapping[str, BreakerConfig] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = _Configs(config, overrides)
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, deployment: str) -> CircuitBreaker:
        b = self._breakers.get(deployment)
        if b is None:
            b = self._breakers[deployment] = CircuitBreaker(self._config(deployment))
        return b

    async def allow(self, deployment: str) -> bool:
        return self.breaker(deployment).allow(self._clock())

    async def record(self, deployment: str, ok: bool, latency_ms: float | None = None) -> BreakerStateName:
        return self.breaker(deployment).record(self._clock(), ok, latency_ms)

    async def release(self, deployment: str) -> None:
        b = self._breakers.get(deployment)
        if b is not None:
            b.release(self._clock())

    async def state(self, deployment: str) -> BreakerStateName:
        b = self._breakers.get(deployment)
        return b.state_at(self._clock()) if b is not None else "closed"

    async def states(self, deployments: Iterable[str]) -> dict[str, BreakerStateName]:
        now = self._clock()
        out: dict[str, BreakerStateName] = {}
        for d in deployments:
            b = self._breakers.get(d)
            out[d] = b.state_at(now) if b is not None else "closed"
        return out

    async def seconds_until_half_open(self, deployments: Iterable[str]) -> dict[str, float | None]:
        now = self._clock()
        out: dict[str, float | None] = {}
        for d in deployments:
            b = self._breakers.get(d)
            out[d] = b.seconds_until_half_open(now) if b is not None else 0.0
        return out

    async def force(self, deployment: str, mode: ForceMode | None) -> None:
        self.breaker(deployment).force(mode)


# KEYS: main hash, bucket hash, latency list.
# ARGV: op, now, window_s, buckets, min_requests, error_rate, consecutive_failures, latency_ms (<0: off),
#       latency_quantile, latency_samples, cooldown_s, half_open_probes, successes_to_close,
#       probe_timeout_s, ttl_s, arg1, arg2
# Returns {state as routing sees it, allowed 0/1}.
BREAKER_LUA = r"""
local main, bk, lat = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local window, nb, minreq = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local erate, consec_n, lat_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local q, nsamples, cooldown = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local kprobes, succ_close, probe_to = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local ttl = tonumber(ARGV[15])
local a1, a2 = ARGV[16], ARGV[17]

local h = redis.call('HMGET', main, 'state', 'forced', 'opened_at', 'consec', 'probes', 'probe_exp', 'probe_succ')
local state = h[1] or 'closed'
local forced = h[2] or ''
local opened_at = tonumber(h[3] or '0')
local consec = tonumber(h[4] or '0')
local probes = tonumber(h[5] or '0')
local probe_exp = tonumber(h[6] or '0')
local probe_succ = tonumber(h[7] or '0')

local function fmt(x) return string.format('%.17g', x) end
local width = window / nb
local function bucket(t) return math.floor(t / width) end

local function view()
  if forced ~= '' then return forced end
  if state == 'open' and now >= opened_at + cooldown then return 'half_open' end
  return state
end
local function reset_window()
  consec = 0
  redis.call('DEL', bk, lat)
end
local function open_()
  state = 'open'; opened_at = now; probes = 0; probe_succ = 0; reset_window()
end
local function close_()
  state = 'closed'; probes = 0; probe_succ = 0; reset_window()
end
local function save()
  redis.call('HSET', main, 'state', state, 'forced', forced, 'opened_at', fmt(opened_at), 'consec', consec,
             'probes', probes, 'probe_exp', fmt(probe_exp), 'probe_succ', probe_succ)
  redis.call('EXPIRE', main, ttl)
  redis.call('EXPIRE', bk, ttl)
  redis.call('EXPIRE', lat, ttl)
end
local function should_trip()
  if consec_n > 0 and consec >= consec_n then return true end
  local lo = bucket(now) - nb
  local all = redis.call('HGETALL', bk)
  local req, fail = 0, 0
  for i = 1, #all, 2 do
    local f = all[i]
    if tonumber(string.sub(f, 2)) > lo then
      if string.sub(f, 1, 1) == 'r' then req = req + tonumber(all[i + 1]) else fail = fail + tonumber(all[i + 1]) end
    end
  end
  if req >= minreq and fail >= erate * req then return true end
  if lat_ms >= 0 then
    local xs = {}
    for _, e in ipairs(redis.call('LRANGE', lat, 0, -1)) do
      local sep = string.find(e, '|', 1, true)
      if tonumber(string.sub(e, 1, sep - 1)) > now - window then
        table.insert(xs, tonumber(string.sub(e, sep + 1)))
      end
    end
    if #xs > 0 and #xs >= minreq then
      table.sort(xs)
      local k = math.ceil(q * #xs) - 1
      if k < 0 then k = 0 end
      if k > #xs - 1 then k = #xs - 1 end
      if xs[k + 1] > lat_ms then return true end
    end
  end
  return false
end

if op == 'allow' then
  if forced == 'open' then return {view(), 0} end
  if forced == 'closed' or state == 'closed' then return {view(), 1} end
  if state == 'open' then
    if now < opened_at + cooldown then return {view(), 0} end
    state = 'half_open'; probes = 0; probe_succ = 0
  end
  local allowed = 0
  if probes >= kprobes and now >= probe_exp then probes = 0 end
  if probes < kprobes then
    probes = probes + 1; probe_exp = now + probe_to; allowed = 1
  end
  save()
  return {view(), allowed}
elseif op == 'record' then
  local ok = a1 == '1'
  local latency = tonumber(a2)
  if state == 'open' then return {view(), 0} end
  if state == 'half_open' and forced == '' then
    probes = math.max(0, probes - 1)
    if ok then
      probe_succ = probe_succ + 1
      if probe_succ >= succ_close then close_() end
    else
      open_()
    end
    save()
    return {view(), 0}
  end
  local idx = bucket(now)
  local lo = idx - nb
  for _, f in ipairs(redis.call('HKEYS', bk)) do
    if tonumber(string.sub(f, 2)) <= lo then redis.call('HDEL', bk, f) end
  end
  redis.call('HINCRBY', bk, 'r' .. idx, 1)
  if ok then
    consec = 0
  else
    redis.call('HINCRBY', bk, 'f' .. idx, 1)
    consec = consec + 1
  end
  if latency >= 0 then
    redis.call('RPUSH', lat, fmt(now) .. '|' .. fmt(latency))
    redis.call('LTRIM', lat, -nsamples, -1)
  end
  if forced == '' and state == 'closed' and should_trip() then open_() end
  save()
  return {view(), 0}
elseif op == 'release' then
  if state == 'half_open' and forced == '' then
    probes = math.max(0, probes - 1)
    save()
  end
  return {view(), 0}
elseif op == 'force' then
  forced = a1
  if forced == '' or forced == 'closed' then close_() end
  save()
  return {view(), 0}
end
return {view(), 0}
"""


class RedisBreakerStore:
    """Breakers shared by every process through Redis; falls back to in-process state on errors."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "hg:",
        config: BreakerConfig | None = None,
        overrides: Mapping[str, BreakerConfig] | None = None,
        clock: Callable[[], float] = time.time,
        ttl_s: int = 86_400,
        retry_after_s: float = 2.0,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._config = _Configs(config, overrides)
        self._clock = clock
        self._ttl = ttl_s
        self._script = client.register_script(BREAKER_LUA)
        self.fallback = InProcessBreakerStore(config, overrides, clock)
        self.guard = RedisGuard("breakers", retry_after_s=retry_after_s)

    def _keys(self, deployment: str) -> list[str]:
        base = f"{self._prefix}breaker:{deployment}"
        return [base, base + ":b", base + ":lat"]

    def _args(self, deployment: str, op: str, a1: str = "", a2: str = "-1") -> list[str | float | int]:
        c = self._config(deployment)
        return [
            op, repr(self._clock()), repr(c.window_s), c.buckets, c.min_requests, repr(c.error_rate),
            c.consecutive_failures, repr(-1.0 if c.latency_ms is None else c.latency_ms), repr(c.latency_quantile),
            c.latency_samples, repr(c.cooldown_s), c.half_open_probes, c.successes_to_close,
            repr(c.probe_timeout_s), self._ttl, a1, a2,
        ]  # fmt: skip

    async def _call(self, deployment: str, op: str, a1: str = "", a2: str = "-1") -> tuple[BreakerStateName, bool]:
        res = await self._script(keys=self._keys(deployment), args=self._args(deployment, op, a1, a2))
        return res[0], bool(int(res[1]))

    async def allow(self, deployment: str) -> bool:
        async def remote() -> bool:
            return (await self._call(deployment, "allow"))[1]

        return await self.guard.run(remote, lambda: self.fallback.allow(deployment))

    async def record(self, deployment: str, ok: bool, latency_ms: float | None = None) -> BreakerStateName:
        lat = "-1" if latency_ms is None else repr(float(latency_ms))

        async def remote() -> BreakerStateName:
            return (await self._call(deployment, "record", "1" if ok else "0", lat))[0]

        return await self.guard.run(remote, lambda: self.fallback.record(deployment, ok, latency_ms))

    async def release(self, deployment: str) -> None:
        async def remote() -> None:
            await self._call(deployment, "release")

        await self.guard.run(remote, lambda: self.fallback.release(deployment))

    async def state(self, deployment: str) -> BreakerStateName:
        return (await self.states([deployment]))[deployment]

    async def states(self, deployments: Iterable[str]) -> dict[str, BreakerStateName]:
        names = list(deployments)

        async def remote() -> dict[str, BreakerStateName]:
            async with self._r.pipeline(transaction=False) as pipe:
                for d in names:
                    pipe.hmget(self._keys(d)[0], "state", "forced", "opened_at")
                rows = await pipe.execute()
            now = self._clock()
            out: dict[str, BreakerStateName] = {}
            for d, (state, forced, opened_at) in zip(names, rows, strict=True):
                if forced:
                    out[d] = forced
                elif state == "open" and now >= float(opened_at or 0) + self._config(d).cooldown_s:
                    out[d] = "half_open"
                else:
                    out[d] = state or "closed"
            return out

        return await self.guard.run(remote, lambda: self.fallback.states(names))

    async def seconds_until_half_open(self, deployments: Iterable[str]) -> dict[str, float | None]:
        names = list(deployments)

        async def remote() -> dict[str, float | None]:
            async with self._r.pipeline(transaction=False) as pipe:
                for d in names:
                    pipe.hmget(self._keys(d)[0], "state", "forced", "opened_at")
                rows = await pipe.execute()
            now = self._clock()
            return {
                d: seconds_until_half_open(state or "closed", forced or None, float(opened_at or 0),
                                           self._config(d).cooldown_s, now)
                for d, (state, forced, opened_at) in zip(names, rows, strict=True)
            }

        return await self.guard.run(remote, lambda: self.fallback.seconds_until_half_open(names))

    async def force(self, deployment: str, mode: ForceMode | None) -> None:
        async def remote() -> None:
            await self._call(deployment, "force", mode or "")

        await self.guard.run(remote, lambda: self.fallback.force(deployment, mode))
        if not self.guard.degraded:
            await self.fallback.force(deployment, mode)  # an operator's override survives a Redis outage
