"""Budget storage: in-process `Ledger`, and Redis with atomic Lua reserve/commit/release.

Each budget account (scope × period) is a Redis hash ``spent``/``reserved``/``h:<reservation>``
plus a sorted set of reservation expiry times, so a reservation whose process died is released
by the next reserve on that account. Reserve checks and charges *all* accounts of a request in
one script: all-or-nothing, and no interleaving between the check and the charge (that gap is
exactly where concurrent requests would overspend).

Holds in Redis are short-lived (``reservation_ttl_s``, seconds) and renewed by `maintain` while
their request runs, so the hold of a request whose process died lapses within seconds. A commit
or release that cannot reach Redis is settled in the in-process ledger, and the Redis hold is
released by `maintain` once Redis answers (the spend reaches Redis from the request log); a
reserve whose answer was lost is released the same way, since the script may have run.

Redis down → the in-process ledger answers (degrade, never error). During an outage each process
counts its own spending on top of what the request log says was spent; with a `SpendReconciler`
both stores open every account from the log and catch up with it periodically
(`state/budget_reconcile.py`), so restarts of the gateway or of Redis, and Redis outages, forget no
logged spend.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import redis.asyncio as aioredis

from router.budget import (
    AccountPeriod,
    BudgetExceeded,
    BudgetLimit,
    Ledger,
    Reservation,
    account_key,
    account_period,
    period_end,
    to_nano,
    to_usd,
)
from router.signals import BudgetSnapshot
from state.budget_reconcile import SpendReconciler
from state.redis_util import MAX_RENEW_S, REDIS_ERRORS, RedisGuard


class BudgetStore(Protocol):
    async def reserve(
        self, limits: Sequence[BudgetLimit], amount_usd: float, *, reservation_id: str | None = None
    ) -> Reservation:
        """Hold ``amount_usd`` on every limit's current account, or raise `BudgetExceeded`."""
        ...

    async def commit(self, reservation: Reservation, actual_usd: float) -> None:
        """Charge the actual cost and release the rest of the hold."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Drop the hold without charging (the call failed before costing anything)."""
        ...

    async def charge(self, limits: Sequence[BudgetLimit], amount_usd: float) -> None:
        """Charge without a reservation (costs known only afterwards)."""
        ...

    async def snapshot(self, limits: Sequence[BudgetLimit]) -> dict[str, BudgetSnapshot]:
        """Per scope, the tightest of its accounts (for `router.signals.Signals.budgets`)."""
        ...

    async def reconcile(self) -> int:
        """Catch the accounts used since the last call up with the request log (periodic job);
        returns how many were read (0 without a reconciler or when the log is unreadable)."""
        ...

    async def maintain(self) -> None:
        """Renew the holds of running requests and retry releases that did not reach the shared
        store (a periodic job, every second or so; a no-op for in-process state)."""
        ...


def _now_dt(clock: Callable[[], float]) -> tuple[float, datetime]:
    t = clock()
    return t, datetime.fromtimestamp(t, UTC)


def _tightest(limits: Sequence[BudgetLimit], rows: list[tuple[int, int]]) -> dict[str, BudgetSnapshot]:
    out: dict[str, BudgetSnapshot] = {}
    for lim, (spent, reserved) in zip(limits, rows, strict=True):
        snap = BudgetSnapshot(lim.limit_usd, to_usd(spent), to_usd(reserved))
        prev = out.get(lim.scope)
        if prev is None or snap.fraction_remaining < prev.fraction_remaining:
            out[lim.scope] = snap
    return out


async def _catch_up(rec: SpendReconciler | None) -> tuple[list[AccountPeriod], dict[str, int]]:
    """The periodic round: the accounts used since the last one and their log totals."""
    if rec is None:
        return [], {}
    accounts = rec.due()
    got = await rec.read(accounts, periodic=True)
    if got is None:
        rec.requeue(accounts)
        return [], {}
    rec.opened(list(got))
    return accounts, got


