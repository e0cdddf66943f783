"""A gateway warns at start when it shares a database with another process but not Redis."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from requestlog.migrate import upgrade
from state.instances import Heartbeat, warn_if_unshared_workers


def test_several_workers_without_redis_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hybridgate.state"):
        assert warn_if_unshared_workers(4, None)
        assert not warn_if_unshared_workers(4, "redis://127.0.0.1:6379/0")
        assert not warn_if_unshared_workers(1, None)
    assert sum("4 worker processes" in r.getMessage() for r in caplog.records) == 1


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
