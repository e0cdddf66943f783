"""Hourly and daily aggregates of the request log, kept current by the database as rows arrive.

The writer inserts ``requests``, ``attempts`` and ``feedback`` rows; triggers on those tables add
each inserted row to the rollup tables (``requestlog/tables.py``: ``rollup_*_hour`` and
``rollup_*_day``) in the same transaction. Triggers fire only for rows really inserted, so the
writer's idempotent ``INSERT … ON CONFLICT DO NOTHING`` (spool replays, retries) never counts a
row twice, and a rolled-back batch rolls its rollup updates back with it. On Postgres the triggers
are per statement and read the statement's new rows as a transition table (one grouped upsert per
batch); on SQLite they are per row.

Feedback is counted with its request's time bucket and dimensions: the request trigger adds
feedback already stored for the new requests, the feedback trigger adds feedback whose request is
already stored, so each (request, feedback) pair is counted by whichever row arrives second.

Dashboards read a time range as whole days from the day tables plus the partial days at either end
from the hour tables (:func:`spans`): a 30-day range reads ~30 day buckets, never the raw rows.
Ranges are widened to whole hours. Latency and TTFT are kept as log-spaced histograms
(``BIN_RATIO`` wide), so their quantiles are exact to within one bin (:func:`quantile`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import tables

BIN_RATIO = 1.03
"""Successive latency histogram bins differ by 3%: a quantile is reported as its bin's upper edge."""

Grain = Literal["hour", "day"]
FAMILIES: dict[str, dict[Grain, sa.Table]] = {
    "requests": {"hour": tables.rollup_requests_hour, "day": tables.rollup_requests_day},
    "attempts": {"hour": tables.rollup_attempts_hour, "day": tables.rollup_attempts_day},
    "latency": {"hour": tables.rollup_latency_hour, "day": tables.rollup_latency_day},
}
REQUEST_DIMS = ("api_key_id", "user", "team", "policy", "model")
REQUEST_SUMS = (
    "requests",
    "errors",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms_sum",
    "latency_n",
    "fb_n",
    "fb_sum",
    "fb_sumsq",
)

# ---------------------------------------------------------------------------------------------- DDL

_REQ_COLS = 'bucket, api_key_id, "user", team, policy, model, ' + ", ".join(REQUEST_SUMS)
_REQ_KEY = 'bucket, api_key_id, "user", team, policy, model'


def _adds(cols: Iterable[str], table: str) -> str:
    return ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in cols)


def _pg_requests(grain: Grain) -> str:
    t = f"rollup_requests_{grain}"
    return f"""
    INSERT INTO {t} AS t ({_REQ_COLS})
    SELECT date_trunc('{grain}', n.created_at, 'UTC'), coalesce(n.api_key_id, ''), coalesce(n."user", ''),
           coalesce(n.team, ''), coalesce(n.policy, ''), coalesce(n.served_model, n.requested_model, ''),
           count(*), count(*) FILTER (WHERE n.status <> 'ok'), coalesce(sum(n.cost_usd), 0),
           coalesce(sum(n.prompt_tokens), 0), coalesce(sum(n.completion_tokens), 0),
           coalesce(sum(n.latency_ms), 0), count(n.latency_ms),
           coalesce(sum(f.n), 0), coalesce(sum(f.s), 0), coalesce(sum(f.ss), 0)
    FROM new_rows n
    LEFT JOIN (SELECT request_id, count(*) AS n, sum(score) AS s, sum(score * score) AS ss FROM feedback
               WHERE request_id IN (SELECT id FROM new_rows) GROUP BY request_id) f ON f.request_id = n.id
    GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(REQUEST_SUMS, "t")};"""


def _pg_feedback(grain: Grain) -> str:
    t = f"rollup_requests_{grain}"
    return f"""
    INSERT INTO {t} AS t ({_REQ_KEY}, fb_n, fb_sum, fb_sumsq)
    SELECT date_trunc('{grain}', r.created_at, 'UTC'), coalesce(r.api_key_id, ''), coalesce(r."user", ''),
           coalesce(r.team, ''), coalesce(r.policy, ''), coalesce(r.served_model, r.requested_model, ''),
           count(*), sum(f.score), sum(f.score * f.score)
    FROM new_rows f JOIN requests r ON r.id = f.request_id
    GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(("fb_n", "fb_sum", "fb_sumsq"), "t")};"""


_KIND_SQL = """CASE WHEN a.attempt_no = 0 THEN 'first'
                WHEN p.deployment IS NULL OR p.deployment = a.deployment THEN 'retry'
                WHEN p.status = 'ok' THEN 'escalation' ELSE 'fallback' END"""


