"""Log retention deletes old requests with their attempts and feedback, batch by batch, and keeps
everything newer; from the CLI, and in the background of a gateway with `log.retention_days`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway import cli
from requestlog import migrate
from requestlog.retention import prune
from requestlog.tables import attempts, feedback, requests
from tests.support.db import migrated_sqlite_url
from tests.support.wait import wait_until

NOW = datetime.now(UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_log(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return migrated_sqlite_url(request.getfixturevalue("sqlite_template"), tmp_path / "retention.db")
    url = request.getfixturevalue("fresh_pg_url")
    migrate.upgrade(url)
    return url


async def _fill(url: str, ages_days: list[float]) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for i, age in enumerate(ages_days):
                at = NOW - timedelta(days=age)
                await conn.execute(sa.insert(requests).values(id=f"r{i}", created_at=at, endpoint="chat"))
                for n in range(2):
                    await conn.execute(sa.insert(attempts).values(
                        id=f"r{i}-{n}", request_id=f"r{i}", attempt_no=n, deployment="d", provider="p",
                        upstream_model="m", started_at=at))
                await conn.execute(sa.insert(feedback).values(
                    id=f"f{i}", request_id=f"r{i}", source="api", score=1.0, created_at=at))
    finally:
        await engine.dispose()


async def _ids(url: str) -> tuple[set[str], int, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            ids = set((await conn.execute(sa.select(requests.c.id))).scalars())
            n_att = (await conn.execute(sa.select(sa.func.count()).select_from(attempts))).scalar()
            n_fb = (await conn.execute(sa.select(sa.func.count()).select_from(feedback))).scalar()
    finally:
        await engine.dispose()
    return ids, int(n_att or 0), int(n_fb or 0)


async def test_prune_deletes_old_requests_with_their_attempts_and_feedback_in_batches(empty_log: str) -> None:
    await _fill(empty_log, [40, 35, 31, 29, 1, 0])
    engine = create_async_engine(empty_log)
    try:
        pruned = await prune(engine, NOW - timedelta(days=30), batch=2)  # three old rows: two batches
        again = await prune(engine, NOW - timedelta(days=30), batch=2)
    finally:
        await engine.dispose()
    assert pruned.as_dict() == {"requests": 3, "attempts": 6, "feedback": 3}
    assert again.as_dict() == {"requests": 0, "attempts": 0, "feedback": 0}
    assert await _ids(empty_log) == ({"r3", "r4", "r5"}, 6, 3)


async def test_prune_refuses_a_naive_cutoff(empty_log: str) -> None:
    engine = create_async_engine(empty_log)
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            await prune(engine, datetime(2020, 1, 1))
    finally:
        await engine.dispose()


async def test_cli_prune_uses_days_or_the_configured_retention(
    tmp_path: Path, sqlite_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = migrated_sqlite_url(sqlite_template, tmp_path / "cli.db")
    await _fill(url, [10, 3, 0])
    cfg = tmp_path / "hg.yaml"
    cfg.write_text(f"database_url: {url}\nlog: {{retention_days: 5}}\n")

    async def hybridgate_prune(*args: str) -> tuple[int, str]:
        """`hybridgate prune`, run in this process (on a thread: the command runs its own event loop)."""
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, ["--config", str(cfg), "prune", *args])
        return code, capsys.readouterr().out

    code, out = await hybridgate_prune()
    assert code == 0 and '"requests": 1' in out
    code, out = await hybridgate_prune("--days", "1")
    assert code == 0 and '"requests": 1' in out
    assert (await _ids(url))[0] == {"r2"}
    assert (await hybridgate_prune("--days", "0"))[0] == 2


def test_gateway_with_retention_prunes_in_the_background(tmp_path: Path, sqlite_template: Path) -> None:
    from tests.support.gateway import settings
    from tests.support.harness import running_gateway

    url = migrated_sqlite_url(sqlite_template, tmp_path / "gw.db")
    asyncio.run(_fill(url, [100, 0]))
    s = settings(tmp_path, url, [], log={"bodies": "none", "spool_dir": str(tmp_path / "spool"),
                                         "retention_days": 30})
    with running_gateway(s):
        wait_until(lambda: asyncio.run(_ids(url))[0] == {"r1"}, 10, what="the old request was never pruned", interval_s=0.1)
