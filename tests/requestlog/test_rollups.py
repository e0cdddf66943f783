"""Rollups kept by the log tables' triggers agree with the raw rows, on Postgres and SQLite, and
never count a re-sent row twice."""

from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from requestlog import tables
from requestlog.migrate import upgrade_async
from requestlog.rollups import BIN_RATIO, aggregate, quantile, spans
from requestlog.rows import AttemptRow, RequestRow
from requestlog.sink import LogSink
from requestlog.sql import dialect_insert


def _rows(n: int, now: datetime, seed: int = 3) -> list[tuple[RequestRow, list[AttemptRow]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = now - timedelta(seconds=rng.uniform(60, 4 * 86400))
        deps = rng.sample(["d1", "d2", "d3"], k=rng.choice([1, 1, 2, 3]))
        atts = [
            AttemptRow(
                id=f"q{i}-{k}",
                request_id=f"q{i}",
                attempt_no=k,
                deployment=d,
                provider="p",
                upstream_model="m",
                started_at=t,
                latency_ms=math.exp(rng.gauss(5, 0.7)),
                ttft_ms=rng.uniform(5, 50),
                status="ok" if k == len(deps) - 1 else "error",
                cost_usd=0.001 * (k + 1),
            )
            for k, d in enumerate(deps)
        ]
        out.append(
            (
                RequestRow(
                    id=f"q{i}",
                    created_at=t,
                    endpoint="chat",
                    api_key_id=f"k{i % 4}",
                    team=f"t{i % 2}",
                    policy=["p1", "p2", None][i % 3],
                    served_model={"d1": "m1", "d2": "m2", "d3": "m3"}[deps[-1]],
                    status=rng.choice(["ok", "ok", "ok", "error"]),
                    cost_usd=rng.uniform(0, 0.01),
                    latency_ms=rng.uniform(10, 900),
                ),
                atts,
            )
        )
    return out


async def _insert_as_of_schema(engine: AsyncEngine, rows: list[tuple[RequestRow, list[AttemptRow]]]) -> None:
    """Rows as the gateway of the database's schema wrote them: only the columns its tables have (today's
    sink also writes columns added by later migrations), idempotently (re-sent rows are skipped)."""
    async with engine.begin() as conn:
        have = await conn.run_sync(
            lambda c: {t: {col["name"] for col in sa.inspect(c).get_columns(t)} for t in ("requests", "attempts")}
        )
        for table, values in (
            (tables.requests, [r.as_dict() for r, _ in rows]),
            (tables.attempts, [a.as_dict() for _, atts in rows for a in atts]),
        ):
            cols = have[table.name]
            old = sa.Table(table.name, sa.MetaData(), *(sa.Column(c.name, c.type) for c in table.columns if c.name in cols))
            for v in values:
                stmt = dialect_insert(old, engine.dialect.name).values({k: x for k, x in v.items() if k in cols})
                await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))


async def _check(url: str, tmp_path: Path, backfill: bool = False) -> None:
    """Rows written with the triggers in place, or (``backfill``) before the rollup migration ran
    (0004), then counted by the migration's backfill."""
    await upgrade_async(url, "0004_spend_indexes" if backfill else "head")
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    rows = _rows(300, now)
    fb_ids = [r.id for r, _ in rows[::2]]
    fb = [
        {
            "id": uuid.uuid4().hex,
            "request_id": rid,
            "source": "user",
            "score": (hash(rid) % 100) / 100,
            "created_at": now,
        }
        for rid in fb_ids
    ]
    try:
        async with engine.begin() as conn:  # some feedback arrives before its request is written
            await conn.execute(sa.insert(tables.feedback), fb[:40])
        if backfill:
            await _insert_as_of_schema(engine, rows + rows[:50])
        else:
            sink = LogSink(url, spool_dir=tmp_path / "spool", batch_max_ms=5, batch_max_rows=64)
            await sink.start()
            for r, a in rows:
                sink.record(r, a)
            for r, a in rows[:50]:  # re-sent rows (a replayed spool) are not counted again
                sink.record(r, a)
            await sink.aclose()
        async with engine.begin() as conn:
            await conn.execute(sa.insert(tables.feedback), fb[40:])
        if backfill:
            await upgrade_async(url)

        async with engine.connect() as conn:
            got = await aggregate(
                conn,
                "requests",
                now - timedelta(days=5),
                now,
                ["model"],
                ("requests", "errors", "cost_usd", "fb_n", "fb_sum"),
            )
            lat = await aggregate(
                conn, "latency", now - timedelta(days=5), now, ["deployment", "metric", "bin"], ("n",)
            )
            att = await aggregate(
                conn, "attempts", now - timedelta(days=5), now, ["deployment", "kind"], ("n",)
            )
        by_model = {g["model"]: g for g in got}
        scores = {f["request_id"]: f["score"] for f in fb}
        want: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for r, _ in rows:
            w = want[r.served_model]
            w["requests"] += 1
            w["errors"] += r.status != "ok"
            w["cost_usd"] += r.cost_usd
            if r.id in scores:
                w["fb_n"] += 1
                w["fb_sum"] += scores[r.id]
        assert set(by_model) == set(want)
        for m, w in want.items():
            for k, v in w.items():
                assert by_model[m][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (m, k)
        # latency p95 per deployment: the exact nearest-rank value lies in the reported bin
        for dep in ("d1", "d2", "d3"):
            xs = sorted(
                a.latency_ms for _, atts in rows for a in atts if a.deployment == dep and a.status == "ok"
            )
            exact = xs[math.ceil(0.95 * len(xs)) - 1]
            hist = {x["bin"]: x["n"] for x in lat if x["deployment"] == dep and x["metric"] == "latency"}
            assert sum(hist.values()) == len(xs)
            top = quantile(hist, 0.95)
            assert top is not None and exact <= top * (1 + 1e-9) and top <= exact * BIN_RATIO * (1 + 1e-9)
        kinds: dict[str, int] = defaultdict(int)
        for _, atts in rows:
            for a in atts:
                kinds["first" if a.attempt_no == 0 else "fallback"] += 1  # earlier tries all failed elsewhere
        got_kinds: dict[str, int] = defaultdict(int)
        for x in att:
            got_kinds[x["kind"]] += x["n"]
        assert dict(got_kinds) == dict(kinds)
    finally:
        await engine.dispose()


async def test_rollups_match_raw_rows_on_postgres(fresh_pg_url: str, tmp_path: Path) -> None:
    await _check(fresh_pg_url, tmp_path)


async def test_rollups_match_raw_rows_on_sqlite(tmp_path: Path) -> None:
    await _check(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", tmp_path)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
async def test_migration_counts_rows_logged_before_it(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("fresh_pg_url")
        if dialect == "postgresql"
        else f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    )
    await _check(url, tmp_path, backfill=True)


def test_spans_read_whole_days_from_day_tables_and_edges_from_hours() -> None:
    since = datetime(2026, 11, 1, 13, 20, tzinfo=UTC)
    until = datetime(2026, 11, 4, 2, 5, tzinfo=UTC)
    got = [(s.grain, s.since.isoformat(), s.until.isoformat()) for s in spans(since, until)]
    assert got == [
        ("day", "2026-11-02T00:00:00+00:00", "2026-11-04T00:00:00+00:00"),
        ("hour", "2026-11-01T13:00:00+00:00", "2026-11-02T00:00:00+00:00"),
        ("hour", "2026-11-04T00:00:00+00:00", "2026-11-04T03:00:00+00:00"),
    ]
    assert [s.grain for s in spans(since, since + timedelta(hours=5))] == ["hour"]
