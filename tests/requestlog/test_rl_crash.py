"""The request log survives ``kill -9`` of a gateway process under load (write-ahead log).

A real gateway process (Postgres, the fake provider) answers a mix of plain and streamed requests;
it is killed with SIGKILL halfway through 300 of them, while the database writer lags behind on
purpose (``batch_max_ms`` of three seconds), then started again on the same spool directory. Every
request whose complete response reached the client must then have exactly one row
(``durability: always``); with ``batch`` only rows answered within the commit window before the
kill may be missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from requestlog.urls import to_sync_url
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayProcess

TOTAL, KILL_AFTER, CONCURRENCY = 300, 150, 24


@pytest.fixture()
def fake_provider() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as fp:
        yield fp


async def _load(base_url: str, gw: GatewayProcess) -> tuple[dict[str, float], float]:
    """Send TOTAL requests; kill the gateway once KILL_AFTER have completed. Returns the request ids
    whose complete response arrived, with the time it did, and the time of the kill."""
    done: dict[str, float] = {}
    killed_at = 0.0
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal killed_at
        stream = i % 2 == 1
        body = {
            "model": "fake-model",
            "messages": [{"role": "user", "content": f"crash test {i}"}],
            "max_tokens": 8,
            "stream": stream,
        }
        async with sem:
            if killed_at:
                return
            try:
                async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r:
                    data = await r.aread()
                    complete = r.status_code == 200 and (not stream or data.rstrip().endswith(b"[DONE]"))
                    if complete:
                        done[r.headers["x-request-id"]] = time.monotonic()
            except httpx.HTTPError:
                return
        if len(done) >= KILL_AFTER and not killed_at:
            killed_at = time.monotonic()
            gw.kill()

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(one(i, client) for i in range(TOTAL)))
    return done, killed_at


def _rows(url: str) -> dict[str, int]:
    engine = sa.create_engine(to_sync_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, count(*) FROM requests GROUP BY id")).all()
    finally:
        engine.dispose()
    return {r[0]: r[1] for r in rows}


def _crash_and_restart(
    fake_provider: FakeProviderThread, url: str, tmp_path: Path, durability: str, commit_ms: float
) -> tuple[dict[str, float], float, dict[str, int]]:
    upgrade(url)
    settings = gateway_settings(
        fake_provider.base_url,
        url,
        tmp_path,
        log={
            "bodies": "hashed",
            "spool_dir": str(tmp_path / "spool"),
            "batch_max_ms": 3000,
            "durability": durability,
            "wal_commit_ms": commit_ms,
        },
    )
    gw = GatewayProcess(settings, tmp_path, name="first").start()
    try:
        done, killed_at = asyncio.run(_load(gw.base_url, gw))
    finally:
        gw.kill()
    assert len(done) >= KILL_AFTER
    rows_before = _rows(url)
    assert set(done) - set(rows_before), "the kill should have caught rows not yet in the database"
    with GatewayProcess(settings, tmp_path, name="second"):  # replays the dead process's WAL at start
        deadline = time.monotonic() + 20
        rows, still = _rows(url), 0
        while set(done) - set(rows) and still < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
            again = _rows(url)
            still = still + 1 if len(again) == len(rows) else 0  # settled: nothing more to replay
            rows = again
        time.sleep(0.5)  # let any late replay land before counting
        rows = _rows(url)
    return done, killed_at, rows


@pytest.mark.timeout(90)
def test_kill_9_under_load_loses_no_answered_request_with_durability_always(
    fake_provider: FakeProviderThread, fresh_pg_url: str, tmp_path: Path
) -> None:
    done, _, rows = _crash_and_restart(fake_provider, fresh_pg_url, tmp_path, "always", 2.0)
    missing = set(done) - set(rows)
    assert not missing, f"{len(missing)} of {len(done)} answered requests have no row"
    assert all(rows[rid] == 1 for rid in done)


@pytest.mark.timeout(90)
def test_kill_9_under_load_loses_at_most_the_commit_window_with_durability_batch(
    fake_provider: FakeProviderThread, fresh_pg_url: str, tmp_path: Path
) -> None:
    window_ms = 20.0
    done, killed_at, rows = _crash_and_restart(fake_provider, fresh_pg_url, tmp_path, "batch", window_ms)
    missing = set(done) - set(rows)
    # The client sees a response a little after the gateway recorded it; a lost row must have been
    # answered within the commit window (plus the fsync and scheduling slack of a busy machine).
    slack_s = 0.25
    late = sorted(killed_at - done[rid] for rid in missing)
    assert all(age <= window_ms / 1000 + slack_s for age in late), (
        f"lost rows answered {late} s before the kill"
    )
    assert len(missing) < len(done) // 4
