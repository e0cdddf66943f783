"""Redis leases and budget holds live seconds, are renewed while their request runs, and a release
Redis missed is retried by `maintain` once it answers again (real Redis, through a cuttable proxy)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from router.budget import BudgetExceeded, BudgetLimit
from state.budgets import RedisBudgetStore
from state.ratelimits import RedisRateLimitStore
from state.redis_util import make_redis
from tests.support.redis import Clock, delete_keys
from tests.support.requestlog import TcpProxy

LIMIT = [BudgetLimit("key:k", 1.0, "day")]


@pytest.fixture()
async def direct(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = make_redis(redis_url, timeout_s=5.0, connect_timeout_s=5.0)
    yield client
    await client.aclose()
    await delete_keys(redis_url, redis_prefix)


async def test_a_running_requests_hold_is_renewed_and_a_dead_ones_lapses(
    direct: aioredis.Redis, redis_prefix: str
) -> None:
    clock = Clock()
    running = RedisBudgetStore(direct, prefix=redis_prefix, clock=clock, reservation_ttl_s=10)
    other = RedisBudgetStore(direct, prefix=redis_prefix, clock=clock, reservation_ttl_s=10)
    await running.reserve(LIMIT, 0.6)
    for _ in range(6):  # 30 s: three TTLs
        clock.t += 5
        await running.maintain()
    with pytest.raises(BudgetExceeded):
        await other.reserve(LIMIT, 0.6)  # still held by the running request
    clock.t += 11  # its process died: nobody renews
    await other.reserve(LIMIT, 0.6)


async def test_releases_redis_missed_land_when_it_answers_again(
    direct: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    proxy = TcpProxy("127.0.0.1", urlsplit(redis_url).port or 6379)
    await proxy.start()
    client = make_redis(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.5, connect_timeout_s=0.5)
    clock = Clock()
    budgets = RedisBudgetStore(client, prefix=redis_prefix, clock=clock)
    leases = RedisRateLimitStore(client, prefix=redis_prefix, clock=clock)
    try:
        hold = await budgets.reserve(LIMIT, 0.6)
        lease = await leases.acquire_slot("key:k", 1)
        assert lease is not None
        await proxy.cut()
        await budgets.commit(hold, 0.1)  # Redis unreachable: settled locally, the Redis hold stays
        await leases.release_slot("key:k", lease)
        watcher = RedisRateLimitStore(direct, prefix=redis_prefix, clock=clock)
        assert await watcher.in_flight(["key:k"]) == {"key:k": 1}
        await budgets.maintain()  # still cut: kept for later
        await leases.maintain()
        await proxy.restore()
        await budgets.maintain()
        await leases.maintain()
        assert await watcher.in_flight(["key:k"]) == {"key:k": 0}
        other = RedisBudgetStore(direct, prefix=redis_prefix, clock=clock)
        await other.reserve(LIMIT, 0.9)  # the 0.6 hold is gone (the spend reaches Redis from the log)
    finally:
        await client.aclose()
        await proxy.close()