# The previous try is looked up per retry row through the attempts(request_id) index: a join lets the
# planner scan the whole attempts table once per batch (transition tables carry no statistics).
_PG_KIND_SQL = """CASE WHEN a.attempt_no = 0 THEN 'first' ELSE coalesce((
        SELECT CASE WHEN p.deployment = a.deployment THEN 'retry' WHEN p.status = 'ok' THEN 'escalation'
                    ELSE 'fallback' END
        FROM attempts p WHERE p.request_id = a.request_id AND p.attempt_no = a.attempt_no - 1), 'retry') END"""


def _pg_attempts(grain: Grain) -> str:
    return f"""
    INSERT INTO rollup_attempts_{grain} AS t (bucket, deployment, kind, status, n, latency_ms_sum)
    SELECT date_trunc('{grain}', a.started_at, 'UTC'), a.deployment, {_PG_KIND_SQL}, a.status, count(*),
           coalesce(sum(a.latency_ms), 0)
    FROM new_rows a
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (bucket, deployment, kind, status) DO UPDATE SET {_adds(("n", "latency_ms_sum"), "t")};
    INSERT INTO rollup_latency_{grain} AS t (bucket, deployment, metric, bin, n)
    SELECT date_trunc('{grain}', a.started_at, 'UTC'), a.deployment, m.metric,
           floor(ln(greatest(m.v, 0.01)) / ln({BIN_RATIO}))::int, count(*)
    FROM new_rows a CROSS JOIN LATERAL (VALUES ('latency', a.latency_ms), ('ttft', a.ttft_ms)) AS m(metric, v)
    WHERE a.status = 'ok' AND m.v IS NOT NULL
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (bucket, deployment, metric, bin) DO UPDATE SET n = t.n + excluded.n;"""


def _pg_ddl() -> list[str]:
    out = []
    for table, body in (("requests", _pg_requests), ("feedback", _pg_feedback), ("attempts", _pg_attempts)):
        out.append(f"""CREATE OR REPLACE FUNCTION hg_rollup_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{body("hour")}{body("day")}
  RETURN NULL;
END $$""")
        out.append(
            f"CREATE TRIGGER hg_rollup_{table} AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION hg_rollup_{table}()"
        )
    return out


_SQLITE_FMT: dict[Grain, str] = {"hour": "%Y-%m-%d %H:00:00.000000", "day": "%Y-%m-%d 00:00:00.000000"}


def _lite_requests(grain: Grain) -> str:
    fb = "(SELECT {} FROM feedback WHERE request_id = NEW.id)"
    return f"""
  INSERT INTO rollup_requests_{grain} ({_REQ_COLS})
  VALUES (strftime('{_SQLITE_FMT[grain]}', NEW.created_at), coalesce(NEW.api_key_id, ''), coalesce(NEW."user", ''),
          coalesce(NEW.team, ''), coalesce(NEW.policy, ''), coalesce(NEW.served_model, NEW.requested_model, ''),
          1, NEW.status <> 'ok', coalesce(NEW.cost_usd, 0), coalesce(NEW.prompt_tokens, 0),
          coalesce(NEW.completion_tokens, 0), coalesce(NEW.latency_ms, 0), NEW.latency_ms IS NOT NULL,
          {fb.format("count(*)")}, {fb.format("coalesce(sum(score), 0)")},
          {fb.format("coalesce(sum(score * score), 0)")})
  ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(REQUEST_SUMS, f"rollup_requests_{grain}")};"""


def _lite_feedback(grain: Grain) -> str:
    return f"""
  INSERT INTO rollup_requests_{grain} ({_REQ_KEY}, fb_n, fb_sum, fb_sumsq)
  SELECT strftime('{_SQLITE_FMT[grain]}', r.created_at), coalesce(r.api_key_id, ''), coalesce(r."user", ''),
         coalesce(r.team, ''), coalesce(r.policy, ''), coalesce(r.served_model, r.requested_model, ''),
         1, NEW.score, NEW.score * NEW.score
  FROM requests r WHERE r.id = NEW.request_id
  ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(("fb_n", "fb_sum", "fb_sumsq"), f"rollup_requests_{grain}")};"""


