"""Rollups kept by the log tables' triggers agree with the raw rows, on Postgres and SQLite, and
never count a re-sent row twice."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from requestlog import tables
from requestlog.migrate import downgrade, upgrade_async
from requestlog.rollups import BIN_RATIO, aggregate, floor_hour, quantile, spans
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


def test_spans_read_whole_days_from_day_tables_whole_hours_from_hour_tables_and_edges_raw() -> None:
    """A range is read exactly, not widened to whole hours: its partial hours come from the log rows."""
    since = datetime(2026, 11, 1, 13, 20, tzinfo=UTC)
    until = datetime(2026, 11, 4, 2, 5, tzinfo=UTC)

    def got(a: datetime, b: datetime, days: bool = True) -> list[tuple[str, str, str]]:
        return [(s.grain, s.since.isoformat()[5:16], s.until.isoformat()[5:16]) for s in spans(a, b, days=days)]

    assert got(since, until) == [
        ("day", "11-02T00:00", "11-04T00:00"),
        ("hour", "11-01T14:00", "11-02T00:00"),
        ("hour", "11-04T00:00", "11-04T02:00"),
        ("raw", "11-01T13:20", "11-01T14:00"),
        ("raw", "11-04T02:00", "11-04T02:05"),
    ]
    assert got(since, since + timedelta(hours=5)) == [
        ("hour", "11-01T14:00", "11-01T18:00"), ("raw", "11-01T13:20", "11-01T14:00"),
        ("raw", "11-01T18:00", "11-01T18:20")]
    assert got(since, since + timedelta(minutes=90)) == [("raw", "11-01T13:20", "11-01T14:00"),
                                                         ("raw", "11-01T14:00", "11-01T14:50")]
    assert got(since, since + timedelta(minutes=10)) == [("raw", "11-01T13:20", "11-01T13:30")]
    hours = datetime(2026, 11, 1, 13, tzinfo=UTC)
    assert got(hours, hours + timedelta(days=3), days=False) == [("hour", "11-01T13:00", "11-04T13:00")]
    assert got(until, since) == []


def _unserved(rows: list[tuple[RequestRow, list[AttemptRow]]]) -> list[tuple[RequestRow, list[AttemptRow]]]:
    """Every fifth request as one nothing served: each attempt failed, the row names the policy asked for."""
    out = []
    for i, (r, atts) in enumerate(rows):
        if i % 5 == 0:
            r = replace(r, served_model=None, requested_model="asked-policy", status="error")
            atts = [replace(a, status="error") for a in atts]
        out.append((r, atts))
    return out


def _bin(ms: float) -> int:
    return math.floor(math.log(max(ms, 0.01)) / math.log(BIN_RATIO))


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
async def test_a_range_that_starts_and_ends_mid_hour_counts_exactly_its_rows(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Rollups are hourly, but a range is read exactly: rows of its partial first and last hours before
    `since` or from `until` on are left out (they were counted when ranges were widened to whole hours),
    in every family, grouped, filtered and per hourly bucket. Requests nothing served count as none
    served (model ''), not under the policy the client asked for."""
    url = request.getfixturevalue("fresh_pg_url") if dialect == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    await upgrade_async(url)
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    since = floor_hour(now - timedelta(days=2)) + timedelta(minutes=17, seconds=13.5)
    until = floor_hour(now - timedelta(hours=3)) + timedelta(minutes=41)
    rows = _unserved(_rows(400, now, seed=11))
    # rows right at and around both ends of the range
    for i, t in enumerate(
        [since - timedelta(microseconds=1), since, since + timedelta(seconds=1), until - timedelta(microseconds=1),
         until, until + timedelta(seconds=1), floor_hour(since), floor_hour(until)]
    ):
        r, atts = rows[i]
        rows.append((replace(r, id=f"edge{i}", created_at=t),
                     [replace(a, id=f"edge{i}-{a.attempt_no}", request_id=f"edge{i}", started_at=t) for a in atts]))
    scores = {r.id: (hash(r.id) % 100) / 100 for r, _ in rows[::3]}
    try:
        await _insert_as_of_schema(engine, rows)
        async with engine.begin() as conn:
            await conn.execute(sa.insert(tables.feedback), [
                {"id": f"fb-{rid}", "request_id": rid, "source": "user", "score": s, "created_at": now}
                for rid, s in scores.items()])
        inside = [(r, atts) for r, atts in rows if since <= r.created_at < until]
        assert 50 < len(inside) < len(rows)
        async with engine.connect() as conn:
            by_model = await aggregate(conn, "requests", since, until, ["model"], ("requests", "errors", "cost_usd", "fb_n", "fb_sum"))
            hourly = await aggregate(conn, "requests", since, until, [], ("requests",), grain="hour")
            by_key = await aggregate(conn, "requests", since, until, ["policy"], ("requests",), {"api_key_id": "k1"})
            kinds = await aggregate(conn, "attempts", since, until, ["deployment", "kind", "status"], ("n",))
            hist = await aggregate(conn, "latency", since, until, ["deployment", "metric", "bin"], ("n",))
        want: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for r, _ in inside:
            w = want[r.served_model or ""]
            w["requests"] += 1
            w["errors"] += r.status != "ok"
            w["cost_usd"] += r.cost_usd or 0
            if r.id in scores:
                w["fb_n"] += 1
                w["fb_sum"] += scores[r.id]
        assert {g["model"] for g in by_model} == set(want) and "" in want and "asked-policy" not in want
        for g in by_model:
            for k, v in want[g["model"]].items():
                assert g[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (g["model"], k)
        per_hour: dict[datetime, int] = defaultdict(int)
        for r, _ in inside:
            per_hour[floor_hour(r.created_at)] += 1
        assert {g["bucket"]: g["requests"] for g in hourly} == per_hour
        keyed: dict[str, int] = defaultdict(int)
        for r, _ in inside:
            if r.api_key_id == "k1":
                keyed[r.policy or ""] += 1
        assert {g["policy"]: g["requests"] for g in by_key} == keyed
        tries = [a for _, atts in rows for a in atts if since <= a.started_at < until]
        want_kinds: dict[tuple[str, str, str], int] = defaultdict(int)
        want_hist: dict[tuple[str, str, int], int] = defaultdict(int)
        for a in tries:
            want_kinds[(a.deployment, "first" if a.attempt_no == 0 else "fallback", a.status)] += 1
            if a.status == "ok":
                want_hist[(a.deployment, "latency", _bin(a.latency_ms or 0))] += 1
                want_hist[(a.deployment, "ttft", _bin(a.ttft_ms or 0))] += 1
        assert {(g["deployment"], g["kind"], g["status"]): g["n"] for g in kinds} == want_kinds
        assert {(g["deployment"], g["metric"], g["bin"]): g["n"] for g in hist} == want_hist
    finally:
        await engine.dispose()


async def _rollup_models(url: str) -> dict[tuple[str, str], tuple[int, int, float]]:
    """Per (grain, model): requests, feedback count and feedback sum in the hour and day rollups."""
    engine = create_async_engine(url)
    try:
        out = {}
        async with engine.connect() as conn:
            for grain in ("hour", "day"):
                t = tables.metadata.tables[f"rollup_requests_{grain}"]
                stmt = sa.select(t.c.model, sa.func.sum(t.c.requests), sa.func.sum(t.c.fb_n), sa.func.sum(t.c.fb_sum))
                for model, n, fb_n, fb_sum in await conn.execute(stmt.group_by(t.c.model)):
                    out[(grain, model)] = (int(n), int(fb_n), round(float(fb_sum), 9))
        return out
    finally:
        await engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
async def test_the_migration_moves_requests_nothing_served_to_none_served_and_back(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Rows logged while the rollups counted a failed request under the model asked for are moved to
    none served (''), their feedback with them, by the upgrade, and back by the downgrade; the triggers
    then count new rows the same way. Served models' counts do not change."""
    url = request.getfixturevalue("fresh_pg_url") if dialect == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade_async(url, "0010_chosen_arm")
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    rows = _unserved(_rows(60, now, seed=5))
    # a served request of a model named like the policy asked for: its counts stay where they are
    rows.append((replace(rows[1][0], id="named", served_model="asked-policy"), []))
    try:
        await _insert_as_of_schema(engine, rows)
        async with engine.begin() as conn:
            await conn.execute(sa.insert(tables.feedback), [
                {"id": f"fb-{r.id}", "request_id": r.id, "source": "user", "score": 0.25, "created_at": now}
                for r, _ in rows[::2]])
    finally:
        await engine.dispose()
    unserved = [r for r, _ in rows if r.served_model is None]
    fb = sum(1 for r, _ in rows[::2] if r.served_model is None)
    before = await _rollup_models(url)
    assert before[("hour", "asked-policy")][0] == len(unserved) + 1 and ("hour", "") not in before
    await upgrade_async(url)
    after = await _rollup_models(url)
    for grain in ("hour", "day"):
        assert after[(grain, "")] == (len(unserved), fb, round(0.25 * fb, 9))
        assert after[(grain, "asked-policy")][0] == 1
        for model in ("m1", "m2", "m3"):
            assert after[(grain, model)] == before[(grain, model)]
    assert sum(v[0] for v in after.values()) == sum(v[0] for v in before.values())
    await asyncio.to_thread(downgrade, url, "0010_chosen_arm")
    assert await _rollup_models(url) == before
    await upgrade_async(url)
    assert await _rollup_models(url) == after
    engine = create_async_engine(url)
    try:
        await _insert_as_of_schema(engine, [(replace(unserved[0], id="late"), [])])
    finally:
        await engine.dispose()
    assert (await _rollup_models(url))[("hour", "")][0] == len(unserved) + 1