class InProcessBudgetStore:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float = 900.0,
        reconciler: SpendReconciler | None = None,
    ) -> None:
        self.ledger = Ledger()
        self._clock = clock
        self._ttl = reservation_ttl_s
        self.reconciler = reconciler

    def apply_logged(self, logged: dict[str, int]) -> None:
        for key, nano in logged.items():
            self.ledger.reconcile(key, nano)

    async def _apply(self, accounts: Sequence[AccountPeriod], logged: dict[str, int]) -> None:
        self.apply_logged(logged)

    async def _open(self, limits: Sequence[BudgetLimit], dt: datetime) -> None:
        if self.reconciler is not None:
            await self.reconciler.open([account_period(lim, dt) for lim in limits], self._apply)

    async def reconcile(self) -> int:
        _, got = await _catch_up(self.reconciler)
        self.apply_logged(got)
        return len(got)

    async def maintain(self) -> None:
        return None  # holds live as long as the process; only forgotten ones expire

    async def reserve(
        self, limits: Sequence[BudgetLimit], amount_usd: float, *, reservation_id: str | None = None
    ) -> Reservation:
        now, dt = _now_dt(self._clock)
        await self._open(limits, dt)
        rid = reservation_id or uuid.uuid4().hex
        amount = to_nano(amount_usd, round_up=True)
        keys = [(account_key(lim, dt), to_nano(lim.limit_usd), lim.admission) for lim in limits]
        refused = self.ledger.reserve(keys, amount, rid, now, self._ttl)
        if refused is not None:
            lim = limits[refused]
            a = self.ledger.accounts[keys[refused][0]]
            raise BudgetExceeded(lim.scope, lim.limit_usd, lim.limit_usd - to_usd(a.spent + a.reserved), lim.period)
        return Reservation(rid, to_usd(amount), tuple(k for k, _, _ in keys), now + self._ttl)

    async def commit(self, reservation: Reservation, actual_usd: float) -> None:
        self.ledger.commit(list(reservation.accounts), reservation.id, to_nano(actual_usd))

    async def release(self, reservation: Reservation) -> None:
        self.ledger.release(list(reservation.accounts), reservation.id)

    async def charge(self, limits: Sequence[BudgetLimit], amount_usd: float) -> None:
        _, dt = _now_dt(self._clock)
        await self._open(limits, dt)
        self.ledger.commit([account_key(lim, dt) for lim in limits], "", to_nano(amount_usd))

    async def snapshot(self, limits: Sequence[BudgetLimit]) -> dict[str, BudgetSnapshot]:
        now, dt = _now_dt(self._clock)
        await self._open(limits, dt)
        rows = []
        for lim in limits:
            key = account_key(lim, dt)
            self.ledger.sweep(key, now)
            a = self.ledger.accounts.get(key)
            rows.append((a.spent, a.reserved) if a else (0, 0))
        return _tightest(limits, rows)


# KEYS: H1, Z1, H2, Z2, ... (account hash, hold-expiry zset)
# ARGV: now, amount, rid, expires_at, then per account: limit, admission, key_ttl_s (0: none), known
# (nano-USD this process knows was spent: the account's spend is raised to it before the check)
# Returns {0, spent_1, ..., spent_n} when reserved ({0} for a retried reserve of a live hold), else
# {i (1-based account), spent, reserved}.
# Drop reservation ``rid``'s hold from account (H, Z), if it is still there. Shared by both scripts.
_DROP_HOLD_LUA = r"""
local function drop_hold(H, Z, rid)
  local amt = redis.call('HGET', H, 'h:' .. rid)
  if amt then
    redis.call('HINCRBY', H, 'reserved', -tonumber(amt))
    redis.call('HDEL', H, 'h:' .. rid)
  end
  redis.call('ZREM', Z, rid)
end
"""

