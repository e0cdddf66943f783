"""Breaker storage: in-process, and Redis (one Lua script, so every gateway process sees one state).

The Lua script mirrors `router.breaker.CircuitBreaker` transition for transition; the tests run
both on the same random event sequences and compare. Times: the in-process store may use a
monotonic clock, but the Redis store needs a clock all processes share, so it defaults to
``time.time`` (inject a fake one in tests).

Half-open probe slots are held under tokens (`router.breaker.Admission.probe`; in Redis a hash of
live tokens and their expiry times), so a give-back frees exactly the slot its attempt took, or
nothing. That makes a give-back Redis missed safe to send again later: the Redis store keeps it and
``maintain`` retries it once Redis answers, so a probe that ended during an outage frees its slot for
every process within a ``maintain`` round of Redis returning, not after ``probe_timeout_s``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis.asyncio as aioredis

from router.breaker import (
    Admission,
    BreakerConfig,
    BreakerStateName,
    BreakerStatus,
    CircuitBreaker,
    ForceMode,
    seconds_until_half_open,
)
from state.redis_util import REDIS_ERRORS, RedisGuard

_V = TypeVar("_V")


class BreakerStore(Protocol):
    """Per-deployment breakers. ``allow`` may take a half-open probe slot: call it right before an
    attempt and always ``record`` (or ``release``) the attempt afterwards, with the admission's
    ``probe`` token, so that the slot it took (and only that one) is given back."""

    async def allow(self, deployment: str) -> Admission: ...

    async def record(
        self, deployment: str, ok: bool, latency_ms: float | None = None, probe: str | None = None
    ) -> BreakerStateName: ...

    async def release(self, deployment: str, probe: str | None) -> None:
        """Instead of ``record``, for an attempt that says nothing about the deployment's health
        (a client-caused failure, a cancelled attempt): gives back the half-open probe slot it took
        (``probe``, its `Admission.probe`; None: it took none, nothing to do)."""
        ...

    async def state(self, deployment: str) -> BreakerStateName: ...

    async def states(self, deployments: Iterable[str]) -> dict[str, BreakerStateName]: ...

    async def statuses(self, deployments: Iterable[str]) -> dict[str, BreakerStatus]:
        """Per deployment, its state and whether an operator forced it (`force`): for the admin API and
        console, which must tell a forced breaker from one the traffic opened or closed."""
        ...

    async def seconds_until_half_open(self, deployments: Iterable[str]) -> dict[str, float | None]:
        """Per deployment, seconds until its breaker admits a half-open probe
        (`router.breaker.seconds_until_half_open`): 0 when it admits traffic now, None when forced open."""
        ...

    async def force(self, deployment: str, mode: ForceMode | None) -> None: ...

    async def maintain(self) -> None:
        """Retry the give-backs of probe slots that did not reach the shared store (a periodic job,
        every second or so; a no-op for in-process state)."""
        ...


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

    async def allow(self, deployment: str) -> Admission:
        return self.breaker(deployment).allow(self._clock())

    async def record(
        self, deployment: str, ok: bool, latency_ms: float | None = None, probe: str | None = None
    ) -> BreakerStateName:
        return self.breaker(deployment).record(self._clock(), ok, latency_ms, probe)

    async def release(self, deployment: str, probe: str | None) -> None:
        b = self._breakers.get(deployment)
        if b is not None:
            b.release(self._clock(), probe)

    def holds(self, deployment: str, probe: str) -> bool:
        """Whether ``probe`` is a probe slot this store handed out and still holds."""
        b = self._breakers.get(deployment)
        return b is not None and probe in b.probes

    async def state(self, deployment: str) -> BreakerStateName:
        b = self._breakers.get(deployment)
        return b.state_at(self._clock()) if b is not None else "closed"

    def _each(
        self, deployments: Iterable[str], read: Callable[[CircuitBreaker, float], _V], untouched: _V
    ) -> dict[str, _V]:
        """Per deployment, ``read(breaker, now)``; ``untouched`` for one no attempt has reached yet (closed)."""
        now = self._clock()
        return {d: read(b, now) if (b := self._breakers.get(d)) is not None else untouched for d in deployments}

    async def states(self, deployments: Iterable[str]) -> dict[str, BreakerStateName]:
        return self._each(deployments, CircuitBreaker.state_at, "closed")

    async def statuses(self, deployments: Iterable[str]) -> dict[str, BreakerStatus]:
        return self._each(deployments, CircuitBreaker.status, BreakerStatus("closed"))

    async def seconds_until_half_open(self, deployments: Iterable[str]) -> dict[str, float | None]:
        return self._each(deployments, CircuitBreaker.seconds_until_half_open, 0.0)

    async def force(self, deployment: str, mode: ForceMode | None) -> None:
        self.breaker(deployment).force(mode)

    async def maintain(self) -> None:
        return None  # every give-back lands at once


# KEYS: main hash, bucket hash, latency list, probe slots hash (token -> expiry time).
# ARGV: op, now, window_s, buckets, min_requests, error_rate, consecutive_failures, latency_ms (<0: off),
#       latency_quantile, latency_samples, cooldown_s, half_open_probes, successes_to_close,
#       probe_timeout_s, ttl_s, arg1, arg2, probe token ('' for none)
# allow: arg1 = the token to hold a probe slot under. record: arg1 = ok '1'/'0', arg2 = latency (<0: none).
# Returns {state as routing sees it, allowed 0/1, 1 when allow took a probe slot}.
BREAKER_LUA = r"""
local main, bk, lat, pk = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local window, nb, minreq = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local erate, consec_n, lat_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local q, nsamples, cooldown = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local kprobes, succ_close, probe_to = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local ttl = tonumber(ARGV[15])
local a1, a2, token = ARGV[16], ARGV[17], ARGV[18]