def _lite_attempts(grain: Grain) -> str:
    fmt = _SQLITE_FMT[grain]
    kind = _KIND_SQL.replace("a.", "NEW.")
    prev = "(SELECT deployment, status FROM attempts WHERE request_id = NEW.request_id AND attempt_no = NEW.attempt_no - 1)"
    hist = f"""
  INSERT INTO rollup_latency_{grain} (bucket, deployment, metric, bin, n)
  SELECT strftime('{fmt}', NEW.started_at), NEW.deployment, '{{metric}}',
         CAST(floor(ln(max(NEW.{{col}}, 0.01)) / ln({BIN_RATIO})) AS INTEGER), 1
  WHERE NEW.status = 'ok' AND NEW.{{col}} IS NOT NULL
  ON CONFLICT (bucket, deployment, metric, bin) DO UPDATE SET n = rollup_latency_{grain}.n + excluded.n;"""
    return (
        f"""
  INSERT INTO rollup_attempts_{grain} (bucket, deployment, kind, status, n, latency_ms_sum)
  SELECT strftime('{fmt}', NEW.started_at), NEW.deployment, {kind}, NEW.status, 1, coalesce(NEW.latency_ms, 0)
  FROM (SELECT 1) LEFT JOIN {prev} AS p ON 1
  WHERE true
  ON CONFLICT (bucket, deployment, kind, status) DO UPDATE SET
    {_adds(("n", "latency_ms_sum"), f"rollup_attempts_{grain}")};"""
        + hist.format(metric="latency", col="latency_ms")
        + hist.format(metric="ttft", col="ttft_ms")
    )


def _sqlite_ddl() -> list[str]:
    return [
        f"CREATE TRIGGER hg_rollup_{table} AFTER INSERT ON {table} BEGIN{body('hour')}{body('day')}\nEND"
        for table, body in (
            ("requests", _lite_requests),
            ("feedback", _lite_feedback),
            ("attempts", _lite_attempts),
        )
    ]


def create_triggers_sql(dialect: str) -> list[str]:
    """Statements that install the rollup triggers (run by migration 0005)."""
    return _pg_ddl() if dialect == "postgresql" else _sqlite_ddl()


def drop_triggers_sql(dialect: str) -> list[str]:
    out = []
    for table in ("requests", "feedback", "attempts"):
        if dialect == "postgresql":
            out += [
                f"DROP TRIGGER IF EXISTS hg_rollup_{table} ON {table}",
                f"DROP FUNCTION IF EXISTS hg_rollup_{table}()",
            ]
        else:
            out.append(f"DROP TRIGGER IF EXISTS hg_rollup_{table}")
    return out


def backfill_sql(dialect: str) -> list[str]:
    """Statements that fill the (empty) rollups from rows logged before the triggers existed."""
    if dialect == "postgresql":
        return [
            "CREATE TEMP TABLE new_rows AS SELECT * FROM requests",
            _pg_requests("hour"),
            _pg_requests("day"),
            "DROP TABLE new_rows",
            "CREATE TEMP TABLE new_rows AS SELECT * FROM attempts",
            _pg_attempts("hour"),
            _pg_attempts("day"),
            "DROP TABLE new_rows",
        ]
    return [_lite_backfill_requests(g) for g in ("hour", "day")] + [
        stmt for g in ("hour", "day") for stmt in _lite_backfill_attempts(g)
    ]


def _lite_backfill_requests(grain: Grain) -> str:
    return f"""
    INSERT INTO rollup_requests_{grain} ({_REQ_COLS})
    SELECT strftime('{_SQLITE_FMT[grain]}', n.created_at), coalesce(n.api_key_id, ''), coalesce(n."user", ''),
           coalesce(n.team, ''), coalesce(n.policy, ''), coalesce(n.served_model, n.requested_model, ''),
           count(*), sum(n.status <> 'ok'), coalesce(sum(n.cost_usd), 0), coalesce(sum(n.prompt_tokens), 0),
           coalesce(sum(n.completion_tokens), 0), coalesce(sum(n.latency_ms), 0), count(n.latency_ms),
           coalesce(sum(f.n), 0), coalesce(sum(f.s), 0), coalesce(sum(f.ss), 0)
    FROM requests n
    LEFT JOIN (SELECT request_id, count(*) AS n, sum(score) AS s, sum(score * score) AS ss FROM feedback
               GROUP BY request_id) f ON f.request_id = n.id
    GROUP BY 1, 2, 3, 4, 5, 6"""


