"""Budgets remember logged spend: accounts open from the request log and catch up with it, so a
restart of the gateway or of Redis, a Redis outage, or another process's spending is never
forgotten, and a log database that is down never fails a request.

Real PostgreSQL (the log) and real Redis; the outage is a TCP proxy cut between store and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from requestlog import migrate
from requestlog.spend import LoggedSpend
from requestlog.tables import requests
from router.budget import BudgetExceeded, BudgetLimit, account_period, period_start
from state.budget_reconcile import SpendReconciler
from state.budgets import InProcessBudgetStore, RedisBudgetStore
from state.redis_util import make_redis
from tests.support.redis import delete_keys
from tests.support.requestlog import TcpProxy, dead_pg_url

NOW = datetime(2024, 5, 15, 12, 0, tzinfo=UTC)  # a Wednesday


def clock() -> float:
    return NOW.timestamp()


@pytest.fixture()
async def log_engine(fresh_pg_url: str) -> AsyncIterator[AsyncEngine]:
    migrate.upgrade(fresh_pg_url)
    engine = create_async_engine(fresh_pg_url)
    yield engine
    await engine.dispose()


async def logged(engine: AsyncEngine, cost: float, *, at: datetime = NOW, key: str | None = "k",
                 user: str | None = None, team: str | None = None) -> None:
    """What the log sink writes for a settled request (only the columns budgets read matter)."""
    async with engine.begin() as conn:
        await conn.execute(sa.insert(requests).values(
            id=uuid.uuid4().hex, created_at=at, endpoint="chat", api_key_id=key, user=user, team=team,
            cost_usd=cost))


async def test_logged_spend_sums_each_scope_over_its_own_period(log_engine: AsyncEngine) -> None:
    await logged(log_engine, 1.0, key="k")
    await logged(log_engine, 2.0, key="k", at=NOW - timedelta(days=40))  # an earlier month
    await logged(log_engine, 0.25, key="k", user="ann", team="ml", at=NOW - timedelta(days=2))  # Monday
    await logged(log_engine, 0.5, key="other", team="ml")
    await logged(log_engine, 0.125, key=None, user="ann")
    limits = [BudgetLimit("key:k", 10, "month"), BudgetLimit("key:k", 10, "total"), BudgetLimit("user:ann", 10, "day"),
              BudgetLimit("team:ml", 10, "week"), BudgetLimit("team:nobody", 10), BudgetLimit("org:x", 10)]
    got = await LoggedSpend(log_engine).spent([account_period(lim, NOW) for lim in limits])
    assert got == {"key:k:month:2024-05": 1.25, "key:k:total:total": 3.25, "user:ann:day:2024-05-15": 0.125,
                   "team:ml:week:2024-W20": 0.75, "team:nobody:month:2024-05": 0.0}  # org:x is no log column
    assert period_start("week", NOW) == datetime(2024, 5, 13, tzinfo=UTC)


async def test_a_restarted_gateway_does_not_forget_what_a_budget_already_spent(log_engine: AsyncEngine) -> None:
    await logged(log_engine, 0.9)
    await logged(log_engine, 5.0, at=NOW - timedelta(days=40))  # last month's spend is not this month's
    store = InProcessBudgetStore(clock=clock, reconciler=SpendReconciler(LoggedSpend(log_engine)))
    lims = [BudgetLimit("key:k", 1.0, "month")]
    with pytest.raises(BudgetExceeded):
        await store.reserve(lims, 0.2)
    r = await store.reserve(lims, 0.1)
    await store.commit(r, 0.1)
    assert (await store.snapshot(lims))["key:k"].spent_usd == pytest.approx(1.0)


async def test_spend_other_processes_logged_reaches_this_one_on_the_periodic_round(log_engine: AsyncEngine) -> None:
    store = InProcessBudgetStore(clock=clock, reconciler=SpendReconciler(LoggedSpend(log_engine)))
    lims = [BudgetLimit("team:ml", 1.0, "day")]
    await store.commit(await store.reserve(lims, 0.3), 0.3)
    await logged(log_engine, 0.3, key=None, team="ml")  # this process's request, as the sink logs it
    await logged(log_engine, 0.6, key=None, team="ml")  # another process's
    assert await store.reconcile() == 1
    assert (await store.snapshot(lims))["team:ml"].spent_usd == pytest.approx(0.9)  # each cost counted once
    assert await store.reconcile() == 1  # used again since: re-read, and still nothing counted twice
    assert (await store.snapshot(lims))["team:ml"].spent_usd == pytest.approx(0.9)
    assert await store.reconcile() == 1  # the snapshot above was a use
    assert await store.reconcile() == 0  # nothing used since the last round: nothing to read


async def test_a_log_database_that_is_down_never_fails_a_request() -> None:
    engine = create_async_engine(dead_pg_url())
    try:
        rec = SpendReconciler(LoggedSpend(engine), timeout_s=2.0)
        store = InProcessBudgetStore(clock=clock, reconciler=rec)
        lims = [BudgetLimit("key:k", 1.0, "month")]
        await store.commit(await store.reserve(lims, 0.5), 0.5)
        with pytest.raises(BudgetExceeded):
            await store.reserve(lims, 0.6)  # what this process counted still holds
        assert rec.failures == 1 and rec.log_down  # the first request tried the log, the second did not
        assert await store.reconcile() == 0 and rec.failures == 2  # the periodic round keeps trying
        assert [a.key for a in rec.due()] == ["key:k:month:2024-05"]  # and keeps the account for later
    finally:
        await engine.dispose()


async def test_a_redis_that_lost_its_data_reopens_accounts_from_the_log(
    log_engine: AsyncEngine, redis_url: str, redis_prefix: str
) -> None:
    a_client, b_client = make_redis(redis_url, timeout_s=5.0), make_redis(redis_url, timeout_s=5.0)
    try:
        a = RedisBudgetStore(a_client, prefix=redis_prefix, clock=clock, reconciler=SpendReconciler(LoggedSpend(log_engine)))
        lims = [BudgetLimit("key:k", 1.0, "month")]
        await a.commit(await a.reserve(lims, 0.8), 0.8)
        await logged(log_engine, 0.8)
        await delete_keys(redis_url, redis_prefix)  # Redis restarted without persistence
        b = RedisBudgetStore(b_client, prefix=redis_prefix, clock=clock, reconciler=SpendReconciler(LoggedSpend(log_engine)))
        with pytest.raises(BudgetExceeded):  # a new process opens the account from the log
            await b.reserve(lims, 0.3)
        await delete_keys(redis_url, redis_prefix)
        await a.reconcile()  # a process that had the account open restores it on its next round
        assert (await b.snapshot(lims))["key:k"].spent_usd == pytest.approx(0.8)
        ttl = await b_client.ttl(f"{redis_prefix}budget:key:k:month:2024-05")
        assert 0 < ttl <= (datetime(2024, 6, 1, tzinfo=UTC) - NOW).total_seconds() + 2 * 86_400  # expires with its period
    finally:
        await a_client.aclose()
        await b_client.aclose()
        await delete_keys(redis_url, redis_prefix)


async def test_spend_counted_during_a_redis_outage_reaches_redis_when_it_returns(
    log_engine: AsyncEngine, redis_url: str, redis_prefix: str
) -> None:
    proxy = TcpProxy("127.0.0.1", urlsplit(redis_url).port or 6379)
    await proxy.start()
    a_client = make_redis(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=1.0)
    b_client = make_redis(redis_url, timeout_s=5.0)
    try:
        a = RedisBudgetStore(a_client, prefix=redis_prefix, clock=clock, retry_after_s=0.05,
                             reconciler=SpendReconciler(LoggedSpend(log_engine)))
        b = RedisBudgetStore(b_client, prefix=redis_prefix, clock=clock, reconciler=SpendReconciler(LoggedSpend(log_engine)))
        lims = [BudgetLimit("team:ml", 1.0, "month")]
        await a.commit(await a.reserve(lims, 0.5), 0.5)
        await logged(log_engine, 0.5, key=None, team="ml")
        assert (await b.snapshot(lims))["team:ml"].spent_usd == pytest.approx(0.5)  # b has the account open

        await proxy.cut()
        with pytest.raises(BudgetExceeded):  # the outage starts from the shared spend, not from zero
            await a.reserve(lims, 0.6)
        assert a.guard.degraded
        await a.commit(await a.reserve(lims, 0.4), 0.3)  # counted in a's own ledger only
        await logged(log_engine, 0.3, key=None, team="ml")
        await b.commit(await b.reserve(lims, 0.1), 0.1)  # b still reaches Redis
        await logged(log_engine, 0.1, key=None, team="ml")
        assert (await b.snapshot(lims))["team:ml"].spent_usd == pytest.approx(0.6)  # a's 0.3 is not there yet

        await proxy.restore()
        await asyncio.sleep(0.1)  # past the guard's retry interval
        assert await a.reconcile() == 1
        assert not a.guard.degraded
        assert (await b.snapshot(lims))["team:ml"].spent_usd == pytest.approx(0.9)
        with pytest.raises(BudgetExceeded):
            await b.reserve(lims, 0.2)
    finally:
        await a_client.aclose()
        await b_client.aclose()
        await proxy.close()
        await delete_keys(redis_url, redis_prefix)


class CountingSpend:
    """The real log read, counted, and slow enough that a burst of first requests overlaps it."""

    def __init__(self, inner: LoggedSpend) -> None:
        self.inner = inner
        self.reads = 0

    async def spent(self, accounts):  # type: ignore[no-untyped-def]
        self.reads += 1
        await asyncio.sleep(0.05)
        return await self.inner.spent(accounts)


async def test_a_burst_of_first_requests_opens_an_account_with_one_read_and_admits_nothing_before_it(
    log_engine: AsyncEngine,
) -> None:
    await logged(log_engine, 0.9)
    source = CountingSpend(LoggedSpend(log_engine))
    store = InProcessBudgetStore(clock=clock, reconciler=SpendReconciler(source))
    lims = [BudgetLimit("key:k", 1.0, "month")]

    async def one() -> bool:
        try:
            await store.reserve(lims, 0.04)
            return True
        except BudgetExceeded:
            return False

    admitted = await asyncio.gather(*(one() for _ in range(50)))
    assert source.reads == 1
    assert sum(admitted) == 2  # 0.9 logged + 2 × 0.04 ≤ 1.0 < 0.9 + 3 × 0.04