RESERVE_LUA = _DROP_HOLD_LUA + r"""
local now, amount, rid, exp = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local n = #KEYS / 2
for i = 1, n do
  local H, Z = KEYS[2 * i - 1], KEYS[2 * i]
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', Z, '-inf', now)) do drop_hold(H, Z, d) end
end
local held = n > 0
for i = 1, n do
  if redis.call('HEXISTS', KEYS[2 * i - 1], 'h:' .. rid) == 0 then held = false end
end
if held then return {0} end
local out = {0}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[2 * i - 1], 'spent', 'reserved')
  local spent, reserved = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  local known = tonumber(ARGV[4 + 4 * i])
  if known > spent then  -- Redis lost spend (restarted without its data): never admit below what is known
    redis.call('HSET', KEYS[2 * i - 1], 'spent', ARGV[4 + 4 * i])
    spent = known
  end
  out[i + 1] = spent
  local limit, adm = tonumber(ARGV[4 + 4 * i - 3]), ARGV[4 + 4 * i - 2]
  local ok
  if adm == 'lenient' then ok = spent + reserved < limit else ok = spent + reserved + amount <= limit end
  if not ok then return {i, spent, reserved} end
end
for i = 1, n do
  local H, Z = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('HSETNX', H, 'h:' .. rid, ARGV[2]) == 1 then
    redis.call('HINCRBY', H, 'reserved', ARGV[2])
    redis.call('ZADD', Z, exp, rid)
  end
  local ttl = tonumber(ARGV[4 + 4 * i - 1])
  if ttl > 0 then
    redis.call('EXPIRE', H, ttl)
    redis.call('EXPIRE', Z, ttl)
  end
end
return out
"""

# KEYS: H1, Z1, ...; ARGV: rid, actual (nano; negative: release only, no charge).
# Returns each account's spent after the charge.
SETTLE_LUA = _DROP_HOLD_LUA + r"""
local rid, actual = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS / 2 do
  local H, Z = KEYS[2 * i - 1], KEYS[2 * i]
  if rid ~= '' then drop_hold(H, Z, rid) end
  if actual >= 0 then
    out[i] = redis.call('HINCRBY', H, 'spent', ARGV[2])
  else
    out[i] = tonumber(redis.call('HGET', H, 'spent') or '0')
  end
end
return out
"""


# KEYS: H1, H2, ...; ARGV: per account logged (nano), key_ttl_s (0: none).
# spent = max(spent, logged): `router.budget.Ledger.reconcile`, transcribed.
RECONCILE_LUA = r"""
for i = 1, #KEYS do
  local H, logged = KEYS[i], tonumber(ARGV[2 * i - 1])
  if logged > tonumber(redis.call('HGET', H, 'spent') or '0') then redis.call('HSET', H, 'spent', ARGV[2 * i - 1]) end
  local ttl = tonumber(ARGV[2 * i])
  if ttl > 0 and redis.call('TTL', H) < 0 then redis.call('EXPIRE', H, ttl) end
end
return 0
"""


# KEYS: hold-expiry zsets; ARGV: expires_at, then one reservation id per key. Extends holds that
# are still there (XX: a hold settled meanwhile is not brought back).
RENEW_LUA = r"""
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', ARGV[1], ARGV[1 + i]) end
return 0
"""


@dataclass(slots=True)
class _Hold:
    accounts: tuple[str, ...]
    renewed_at: float  # store clock; the hold lasts until renewed_at + reservation_ttl_s
    since: float = 0.0  # when it was made: renewals stop after MAX_RENEW_S


def _key_ttl(until: datetime | None, dt: datetime) -> int:
    """Seconds an account's keys live: its period plus two days of grace (0: forever)."""
    return 0 if until is None else int((until - dt).total_seconds()) + 2 * 86_400