def _lite_backfill_attempts(grain: Grain) -> list[str]:
    fmt = _SQLITE_FMT[grain]
    hist = f"""
    INSERT INTO rollup_latency_{grain} (bucket, deployment, metric, bin, n)
    SELECT strftime('{fmt}', started_at), deployment, '{{metric}}',
           CAST(floor(ln(max({{col}}, 0.01)) / ln({BIN_RATIO})) AS INTEGER), count(*)
    FROM attempts WHERE status = 'ok' AND {{col}} IS NOT NULL GROUP BY 1, 2, 3, 4"""
    return [
        f"""
    INSERT INTO rollup_attempts_{grain} (bucket, deployment, kind, status, n, latency_ms_sum)
    SELECT strftime('{fmt}', a.started_at), a.deployment, {_KIND_SQL}, a.status, count(*), coalesce(sum(a.latency_ms), 0)
    FROM attempts a LEFT JOIN attempts p ON p.request_id = a.request_id AND p.attempt_no = a.attempt_no - 1
    GROUP BY 1, 2, 3, 4""",
        hist.format(metric="latency", col="latency_ms"),
        hist.format(metric="ttft", col="ttft_ms"),
    ]


# ---------------------------------------------------------------------------------------------- reads


@dataclass(frozen=True)
class Span:
    grain: Grain
    since: datetime
    until: datetime


def floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    f = floor_hour(t)
    return f if f == t.astimezone(UTC) else f + timedelta(hours=1)


def spans(since: datetime, until: datetime, *, days: bool = True) -> list[Span]:
    """The range [since, until) widened to whole hours, as whole days (day tables) and the partial
    days at either end (hour tables). ``days=False`` reads hour tables only (hourly time series)."""
    lo, hi = floor_hour(since), ceil_hour(until)
    if hi <= lo:
        return []
    d0 = lo.replace(hour=0) if lo.hour == 0 else lo.replace(hour=0) + timedelta(days=1)
    d1 = hi.replace(hour=0)
    if not days or d1 <= d0:
        return [Span("hour", lo, hi)]
    out = [Span("day", d0, d1)]
    if lo < d0:
        out.append(Span("hour", lo, d0))
    if d1 < hi:
        out.append(Span("hour", d1, hi))
    return out


def day_of(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def aggregate(
    conn: AsyncConnection,
    family: str,
    since: datetime,
    until: datetime,
    group: Sequence[str],
    sums: Sequence[str],
    where: dict[str, str | None] | None = None,
    grain: Grain | None = None,
) -> list[dict[str, Any]]:
    """Sums of ``sums`` per ``group`` (and per time bucket at ``grain`` when given, as ``bucket``)
    over [since, until), reading day tables for whole days; ``where`` filters dimensions by equality
    (None values are ignored)."""
    filt = {k: v for k, v in (where or {}).items() if v is not None}
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for span in spans(since, until, days=grain != "hour"):
        t = FAMILIES[family][span.grain]
        cols = [t.c[g] for g in group] + ([t.c.bucket] if grain else [])
        stmt = sa.select(*cols, *[sa.cast(sa.func.sum(t.c[s]), t.c[s].type).label(s) for s in sums]).where(
            t.c.bucket >= span.since, t.c.bucket < span.until, *[t.c[k] == v for k, v in filt.items()]
        )
        if cols:
            stmt = stmt.group_by(*cols)
        for row in (await conn.execute(stmt)).mappings():
            bucket = row["bucket"] if grain else None
            if grain == "day" and bucket is not None:
                bucket = day_of(bucket)
            key = (*[row[g] for g in group], bucket)
            acc = merged.get(key)
            if acc is None:
                acc = merged[key] = (
                    {g: row[g] for g in group} | ({"bucket": bucket} if grain else {}) | {s: 0 for s in sums}
                )
            for s in sums:
                acc[s] += row[s] or 0
    return list(merged.values())


def bin_edges(b: int) -> tuple[float, float]:
    return BIN_RATIO**b, BIN_RATIO ** (b + 1)


def quantile(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile (nearest rank, like ``percentile_disc``) of a histogram {bin: count}, as the
    upper edge of the bin that holds it."""
    n = sum(hist.values())
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return bin_edges(b)[1]
    return None  # pragma: no cover - unreachable


def mean_ci(
    n: float, s: float, ss: float, z: float = 1.959964
) -> tuple[float | None, float | None, float | None]:
    """Mean with a normal 95% interval from a count, a sum and a sum of squares."""
    if n <= 0:
        return None, None, None
    mean = s / n
    if n < 2:
        return mean, None, None
    var = max(ss - s * s / n, 0.0) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean, mean - half, mean + half


async def record_breaker_event(conn: AsyncConnection, deployment: str, state: str, at: datetime) -> None:
    await conn.execute(sa.insert(tables.breaker_events).values(deployment=deployment, state=state, at=at))
