"""Policy hot reload pushed over Redis pub/sub (real Redis, real Postgres): a change reaches other
processes long before their next poll, a dead Redis never fails a change, a cut subscription comes
back on its own and catches up, and polling relaxes only while the push path is live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from policies.db_store import DbPolicyStore
from policies.registry import InMemoryPolicyStore, PolicyRegistry
from state.policy_events import RedisPolicyEvents
from state.redis_util import make_redis
from tests.support.policies import V1, V2
from tests.support.requestlog import TcpProxy

LONG_POLL_S = 30.0  # far longer than any wait below: whatever arrives in time came by pub/sub


@pytest.fixture()
async def pg_engine(fresh_pg_url: str) -> AsyncIterator[AsyncEngine]:
    from requestlog.tables import policies, policy_active, policy_retirements

    engine = create_async_engine(fresh_pg_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: sa.MetaData().create_all(c, tables=[policies, policy_active, policy_retirements]))
    yield engine
    await engine.dispose()


@dataclass
class Process:
    """One gateway process's policy side: its own DB engine, Redis client, registry and loops."""

    registry: PolicyRegistry
    events: RedisPolicyEvents
    client: aioredis.Redis
    engine: AsyncEngine
    tasks: list[asyncio.Task[None]]
    stop: asyncio.Event

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.client.aclose()
        await self.engine.dispose()


async def start_process(
    db_url: str, redis_url: str, channel: str, *, poll: bool = True, **events_kwargs: float
) -> Process:
    """Wired like the app lifespan does it: subscriber task plus a (long) relaxed poll loop."""
    engine = create_async_engine(db_url)
    # generous timeouts: this is about delivery, not fail-fast on a loaded CI box
    client = make_redis(redis_url, timeout_s=5.0, connect_timeout_s=5.0)
    events_kwargs = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, **events_kwargs}
    events = RedisPolicyEvents(client, channel=channel, **events_kwargs)  # type: ignore[arg-type]
    registry = PolicyRegistry(DbPolicyStore(engine), notifier=events)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(events.run(registry.reload, stop))]
    if poll:
        tasks.append(
            asyncio.create_task(
                registry.run_reload_loop(
                    LONG_POLL_S, stop, pushed=lambda: events.live, pushed_interval_s=LONG_POLL_S
                )
            )
        )
    return Process(registry, events, client, engine, tasks, stop)