class RedisBudgetStore:
    """Budgets shared by all gateway processes. Single Redis instance (the scripts touch several
    accounts; on Redis Cluster they would need one hash slot)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "hg:",
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float = 15.0,
        retry_after_s: float = 2.0,
        reconciler: SpendReconciler | None = None,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._clock = clock
        self._ttl = reservation_ttl_s
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._reconcile = client.register_script(RECONCILE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self.fallback = InProcessBudgetStore(clock=clock)
        self._held: dict[str, _Hold] = {}  # reservation id -> a hold in Redis of a running request
        self._unreleased: dict[str, _Hold] = {}  # reservation id -> a hold Redis may still have
        self._local: set[str] = set()  # reservations made in the fallback ledger
        self.guard = RedisGuard("budgets", retry_after_s=retry_after_s)
        self.reconciler = reconciler

    async def _apply_logged(self, accounts: Sequence[AccountPeriod], logged: dict[str, int]) -> None:
        """Raise the shared accounts and the fallback ledger to the logged totals. The fallback is
        always raised, so an outage starts from what was spent, not from zero."""
        if not logged:
            return
        self.fallback.apply_logged(logged)
        _, dt = _now_dt(self._clock)
        todo = [a for a in accounts if a.key in logged]
        args: list[int] = []
        for a in todo:
            args += [logged[a.key], _key_ttl(a.until, dt)]

        async def remote() -> None:
            await self._reconcile(keys=[f"{self._prefix}budget:{a.key}" for a in todo], args=args)

        async def local() -> None:  # already applied to the fallback; the next round retries Redis
            if self.reconciler is not None:
                self.reconciler.requeue(todo)

        await self.guard.run(remote, local)

    async def _open_accounts(self, limits: Sequence[BudgetLimit], dt: datetime) -> None:
        if self.reconciler is not None:
            await self.reconciler.open([account_period(lim, dt) for lim in limits], self._apply_logged)

    async def reconcile(self) -> int:
        accounts, got = await _catch_up(self.reconciler)
        await self._apply_logged(accounts, got)
        return len(got)

    def _redis_keys(self, accounts: Sequence[str]) -> list[str]:
        keys = []
        for a in accounts:
            keys += [f"{self._prefix}budget:{a}", f"{self._prefix}budget:{a}:holds"]
        return keys

    async def reserve(
        self, limits: Sequence[BudgetLimit], amount_usd: float, *, reservation_id: str | None = None
    ) -> Reservation:
        now, dt = _now_dt(self._clock)
        await self._open_accounts(limits, dt)
        rid = reservation_id or uuid.uuid4().hex
        amount = to_nano(amount_usd, round_up=True)
        accounts = [account_key(lim, dt) for lim in limits]

        async def remote() -> Reservation:
            args: list[str | int] = [repr(now), amount, rid, repr(now + self._ttl)]
            for lim, account in zip(limits, accounts, strict=True):
                args += [to_nano(lim.limit_usd), lim.admission, _key_ttl(period_end(lim.period, dt), dt),
                         self._known_spent(account)]
            res = await self._reserve(keys=self._redis_keys(accounts), args=args)
            if int(res[0]) != 0:
                lim = limits[int(res[0]) - 1]
                used = to_usd(int(res[1]) + int(res[2]))
                raise BudgetExceeded(lim.scope, lim.limit_usd, lim.limit_usd - used, lim.period)
            self._mirror(accounts, res[1:])
            self._held[rid] = _Hold(tuple(accounts), now, now)
            return Reservation(rid, to_usd(amount), tuple(accounts), now + self._ttl)

        async def local() -> Reservation:
            reservation = await self.fallback.reserve(limits, amount_usd, reservation_id=rid)
            self._local.add(rid)
            # The script may have run although its answer was lost: release there too, later.
            self._unreleased[rid] = _Hold(tuple(accounts), now)
            return reservation

        return await self.guard.run(remote, local)

    def _known_spent(self, account: str) -> int:
        """nano-USD this process knows ``account`` has spent: the shared spend it last saw, what the
        log said, and what it counted itself while Redis was away (the fallback ledger keeps all
        three). A reserve raises Redis to it, so a Redis that restarted without its data (or missed
        an outage's spend) does not admit the budget afresh until the next reconcile round."""
        a = self.fallback.ledger.accounts.get(account)
        return a.spent if a is not None else 0

    def _mirror(self, accounts: Sequence[str], spent: Sequence[int]) -> None:
        """Keep the fallback ledger at least at the shared spend last seen, so that an outage starts
        from what was spent, not from zero (`Ledger.reconcile`: never lowers)."""
        for key, nano in zip(accounts, spent, strict=False):
            self.fallback.ledger.reconcile(key, int(nano))

    async def _settle_remote(self, accounts: Sequence[str], rid: str, actual: int) -> None:
        self._mirror(accounts, await self._settle(keys=self._redis_keys(accounts), args=[rid, actual]))

    async def commit(self, reservation: Reservation, actual_usd: float) -> None:
        await self._finish(reservation, to_nano(actual_usd),
                           lambda: self.fallback.commit(reservation, actual_usd))

    async def release(self, reservation: Reservation) -> None:
        await self._finish(reservation, -1, lambda: self.fallback.release(reservation))

    async def _finish(self, reservation: Reservation, actual: int,
                      settle_local: Callable[[], Awaitable[None]]) -> None:
        """Settle in Redis (charge ``actual`` nano-USD, or only release when negative). A hold made
        in the fallback ledger is settled there too; when Redis fails, the fallback counts the
        cost and the Redis hold is released by `maintain` (never charged twice: the spend reaches
        Redis from the request log)."""
        rid = reservation.id
        held = self._held.pop(rid, None)
        local = rid in self._local
        if local:
            self._local.discard(rid)
            await settle_local()

        async def remote() -> None:
            await self._settle_remote(reservation.accounts, rid, actual)
            self._unreleased.pop(rid, None)

        async def later() -> None:
            if not local:
                await settle_local()
            self._unreleased.setdefault(rid, held or _Hold(reservation.accounts, self._clock()))

        await self.guard.run(remote, later)

    async def maintain(self) -> None:
        """Renew held reservations a third of their TTL before they lapse; release the Redis holds
        of settled ones that Redis missed, until it answers or they have expired there anyway."""
        now = self._clock()
        ttl = self._ttl
        for rid in [rid for rid, h in self._unreleased.items() if h.renewed_at + ttl < now]:
            del self._unreleased[rid]
        for rid in [rid for rid, h in self._held.items() if now - h.since > MAX_RENEW_S]:
            del self._held[rid]
        due = [(rid, h) for rid, h in self._held.items() if now - h.renewed_at >= ttl / 3]
        gone = list(self._unreleased.items())
        if not due and not gone:
            return

        async def remote() -> None:
            async with self._r.pipeline(transaction=False) as pipe:
                for rid, h in gone:
                    await self._settle(keys=self._redis_keys(h.accounts), args=[rid, -1], client=pipe)
                for rid, h in due:
                    zsets = [f"{self._prefix}budget:{a}:holds" for a in h.accounts]
                    await self._renew(keys=zsets, args=[repr(now + ttl), *([rid] * len(zsets))], client=pipe)
                await pipe.execute()
            for rid, _ in gone:
                self._unreleased.pop(rid, None)
            for _, h in due:
                h.renewed_at = now

        # Straight to Redis, not through the guard: the guard keeps requests off a Redis that just
        # failed for a while, but these retries should land as soon as it answers again.
        with contextlib.suppress(*REDIS_ERRORS):
            await remote()

    async def charge(self, limits: Sequence[BudgetLimit], amount_usd: float) -> None:
        _, dt = _now_dt(self._clock)
        await self._open_accounts(limits, dt)
        accounts = [account_key(lim, dt) for lim in limits]
        await self.guard.run(
            lambda: self._settle_remote(accounts, "", to_nano(amount_usd)),
            lambda: self.fallback.charge(limits, amount_usd),
        )

    async def snapshot(self, limits: Sequence[BudgetLimit]) -> dict[str, BudgetSnapshot]:
        _, dt = _now_dt(self._clock)
        await self._open_accounts(limits, dt)
        accounts = [account_key(lim, dt) for lim in limits]

        async def remote() -> dict[str, BudgetSnapshot]:
            async with self._r.pipeline(transaction=False) as pipe:
                for a in accounts:
                    pipe.hmget(f"{self._prefix}budget:{a}", "spent", "reserved")
                rows = await pipe.execute()
            self._mirror(accounts, [int(s or 0) for s, _ in rows])
            # spend as the next reserve will count it: at least what this process knows (`_known_spent`)
            counted = [(self._known_spent(a), int(r or 0)) for a, (_, r) in zip(accounts, rows, strict=True)]
            return _tightest(limits, counted)

        return await self.guard.run(remote, lambda: self.fallback.snapshot(limits))
