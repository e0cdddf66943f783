"""The pub/sub liveness check blames Redis, not this process: a subscriber whose own event loop
stalls for longer than ``dead_after_s`` (CPU starvation, a long synchronous step) keeps a healthy
subscription, while a Redis that stops answering is still noticed (tests/routing/test_policy_events.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from state.policy_events import RedisPolicyEvents
from state.redis_util import make_redis
from tests.support.wait import await_until


async def test_a_stall_of_the_subscribers_own_loop_longer_than_dead_after_keeps_a_healthy_subscription(
    redis_url: str, redis_prefix: str
) -> None:
    client = make_redis(redis_url, timeout_s=5.0, connect_timeout_s=5.0)
    events = RedisPolicyEvents(
        client, channel=f"{redis_prefix}policies", ping_interval_s=0.1, dead_after_s=0.4
    )
    reloads = 0

    async def reload() -> None:
        nonlocal reloads
        reloads += 1

    stop = asyncio.Event()
    task = asyncio.create_task(events.run(reload, stop))
    try:
        await await_until(lambda: events.live, 5.0, "subscribed")
        await asyncio.sleep(0.3)  # a few answered PINGs
        time.sleep(0.8)  # the whole loop blocked for 2 × dead_after_s: nothing read, Redis answered meanwhile
        await asyncio.sleep(0.5)  # five ping intervals to read the replies waiting in the buffer
        assert events.live and events.subscriptions == 1 and reloads == 1
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await client.aclose()