async def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``cond()`` holds; fails the test after ``timeout_s``."""
    t0 = time.perf_counter()
    while not cond():
        assert time.perf_counter() - t0 < timeout_s, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.002)
    return time.perf_counter() - t0


async def timed(change: Awaitable[object], cond: Callable[[], bool], what: str) -> float:
    """Latency from the moment ``change`` returned (committed) until ``cond()`` holds elsewhere."""
    await change
    return await wait_for(cond, 2.0, what)


async def test_change_reaches_another_process_within_2s_by_pubsub_while_it_polls_every_30s(
    pg_engine: AsyncEngine, fresh_pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}policies"
    a = await start_process(fresh_pg_url, redis_url, channel)
    b = await start_process(fresh_pg_url, redis_url, channel)
    try:
        await wait_for(lambda: a.events.live and b.events.live, 5.0, "subscriptions up")
        await asyncio.sleep(0.05)  # let both polls' first (immediate) pass finish: from now on only push
        ra, rb = a.registry, b.registry
        latencies = [
            await timed(ra.create("p", V1), lambda: rb.active_version("p") == 1, "create"),
            await timed(ra.update("p", V2), lambda: rb.active_version("p") == 2, "update"),
            await timed(ra.rollback("p"), lambda: rb.active_version("p") == 1, "rollback"),
            await timed(ra.activate("p", 2), lambda: rb.active_version("p") == 2, "activate"),
            await timed(
                ra.update("p", V1, activate=False),
                lambda: [v.version for v in rb.versions("p")] == [1, 2, 3],
                "update without activation",
            ),
        ]
        assert rb.active("p").description == "second" and rb.active_version("p") == 2
        # changes go the other way too, and a process ignores its own announcements
        await timed(rb.rollback("p"), lambda: ra.active_version("p") == 1, "rollback from b")
        assert (a.events.published, b.events.received, a.events.received) == (5, 5, 1)
        print(
            f"pub/sub reload latency: max {max(latencies) * 1000:.1f} ms, all {[round(x * 1000, 1) for x in latencies]} ms"
        )
        assert max(latencies) < 2.0
    finally:
        await a.close()
        await b.close()


async def test_change_succeeds_and_is_polled_by_others_when_redis_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = InMemoryPolicyStore()  # shared storage: the database
    dead = make_redis("redis://127.0.0.1:1/0")  # nothing listens on port 1: connection refused
    events = RedisPolicyEvents(dead, channel="hg:policies")
    writer = PolicyRegistry(store, notifier=events)
    reader = PolicyRegistry(store)
    stop = asyncio.Event()
    poll = asyncio.create_task(reader.run_reload_loop(0.05, stop))
    try:
        with caplog.at_level(logging.WARNING, logger="hybridgate.state"):
            v1 = await writer.create("p", V1)
            v2 = await writer.update("p", V2)
        assert (v1.version, v2.version, writer.active_version("p")) == (1, 2, 2)
        assert (events.published, events.publish_failures) == (0, 2)
        assert "change not announced" in caplog.text
        await wait_for(lambda: reader.active_version("p") == 2, 2.0, "polling safety net")
    finally:
        stop.set()
        await poll
        await dead.aclose()


async def test_subscriber_reconnects_after_its_redis_connection_is_cut_and_catches_up_on_missed_changes(
    pg_engine: AsyncEngine, fresh_pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}policies"
    proxy = TcpProxy("127.0.0.1", urlsplit(redis_url).port or 6379)
    await proxy.start()
    a = await start_process(fresh_pg_url, redis_url, channel)
    # b reaches Redis only through the proxy, and does not poll: all it learns comes from Redis
    b = await start_process(fresh_pg_url, f"redis://127.0.0.1:{proxy.port}/0", channel, poll=False)
    try:
        await wait_for(lambda: b.events.live, 5.0, "b subscribed")
        await a.registry.create("p", V1)
        await wait_for(lambda: b.registry.active_version("p") == 1, 2.0, "before the cut")

        await proxy.cut()
        await wait_for(lambda: not b.events.live, 2.0, "b notices the cut")
        await a.registry.update("p", V2)  # announced while b cannot hear it
        await asyncio.sleep(0.5)  # b retries (and fails) a few times meanwhile
        assert b.registry.active_version("p") == 1 and not b.events.live

        await proxy.restore()
        await wait_for(lambda: b.registry.active_version("p") == 2, 2.0, "missed change after reconnect")
        assert b.events.live and b.events.subscriptions == 2 and proxy.connections_seen >= 2
        await a.registry.rollback("p")  # and push works again
        await wait_for(lambda: b.registry.active_version("p") == 1, 2.0, "push after reconnect")
    finally:
        await a.close()
        await b.close()
        await proxy.close()


async def test_idle_subscription_stays_live_and_a_silently_dead_one_is_noticed_and_replaced(
    pg_engine: AsyncEngine, fresh_pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}policies"
    proxy = TcpProxy("127.0.0.1", urlsplit(redis_url).port or 6379)
    await proxy.start()
    a = await start_process(fresh_pg_url, redis_url, channel)
    b = await start_process(
        fresh_pg_url,
        f"redis://127.0.0.1:{proxy.port}/0",
        channel,
        poll=False,
        ping_interval_s=0.1,
        dead_after_s=0.4,
    )
    try:
        await wait_for(lambda: b.events.live, 5.0, "b subscribed")
        await asyncio.sleep(1.0)  # ten quiet ping intervals: answered PINGs keep it live
        assert b.events.live and b.events.subscriptions == 1

        proxy.frozen = True  # no error anywhere, just silence
        await wait_for(lambda: not b.events.live, 2.0, "b notices the silence")
        await a.registry.create("p", V1)
        proxy.frozen = False
        # A reconnect tried while still frozen had its handshake swallowed and waits out the
        # client's 5 s socket timeout before the next try: allow for that, the point is recovery.
        await wait_for(lambda: b.registry.active_version("p") == 1, 10.0, "resubscribed and caught up")
        assert b.events.live and b.events.subscriptions >= 2
    finally:
        await a.close()
        await b.close()
        await proxy.close()


async def test_polling_relaxes_while_push_is_live_and_returns_to_full_rate_when_it_is_not() -> None:
    store = InMemoryPolicyStore()
    writer, reader = PolicyRegistry(store), PolicyRegistry(store)  # no notifier: only polling carries changes
    push_live = True
    await writer.create("q", V1.replace("name: p", "name: q"))
    stop = asyncio.Event()
    poll = asyncio.create_task(
        reader.run_reload_loop(0.05, stop, pushed=lambda: push_live, pushed_interval_s=LONG_POLL_S)
    )
    try:
        # the first poll runs at once: seeing "q" says it has, however slowly the machine runs
        await wait_for(lambda: reader.active_version("q") == 1, 5.0, "the first poll")
        await writer.create("p", V1)
        await asyncio.sleep(0.5)  # ten full-rate intervals
        assert reader.active_version("p") is None  # relaxed: not polled yet
        push_live = False
        # any wait far below LONG_POLL_S tells full rate from relaxed; 2 s leaves room for a slow box
        await wait_for(lambda: reader.active_version("p") == 1, 2.0, "full-rate polling resumes")
    finally:
        stop.set()
        await poll