local h = redis.call('HMGET', main, 'state', 'forced', 'opened_at', 'consec', 'probe_succ')
local state = h[1] or 'closed'
local forced = h[2] or ''
local opened_at = tonumber(h[3] or '0')
local consec = tonumber(h[4] or '0')
local probe_succ = tonumber(h[5] or '0')

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
  state = 'open'; opened_at = now; probe_succ = 0; redis.call('DEL', pk); reset_window()
end
local function close_()
  state = 'closed'; probe_succ = 0; redis.call('DEL', pk); reset_window()
end
local function save()
  redis.call('HSET', main, 'state', state, 'forced', forced, 'opened_at', fmt(opened_at), 'consec', consec,
             'probe_succ', probe_succ)
  redis.call('EXPIRE', main, ttl)
  redis.call('EXPIRE', bk, ttl)
  redis.call('EXPIRE', lat, ttl)
  redis.call('EXPIRE', pk, ttl)
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

-- give back the probe slot held under the attempt's token, if it still holds one
if token ~= '' and (op == 'record' or op == 'release') then redis.call('HDEL', pk, token) end

if op == 'allow' then
  if forced == 'open' then return {view(), 0, 0} end
  if forced == 'closed' or state == 'closed' then return {view(), 1, 0} end
  if state == 'open' then
    if now < opened_at + cooldown then return {view(), 0, 0} end
    state = 'half_open'; probe_succ = 0; redis.call('DEL', pk)
  end
  -- a probe whose result never came back frees its slot when its timeout passes
  local live = 0
  local slots = redis.call('HGETALL', pk)
  for i = 1, #slots, 2 do
    if now < tonumber(slots[i + 1]) then live = live + 1 else redis.call('HDEL', pk, slots[i]) end
  end
  local took = 0
  if live < kprobes then
    redis.call('HSET', pk, a1, fmt(now + probe_to)); took = 1
  end
  save()
  return {view(), took, took}
elseif op == 'record' then
  local ok = a1 == '1'
  local latency = tonumber(a2)
  if state == 'open' then return {view(), 0, 0} end
  if state == 'half_open' and forced == '' then
    if ok then
      probe_succ = probe_succ + 1
      if probe_succ >= succ_close then close_() end
    else
      open_()
    end
    save()
    return {view(), 0, 0}
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
  return {view(), 0, 0}
elseif op == 'release' then
  return {view(), 0, 0}
elseif op == 'force' then
  forced = a1
  if forced == '' or forced == 'closed' then close_() end
  save()
  return {view(), 0, 0}
