"""LogSink against real PostgreSQL and SQLite: values, idempotency, spool, replay, shutdown."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from requestlog import migrate, tables
from requestlog.sink import LogSink
from tests.support.requestlog import T0, dead_pg_url, fetch, make_request, scalar

REPO = Path(__file__).resolve().parents[2]

FAST = dict(batch_max_rows=50, batch_max_ms=10, probe_initial_s=0.05, probe_max_s=0.2, close_timeout_s=5)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def _count(url: str, table: str, prefix: str) -> int:
    return await scalar(url, f"SELECT count(*) FROM {table} WHERE id LIKE :p", p=f"{prefix}%")


async def test_record_flush_values(log_url: str, spool_dir: Path) -> None:
    p = _prefix()
    sink = LogSink(log_url, spool_dir=spool_dir, **FAST)
    await sink.start()
    sink.record(*make_request(f"{p}-full", 3))
    plus5 = timezone(timedelta(hours=5))
    sink.record(
        *make_request(
            f"{p}-min",
            0,
            created_at=datetime(2025, 6, 1, 17, 30, tzinfo=plus5),
            endpoint="embedding",
            status="error",
            http_status=502,
            error_type="upstream_error",
            error_message="all deployments failed",
            prompt_tokens=None,
            completion_tokens=None,
            cost_usd=None,
            streamed=False,
            metadata=None,
            api_key_id=None,
        )
    )
    sink.record(*make_request(f"{p}-naive", 1, created_at=datetime(2025, 1, 1, 8, 0)))  # naive = UTC
    await sink.flush()
    assert sink.stats()["written"] == 3
    await sink.aclose()

    req, att = tables.requests, tables.attempts
    [full] = await fetch(log_url, sa.select(req).where(req.c.id == f"{p}-full"))
    assert full.created_at == T0 and full.created_at.tzinfo is not None
    assert (full.prompt_tokens, full.completion_tokens, full.attempts_count) == (12, 34, 3)
    assert full.cost_usd == pytest.approx(0.000123, rel=1e-12)
    assert full.latency_ms == 456.5 and full.ttft_ms == 120.25 and full.propensity == 0.25
    assert full.streamed is True
    assert full.user == "alice" and full.policy_version == 3 and full.http_status == 200
    assert full.metadata == {"tags": ["a", "b"], "nested": {"k": 1.5}, "unicode": "héllo ✓"}

    [minimal] = await fetch(log_url, sa.select(req).where(req.c.id == f"{p}-min"))
    assert minimal.created_at == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    assert minimal.status == "error" and minimal.http_status == 502 and minimal.error_type == "upstream_error"
    assert minimal.prompt_tokens is None and minimal.cost_usd is None and minimal.api_key_id is None
    assert minimal.metadata is None  # SQL NULL, not JSON 'null'
    assert (
        await scalar(
            log_url, "SELECT count(*) FROM requests WHERE id = :i AND metadata IS NULL", i=f"{p}-min"
        )
        == 1
    )

    [naive] = await fetch(log_url, sa.select(req.c.created_at).where(req.c.id == f"{p}-naive"))
    assert naive.created_at == datetime(2025, 1, 1, 8, 0, tzinfo=UTC)

    atts = await fetch(
        log_url, sa.select(att).where(att.c.request_id == f"{p}-full").order_by(att.c.attempt_no)
    )
    assert [a.attempt_no for a in atts] == [0, 1, 2]
    assert [a.status for a in atts] == ["error", "error", "ok"]
    assert atts[2].started_at == T0 + timedelta(milliseconds=20)
    assert atts[2].cost_usd == pytest.approx(0.000123) and atts[0].cost_usd is None
    assert atts[0].http_status == 503 and atts[0].error_type == "upstream_unavailable"


async def test_duplicate_ids_are_written_once(log_url: str, spool_dir: Path) -> None:
    p = _prefix()
    sink = LogSink(log_url, spool_dir=spool_dir, **FAST)
    await sink.start()
    for _ in range(3):  # same batch
        sink.record(*make_request(f"{p}-dup", 2))
    await sink.flush()
    sink.record(*make_request(f"{p}-dup", 2, prompt_tokens=999))  # later batch: first write wins
    await sink.flush()
    await sink.aclose()
    assert await _count(log_url, "requests", p) == 1
    assert await _count(log_url, "attempts", p) == 2
    assert await scalar(log_url, "SELECT prompt_tokens FROM requests WHERE id = :i", i=f"{p}-dup") == 12


async def test_record_only_queues_and_never_raises(log_url: str, spool_dir: Path) -> None:
    """record() on the request path only queues (no database or disk write happens inside it: what it
    costs is measured in bench/, see RESULTS.md "Request log durability"); garbage is set aside."""
    p = _prefix()
    sink = LogSink(log_url, spool_dir=spool_dir, batch_max_rows=10_000, batch_max_ms=1000)
    rows = [make_request(f"{p}-{i}", 1 + i % 3) for i in range(5000)]
    sink.record(*rows[0])  # before start(): queued, written after start
    await sink.start()
    written = sink.stats()["written"]
    for row in rows[1:]:
        sink.record(*row)
    after = sink.stats()
    assert after["written"] == written and after["queued"] >= len(rows) - 1
    sink.record(None, None)  # type: ignore[arg-type]  # garbage in: no exception on the request path
    await sink.flush()
    await sink.aclose()
    assert await _count(log_url, "requests", p) == 5000
    assert sink.stats()["rejected"] == 1  # the garbage entry, set aside, did not block the rest


async def test_bad_records_are_isolated_not_blocking(log_url: str, spool_dir: Path) -> None:
    p = _prefix()
    sink = LogSink(log_url, spool_dir=spool_dir, **FAST)
    await sink.start()
    for i in range(20):
        sink.record(*make_request(f"{p}-ok-{i}", 1))
    sink.record(*make_request(f"{p}-nul", 1, response_body="a\x00b"))  # Postgres text cannot hold NUL
    sink.record(*make_request(f"{p}-dt", 1, metadata={"at": datetime(2025, 1, 1, tzinfo=UTC)}))
    sink.record(*make_request(f"{p}-huge", 1, prompt_tokens=2**70))  # no database integer holds this
    await sink.flush()
    await sink.aclose()
    st = sink.stats()
    assert st["rejected"] == 1, st
    assert await _count(log_url, "requests", f"{p}-ok") == 20
    assert await _count(log_url, "requests", f"{p}-nul") == 1
    assert await _count(log_url, "requests", f"{p}-dt") == 1
    assert await _count(log_url, "requests", f"{p}-huge") == 0
    [line] = (spool_dir / "rejected.jsonl").read_text().splitlines()
    assert f"{p}-huge" in json.loads(line)["record"]


async def test_db_down_at_start_spools_then_replays(log_url: str, spool_dir: Path) -> None:
    """aclose() with the database down leaves everything in the spool; a later sink replays it."""
    p = _prefix()
    down = LogSink(dead_pg_url(), spool_dir=spool_dir, **FAST)
    await down.start()
    for i in range(120):
        down.record(*make_request(f"{p}-{i}", 1 + i % 3))
    await down.flush()
    st = down.stats()
    assert st["db_up"] is False and st["spooled"] == 120 and st["spooled_pending"] == 120
    down.record(*make_request(f"{p}-late", 1))
    await down.aclose()
    down.record(*make_request(f"{p}-after-close", 2))  # a straggler after shutdown: spooled too
    assert down.stats()["spooled"] == 122

    up = LogSink(log_url, spool_dir=spool_dir, **FAST)
    await up.start()
    await up.flush()
    st = up.stats()
    await up.aclose()
    assert st["replayed"] == 122 and st["spool_pending"] is False, st
    assert await _count(log_url, "requests", p) == 122
    assert await _count(log_url, "attempts", p) == sum(1 + i % 3 for i in range(120)) + 1 + 2
    assert list(spool_dir.glob("seg-*")) == []


async def test_missing_tables_mean_unavailable_not_rejected(fresh_pg_url: str, spool_dir: Path) -> None:
    """An un-migrated database is an outage, not bad data: rows wait in the spool."""
    p = _prefix()
    sink = LogSink(fresh_pg_url, spool_dir=spool_dir, **FAST)
    await sink.start()
    for i in range(10):
        sink.record(*make_request(f"{p}-{i}", 1))
    await sink.flush()
    st = sink.stats()
    assert st["rejected"] == 0 and st["spooled"] == 10 and st["db_up"] is False, st
    await migrate.upgrade_async(fresh_pg_url)
    await sink.flush()
    await sink.aclose()
    assert await _count(fresh_pg_url, "requests", p) == 10


async def test_memory_is_bounded_by_spilling(log_url: str, spool_dir: Path) -> None:
    p = _prefix()
    sink = LogSink(dead_pg_url(), spool_dir=spool_dir, max_queue=100, **{**FAST, "batch_max_ms": 1000})
    await sink.start()
    peak = 0
    for i in range(1000):
        sink.record(*make_request(f"{p}-{i}", 1))
        peak = max(peak, sink.stats()["queued"])
        if i % 50 == 0:
            await asyncio.sleep(0)
    await sink.flush()
    await sink.aclose()
    assert sink.stats()["spooled"] == 1000 and sink.stats()["dropped"] == 0

    replay = LogSink(log_url, spool_dir=spool_dir, **FAST)
    await replay.start()
    await replay.flush()
    await replay.aclose()
    assert await _count(log_url, "requests", p) == 1000


CRASHING_SINK = """
import asyncio, os, signal, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {here!r})
from tests.support.requestlog import make_request
from requestlog.sink import LogSink

