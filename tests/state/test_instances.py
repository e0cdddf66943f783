"""A gateway warns at start when it shares a database with another process but not Redis."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from requestlog.migrate import upgrade
from state.instances import Heartbeat
from tests.support.requestlog import TcpProxy


def test_second_gateway_on_the_database_without_redis_warns_once(
    fresh_pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade(fresh_pg_url)

    async def scenario() -> tuple[int, int, int, bool]:
        engine = create_async_engine(fresh_pg_url)
        try:
            first = Heartbeat(engine, shared_state=False)
            alone = await first.beat()
            shared = Heartbeat(engine, shared_state=True)  # a process with Redis: no warning for it
            second = Heartbeat(engine, shared_state=False)
            seen_by_second = await second.beat()
            await shared.beat()
            seen_by_first = await first.beat()
            await first.beat()
            # a worker whose start already warned (several workers, no Redis) says nothing more
            sibling = Heartbeat(engine, shared_state=False, warned=True)
            assert await sibling.beat() == 3
            await sibling.leave()
            await second.leave()
            await shared.leave()
            return alone, seen_by_second, seen_by_first, shared.warned
        finally:
            await engine.dispose()

    with caplog.at_level(logging.WARNING, logger="hybridgate.state"):
        alone, seen_by_second, seen_by_first, shared_warned = asyncio.run(scenario())
    assert (alone, seen_by_second, seen_by_first, shared_warned) == (0, 1, 2, False)
    warnings = [r.getMessage() for r in caplog.records if "no redis_url" in r.getMessage()]
    assert len(warnings) == 2  # once per unshared process, however often it beats


async def test_heartbeat_gives_up_on_a_database_that_hangs(fresh_pg_url: str) -> None:
    """A database that accepts and never answers (the pooled connection's pre-ping hangs): beat() and
    leave() end after their timeout, so the heartbeat loop goes on and a stopping gateway reaches the
    request log's shutdown instead of waiting on the database for ever."""
    upgrade(fresh_pg_url)
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    engine = create_async_engine(proxy.url(fresh_pg_url.rsplit("/", 1)[1]), pool_pre_ping=True)
    try:
        hb = Heartbeat(engine, shared_state=True, timeout_s=0.5)
        assert await hb.beat() == 0  # a pooled connection now
        proxy.frozen = True
        for call in (hb.beat, hb.leave):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call(), 10.0)
            assert time.monotonic() - started < 3.0
    finally:
        proxy.frozen = False
        await proxy.close()
        await engine.dispose()