end
return {view(), 0, 0}
"""


@dataclass(frozen=True, slots=True)
class _GiveBack:
    """The give-back of a probe slot that Redis missed, kept for `RedisBreakerStore.maintain`."""

    deployment: str
    until: float  # store clock: by then the slot has expired in Redis anyway, so retrying is pointless


class RedisBreakerStore:
    """Breakers shared by every process through Redis; falls back to in-process state on errors.

    When Redis misses the give-back of a probe slot (a ``record`` or ``release`` that cannot reach it,
    or an ``allow`` whose answer was lost after the script may have taken a slot), the outcome goes to
    the in-process fallback and the give-back is kept for ``maintain``, which retries it until Redis
    answers or the slot has expired there anyway. Only the give-back is retried, not the outcome: a
    probe's verdict replayed later could open or close the shared breaker on stale evidence, and with
    the slot free the next request probes afresh."""

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
        self._givebacks: dict[str, _GiveBack] = {}  # probe token -> a give-back Redis missed

    def _keys(self, deployment: str) -> list[str]:
        base = f"{self._prefix}breaker:{deployment}"
        return [base, base + ":b", base + ":lat", base + ":p"]

    def _args(
        self, deployment: str, op: str, a1: str = "", a2: str = "-1", probe: str | None = None
    ) -> list[str | float | int]:
        c = self._config(deployment)
        return [
            op, repr(self._clock()), repr(c.window_s), c.buckets, c.min_requests, repr(c.error_rate),
            c.consecutive_failures, repr(-1.0 if c.latency_ms is None else c.latency_ms), repr(c.latency_quantile),
            c.latency_samples, repr(c.cooldown_s), c.half_open_probes, c.successes_to_close,
            repr(c.probe_timeout_s), self._ttl, a1, a2, probe or "",
        ]  # fmt: skip

    async def _call(
        self, deployment: str, op: str, a1: str = "", a2: str = "-1", probe: str | None = None
    ) -> tuple[BreakerStateName, bool, bool]:
        """Run the script: (state as routing sees it, allowed, took a probe slot)."""
        res = await self._script(keys=self._keys(deployment), args=self._args(deployment, op, a1, a2, probe))
        return res[0], bool(int(res[1])), bool(int(res[2]))

    def _give_back_later(self, deployment: str, probe: str) -> None:
        """Keep the give-back of a probe slot Redis may hold under ``probe`` for `maintain`. A slot the
        fallback handed out never was in Redis."""
        if not self.fallback.holds(deployment, probe):
            until = self._clock() + self._config(deployment).probe_timeout_s
            self._givebacks[probe] = _GiveBack(deployment, until)

    async def allow(self, deployment: str) -> Admission:
        token = uuid.uuid4().hex
        sent = False

        async def remote() -> Admission:
            nonlocal sent
            sent = True
            _, allowed, took = await self._call(deployment, "allow", token)
            return Admission(allowed, token if took else None)

        async def local() -> Admission:
            if sent:  # the script may have taken a slot although its answer was lost
                self._give_back_later(deployment, token)
            return await self.fallback.allow(deployment)

        return await self.guard.run(remote, local)

    async def record(
        self, deployment: str, ok: bool, latency_ms: float | None = None, probe: str | None = None
    ) -> BreakerStateName:
        lat = "-1" if latency_ms is None else repr(float(latency_ms))

        async def remote() -> BreakerStateName:
            state = (await self._call(deployment, "record", "1" if ok else "0", lat, probe))[0]
            await self.fallback.release(deployment, probe)  # a slot the fallback gave during an outage
            return state

        async def local() -> BreakerStateName:
            if probe is not None:
                self._give_back_later(deployment, probe)
            return await self.fallback.record(deployment, ok, latency_ms, probe)

        return await self.guard.run(remote, local)

    async def release(self, deployment: str, probe: str | None) -> None:
        if probe is None:
            return  # it took no probe slot: nothing to give back

        async def remote() -> None:
            await self._call(deployment, "release", probe=probe)
            await self.fallback.release(deployment, probe)  # a slot the fallback gave during an outage

        async def local() -> None:
            self._give_back_later(deployment, probe)
            await self.fallback.release(deployment, probe)

        await self.guard.run(remote, local)

    async def maintain(self) -> None:
        """Retry the give-backs Redis missed, until it answers or their slots have expired there.
        Each frees its own slot if Redis still holds it, else does nothing, so a retry of one that
        did land after all (only its answer was lost) cannot free another attempt's probe."""
        now = self._clock()
        for token in [t for t, g in self._givebacks.items() if g.until <= now]:
            del self._givebacks[token]
        todo = list(self._givebacks.items())
        if not todo:
            return

        async def remote() -> None:
            async with self._r.pipeline(transaction=False) as pipe:
                for token, g in todo:
                    args = self._args(g.deployment, "release", probe=token)
                    await self._script(keys=self._keys(g.deployment), args=args, client=pipe)
                await pipe.execute()
            for token, _ in todo:
                self._givebacks.pop(token, None)

        # Straight to Redis, not through the guard: the guard keeps requests off a Redis that just
        # failed for a while, but these retries should land as soon as it answers again.
        with contextlib.suppress(*REDIS_ERRORS):
            await remote()

    async def state(self, deployment: str) -> BreakerStateName:
        return (await self.states([deployment]))[deployment]

    async def states(self, deployments: Iterable[str]) -> dict[str, BreakerStateName]:
        return {d: s.state for d, s in (await self.statuses(deployments)).items()}

    async def statuses(self, deployments: Iterable[str]) -> dict[str, BreakerStatus]:
        names = list(deployments)

        async def remote() -> dict[str, BreakerStatus]:
            async with self._r.pipeline(transaction=False) as pipe:
                for d in names:
                    pipe.hmget(self._keys(d)[0], "state", "forced", "opened_at")
                rows = await pipe.execute()
            now = self._clock()
            out: dict[str, BreakerStatus] = {}
            for d, (state, forced, opened_at) in zip(names, rows, strict=True):
                if forced:
                    out[d] = BreakerStatus(forced, forced)
                elif state == "open" and now >= float(opened_at or 0) + self._config(d).cooldown_s:
                    out[d] = BreakerStatus("half_open")
                else:
                    out[d] = BreakerStatus(state or "closed")
            return out

        return await self.guard.run(remote, lambda: self.fallback.statuses(names))

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