async def main():
    sink = LogSink({url!r}, spool_dir={spool!r}, batch_max_rows=20, batch_max_ms=5)
    await sink.start()
    for i in range({n}):
        sink.record(*make_request(f"{prefix}-{{i}}", 2))
    await sink.flush()  # database down: everything fsync'd into the spool
    os.kill(os.getpid(), signal.SIGKILL)  # crash: no aclose, spool segment left open and locked

asyncio.run(main())
"""


async def test_spool_of_a_crashed_process_is_replayed_on_start(log_url: str, spool_dir: Path) -> None:
    p = _prefix()
    code = CRASHING_SINK.format(
        repo=str(REPO),
        here=str(Path(__file__).parent),
        url=dead_pg_url(),
        spool=str(spool_dir),
        n=150,
        prefix=p,
    )
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert list(spool_dir.glob("seg-*.jsonl"))

    sink = LogSink(log_url, spool_dir=spool_dir, **FAST)
    await sink.start()
    await sink.flush()
    await sink.aclose()
    assert sink.stats()["replayed"] == 150
    assert await _count(log_url, "requests", p) == 150
    assert await _count(log_url, "attempts", p) == 300
    assert list(spool_dir.glob("seg-*")) == []


async def test_stats_shape(log_url: str, spool_dir: Path) -> None:
    sink = LogSink(log_url, spool_dir=spool_dir, **FAST)
    assert await sink.ping() is False  # not started
    await sink.start()
    assert await sink.ping() is True
    st = sink.stats()
    assert {
        "queued",
        "written",
        "spooled",
        "replayed",
        "db_up",
        "rejected",
        "dropped",
        "spooled_pending",
    } <= set(st)
    assert st["db_up"] is True
    await sink.aclose()
    await sink.aclose()  # idempotent
    await sink.flush()  # no-op once closed


async def test_backlog_beyond_max_queue_goes_through_the_spool_when_db_is_up(
    log_url: str, spool_dir: Path
) -> None:
    """A database slower than the traffic must not grow memory without bound."""
    p = _prefix()
    sink = LogSink(log_url, spool_dir=spool_dir, max_queue=100, **{**FAST, "batch_max_rows": 20})
    await sink.start()
    for i in range(1000):  # a burst without yielding: 10x max_queue
        sink.record(*make_request(f"{p}-{i}", 1))
    await sink.flush()
    st = sink.stats()
    await sink.aclose()
    assert st["spooled"] > 0 and st["replayed"] == st["spooled"] and st["spool_pending"] is False, st
    assert await _count(log_url, "requests", p) == 1000


async def test_record_from_other_threads(log_url: str, spool_dir: Path) -> None:
    p = _prefix()
    sink = LogSink(log_url, spool_dir=spool_dir, **FAST)
    await sink.start()

    def produce(t: int) -> None:
        for i in range(200):
            sink.record(*make_request(f"{p}-{t}-{i}", 1))

    await asyncio.gather(*(asyncio.to_thread(produce, t) for t in range(4)))
    await sink.flush()
    await sink.aclose()
    assert await _count(log_url, "requests", p) == 800


async def test_read_only_database_is_an_outage_not_bad_data(fresh_pg_url: str, spool_dir: Path) -> None:
    """A database that refuses writes as a whole (a failover left the URL on a standby, or
    ``default_transaction_read_only``) while ``SELECT 1`` still answers: the rows wait in the spool and
    reach the database once it takes writes again, instead of being set aside as rejected."""
    from tests.support.db import admin_execute

    await migrate.upgrade_async(fresh_pg_url)
    name = fresh_pg_url.rsplit("/", 1)[1]
    p = _prefix()
    admin_execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    sink = LogSink(fresh_pg_url, spool_dir=spool_dir, **FAST)
    try:
        await sink.start()
        for i in range(10):
            sink.record(*make_request(f"{p}-{i}", 2))
        await sink.flush()
        st = sink.stats()
        assert st["rejected"] == 0 and st["spooled"] == 10 and st["db_up"] is False, st
        assert not (spool_dir / "rejected.jsonl").exists()
    finally:
        admin_execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    await sink.flush()
    await sink.aclose()
    assert await _count(fresh_pg_url, "requests", p) == 10
    assert await _count(fresh_pg_url, "attempts", p) == 20
