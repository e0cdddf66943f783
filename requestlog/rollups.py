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

A request nothing served (every attempt failed, or none was made) is counted under the model ``''``
(:data:`UNSERVED`), shown as "none served": not under the model or policy name the client asked for,
which would read as a model that answered.

Dashboards read a time range as whole days from the day tables, whole hours at either end from the
hour tables, and the partial hours at its two ends from the raw rows (:func:`spans`), so a range's
counts equal the request log's for exactly that range: a 30-day range reads ~30 day buckets, ~50 hour
buckets and at most two hours of raw rows. Latency and TTFT are kept as log-spaced histograms
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
UnservedAs = Literal["none", "requested"]
UNSERVED = ""
"""The model dimension of a request nothing served."""
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


def _model(row: str, unserved: UnservedAs) -> str:
    """The model dimension of request row ``row``: the model that served it; for one nothing served
    ``''`` (:data:`UNSERVED`), or with ``"requested"`` the name the client asked for (how revisions up
    to 0010 counted it, which 0011's downgrade restores)."""
    if unserved == "requested":
        return f"coalesce({row}.served_model, {row}.requested_model, '')"
    return f"coalesce({row}.served_model, '')"


def _pg_requests(grain: Grain, unserved: UnservedAs = "none") -> str:
    t = f"rollup_requests_{grain}"
    return f"""
    INSERT INTO {t} AS t ({_REQ_COLS})
    SELECT date_trunc('{grain}', n.created_at, 'UTC'), coalesce(n.api_key_id, ''), coalesce(n."user", ''),
           coalesce(n.team, ''), coalesce(n.policy, ''), {_model("n", unserved)},
           count(*), count(*) FILTER (WHERE n.status <> 'ok'), coalesce(sum(n.cost_usd), 0),
           coalesce(sum(n.prompt_tokens), 0), coalesce(sum(n.completion_tokens), 0),
           coalesce(sum(n.latency_ms), 0), count(n.latency_ms),
           coalesce(sum(f.n), 0), coalesce(sum(f.s), 0), coalesce(sum(f.ss), 0)
    FROM new_rows n
    LEFT JOIN (SELECT request_id, count(*) AS n, sum(score) AS s, sum(score * score) AS ss FROM feedback
               WHERE request_id IN (SELECT id FROM new_rows) GROUP BY request_id) f ON f.request_id = n.id
    GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(REQUEST_SUMS, "t")};"""


def _pg_feedback(grain: Grain, unserved: UnservedAs = "none") -> str:
    t = f"rollup_requests_{grain}"
    return f"""
    INSERT INTO {t} AS t ({_REQ_KEY}, fb_n, fb_sum, fb_sumsq)
    SELECT date_trunc('{grain}', r.created_at, 'UTC'), coalesce(r.api_key_id, ''), coalesce(r."user", ''),
           coalesce(r.team, ''), coalesce(r.policy, ''), {_model("r", unserved)},
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


def _pg_attempts(grain: Grain, unserved: UnservedAs = "none") -> str:
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


def _pg_ddl(unserved: UnservedAs) -> list[str]:
    out = []
    for table, body in (("requests", _pg_requests), ("feedback", _pg_feedback), ("attempts", _pg_attempts)):
        out.append(f"""CREATE OR REPLACE FUNCTION hg_rollup_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{body("hour", unserved)}{body("day", unserved)}
  RETURN NULL;
END $$""")
        out.append(
            f"CREATE TRIGGER hg_rollup_{table} AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION hg_rollup_{table}()"
        )
    return out


_SQLITE_FMT: dict[Grain, str] = {"hour": "%Y-%m-%d %H:00:00.000000", "day": "%Y-%m-%d 00:00:00.000000"}


def _lite_requests(grain: Grain, unserved: UnservedAs = "none") -> str:
    fb = "(SELECT {} FROM feedback WHERE request_id = NEW.id)"
    return f"""
  INSERT INTO rollup_requests_{grain} ({_REQ_COLS})
  VALUES (strftime('{_SQLITE_FMT[grain]}', NEW.created_at), coalesce(NEW.api_key_id, ''), coalesce(NEW."user", ''),
          coalesce(NEW.team, ''), coalesce(NEW.policy, ''), {_model("NEW", unserved)},
          1, NEW.status <> 'ok', coalesce(NEW.cost_usd, 0), coalesce(NEW.prompt_tokens, 0),
          coalesce(NEW.completion_tokens, 0), coalesce(NEW.latency_ms, 0), NEW.latency_ms IS NOT NULL,
          {fb.format("count(*)")}, {fb.format("coalesce(sum(score), 0)")},
          {fb.format("coalesce(sum(score * score), 0)")})
  ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(REQUEST_SUMS, f"rollup_requests_{grain}")};"""


def _lite_feedback(grain: Grain, unserved: UnservedAs = "none") -> str:
    return f"""
  INSERT INTO rollup_requests_{grain} ({_REQ_KEY}, fb_n, fb_sum, fb_sumsq)
  SELECT strftime('{_SQLITE_FMT[grain]}', r.created_at), coalesce(r.api_key_id, ''), coalesce(r."user", ''),
         coalesce(r.team, ''), coalesce(r.policy, ''), {_model("r", unserved)},
         1, NEW.score, NEW.score * NEW.score
  FROM requests r WHERE r.id = NEW.request_id
  ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(("fb_n", "fb_sum", "fb_sumsq"), f"rollup_requests_{grain}")};"""


def _lite_attempts(grain: Grain, unserved: UnservedAs = "none") -> str:
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


def _sqlite_ddl(unserved: UnservedAs) -> list[str]:
    return [
        f"CREATE TRIGGER hg_rollup_{table} AFTER INSERT ON {table} BEGIN{body('hour', unserved)}{body('day', unserved)}\nEND"
        for table, body in (
            ("requests", _lite_requests),
            ("feedback", _lite_feedback),
            ("attempts", _lite_attempts),
        )
    ]


def create_triggers_sql(dialect: str, unserved: UnservedAs = "none") -> list[str]:
    """Statements that install the rollup triggers (run by migrations 0005 and 0011); ``unserved``: what
    model a request nothing served is counted under (:func:`_model`)."""
    return _pg_ddl(unserved) if dialect == "postgresql" else _sqlite_ddl(unserved)


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


def backfill_sql(dialect: str, unserved: UnservedAs = "none") -> list[str]:
    """Statements that fill the (empty) rollups from rows logged before the triggers existed."""
    if dialect == "postgresql":
        return [
            "CREATE TEMP TABLE new_rows AS SELECT * FROM requests",
            _pg_requests("hour", unserved),
            _pg_requests("day", unserved),
            "DROP TABLE new_rows",
            "CREATE TEMP TABLE new_rows AS SELECT * FROM attempts",
            _pg_attempts("hour"),
            _pg_attempts("day"),
            "DROP TABLE new_rows",
        ]
    return [_lite_backfill_requests(g, unserved) for g in ("hour", "day")] + [
        stmt for g in ("hour", "day") for stmt in _lite_backfill_attempts(g)
    ]


def _lite_backfill_requests(grain: Grain, unserved: UnservedAs) -> str:
    return f"""
    INSERT INTO rollup_requests_{grain} ({_REQ_COLS})
    SELECT strftime('{_SQLITE_FMT[grain]}', n.created_at), coalesce(n.api_key_id, ''), coalesce(n."user", ''),
           coalesce(n.team, ''), coalesce(n.policy, ''), {_model("n", unserved)},
           count(*), sum(n.status <> 'ok'), coalesce(sum(n.cost_usd), 0), coalesce(sum(n.prompt_tokens), 0),
           coalesce(sum(n.completion_tokens), 0), coalesce(sum(n.latency_ms), 0), count(n.latency_ms),
           coalesce(sum(f.n), 0), coalesce(sum(f.s), 0), coalesce(sum(f.ss), 0)
    FROM requests n
    LEFT JOIN (SELECT request_id, count(*) AS n, sum(score) AS s, sum(score * score) AS ss FROM feedback
               GROUP BY request_id) f ON f.request_id = n.id
    GROUP BY 1, 2, 3, 4, 5, 6"""


def relabel_unserved_sql(dialect: str, to: UnservedAs) -> list[str]:
    """Statements that move the counts of the logged requests nothing served between the model the client
    asked for (``to="none"``: from it; ``"requested"``: back to it) and :data:`UNSERVED`, in the hour and
    day rollups. Run with the triggers of the other labelling dropped (migration 0011, both ways). Rows
    already pruned from the log (retention) cannot be told apart in the rollups: they stay where they are."""
    src, dst = ("requested", "''") if to == "none" else ("''", "requested")
    out = []
    for grain in ("hour", "day"):
        t = f"rollup_requests_{grain}"
        bucket = (f"date_trunc('{grain}', n.created_at, 'UTC')" if dialect == "postgresql"
                  else f"strftime('{_SQLITE_FMT[grain]}', n.created_at)")
        moved = ", ".join(f"sum({c}) AS {c}" for c in REQUEST_SUMS)

        def grouped(model: str, moved: str = moved) -> str:
            return (f'SELECT bucket, api_key_id, "user", team, policy, {model} AS model, {moved} '
                    "FROM hg_unserved GROUP BY 1, 2, 3, 4, 5, 6")

        key = " AND ".join(f"t.{c} = m.{c}" for c in ("bucket", "api_key_id", '"user"', "team", "policy", "model"))
        out += [
            f"""CREATE TEMP TABLE hg_unserved AS
    SELECT {bucket} AS bucket, coalesce(n.api_key_id, '') AS api_key_id, coalesce(n."user", '') AS "user",
           coalesce(n.team, '') AS team, coalesce(n.policy, '') AS policy, n.requested_model AS requested,
           count(*) AS requests, sum(CASE WHEN n.status <> 'ok' THEN 1 ELSE 0 END) AS errors,
           coalesce(sum(n.cost_usd), 0) AS cost_usd, coalesce(sum(n.prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(n.completion_tokens), 0) AS completion_tokens,
           coalesce(sum(n.latency_ms), 0) AS latency_ms_sum, count(n.latency_ms) AS latency_n,
           coalesce(sum(f.n), 0) AS fb_n, coalesce(sum(f.s), 0) AS fb_sum, coalesce(sum(f.ss), 0) AS fb_sumsq
    FROM requests n
    LEFT JOIN (SELECT request_id, count(*) AS n, sum(score) AS s, sum(score * score) AS ss FROM feedback
               WHERE request_id IN (SELECT id FROM requests WHERE served_model IS NULL)
               GROUP BY request_id) f ON f.request_id = n.id
    WHERE n.served_model IS NULL AND coalesce(n.requested_model, '') <> ''
    GROUP BY 1, 2, 3, 4, 5, 6""",
            f"UPDATE {t} AS t SET {', '.join(f'{c} = t.{c} - m.{c}' for c in REQUEST_SUMS)} "
            f"FROM ({grouped(src)}) AS m WHERE {key}",
            f"INSERT INTO {t} AS t ({_REQ_COLS}) SELECT * FROM ({grouped(dst)}) AS m WHERE true "
            f"ON CONFLICT ({_REQ_KEY}) DO UPDATE SET {_adds(REQUEST_SUMS, 't')}",
            f"DELETE FROM {t} WHERE requests = 0",
            "DROP TABLE hg_unserved",
        ]
    return out


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
    """Part of a time range and where it is read: ``day`` or ``hour`` rollups (whole buckets), or ``raw``
    log rows (a partial hour at either end of the range, within one hour)."""

    grain: Grain | Literal["raw"]
    since: datetime
    until: datetime


def floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    f = floor_hour(t)
    return f if f == t.astimezone(UTC) else f + timedelta(hours=1)


def spans(since: datetime, until: datetime, *, days: bool = True) -> list[Span]:
    """The range [since, until) exactly: whole days (day tables), the whole hours around them (hour
    tables) and the partial hours at either end (raw rows, one span per clock hour). ``days=False``
    reads no day tables (hourly time series)."""
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    if until <= since:
        return []
    if floor_hour(since) == floor_hour(until):  # within one clock hour
        return [Span("raw", since, until)]
    lo, hi = ceil_hour(since), floor_hour(until)
    out = []
    if lo < hi:
        d0 = lo.replace(hour=0) if lo.hour == 0 else lo.replace(hour=0) + timedelta(days=1)
        d1 = hi.replace(hour=0)
        if not days or d1 <= d0:
            out.append(Span("hour", lo, hi))
        else:
            out.append(Span("day", d0, d1))
            if lo < d0:
                out.append(Span("hour", lo, d0))
            if d1 < hi:
                out.append(Span("hour", d1, hi))
    if since < lo:
        out.append(Span("raw", since, lo))
    if hi < until:
        out.append(Span("raw", hi, until))
    return out


def day_of(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _bin_sql(dialect: str, col: str) -> sa.ColumnElement[int]:
    """The histogram bin of a latency column, computed as the triggers compute it."""
    top = "greatest" if dialect == "postgresql" else "max"
    return sa.literal_column(f"CAST(floor(ln({top}({col}, 0.01)) / ln({BIN_RATIO})) AS INTEGER)", sa.Integer())


def _raw_selects(
    family: str, dialect: str, since: datetime, until: datetime
) -> list[tuple[dict[str, sa.ColumnElement[Any]], dict[str, sa.ColumnElement[Any]], Any]]:
    """The raw log rows of [since, until) as a family's rollup would count them: per statement, the
    dimension expressions, the total expressions it computes (the statements' rows are summed) and the
    FROM clause with the range applied, as a partially built select."""
    if family == "requests":
        r, f = tables.requests, tables.feedback
        in_range = sa.and_(r.c.created_at >= since, r.c.created_at < until)
        dims: dict[str, sa.ColumnElement[Any]] = {
            "api_key_id": sa.func.coalesce(r.c.api_key_id, ""),
            "user": sa.func.coalesce(r.c.user, ""),
            "team": sa.func.coalesce(r.c.team, ""),
            "policy": sa.func.coalesce(r.c.policy, ""),
            "model": sa.func.coalesce(r.c.served_model, UNSERVED),
        }
        totals: dict[str, sa.ColumnElement[Any]] = {
            "requests": sa.func.count(),
            "errors": sa.func.sum(sa.case((r.c.status != "ok", 1), else_=0)),
            "cost_usd": sa.func.sum(r.c.cost_usd),
            "prompt_tokens": sa.func.sum(r.c.prompt_tokens),
            "completion_tokens": sa.func.sum(r.c.completion_tokens),
            "latency_ms_sum": sa.func.sum(r.c.latency_ms),
            "latency_n": sa.func.count(r.c.latency_ms),
        }
        # Feedback in a statement of its own, one row per feedback joined to its request (the rows are
        # summed with the requests' by the caller): a join to feedback grouped per request had Postgres,
        # expecting few requests under a filter, re-run that grouping for every request row.
        feedback = {
            "fb_n": sa.func.count(),
            "fb_sum": sa.func.sum(f.c.score),
            "fb_sumsq": sa.func.sum(f.c.score * f.c.score),
        }
        return [
            (dims, totals, sa.select().select_from(r).where(in_range)),
            (dims, feedback, sa.select().select_from(r.join(f, f.c.request_id == r.c.id)).where(in_range)),
        ]
    a = tables.attempts
    in_range = sa.and_(a.c.started_at >= since, a.c.started_at < until)
    if family == "attempts":
        p = a.alias("p")
        kind = sa.case(
            (a.c.attempt_no == 0, "first"),
            (sa.or_(p.c.deployment.is_(None), p.c.deployment == a.c.deployment), "retry"),
            (p.c.status == "ok", "escalation"),
            else_="fallback",
        )
        prev = sa.and_(p.c.request_id == a.c.request_id, p.c.attempt_no == a.c.attempt_no - 1)
        base = sa.select().select_from(a.outerjoin(p, prev)).where(in_range)
        dims = {"deployment": a.c.deployment, "kind": kind, "status": a.c.status}
        totals = {"n": sa.func.count(), "latency_ms_sum": sa.func.sum(a.c.latency_ms)}
        return [(dims, totals, base)]
    out = []
    for metric, col in (("latency", a.c.latency_ms), ("ttft", a.c.ttft_ms)):
        base = sa.select().select_from(a).where(in_range, a.c.status == "ok", col.is_not(None))
        dims = {
            "deployment": a.c.deployment,
            "metric": sa.literal_column(f"'{metric}'", sa.String()),
            "bin": _bin_sql(dialect, f"attempts.{col.name}"),
        }
        out.append((dims, {"n": sa.func.count()}, base))
    return out


def _statements(
    family: str, dialect: str, span: Span, group: Sequence[str], sums: Sequence[str], filt: dict[str, str],
    bucketed: bool,
) -> list[sa.Select[Any]]:
    """The statements that read ``span`` of a family: grouped by ``group`` (and the bucket when
    ``bucketed``; a raw span is within one hour, its bucket is set by the caller), summing ``sums``."""
    hour = FAMILIES[family]["hour"]
    if span.grain != "raw":
        t = FAMILIES[family][span.grain]
        cols = [t.c[g] for g in group] + ([t.c.bucket] if bucketed else [])
        stmt = sa.select(*cols, *[sa.cast(sa.func.sum(t.c[s]), t.c[s].type).label(s) for s in sums]).where(
            t.c.bucket >= span.since, t.c.bucket < span.until, *[t.c[k] == v for k, v in filt.items()]
        )
        return [stmt.group_by(*cols) if cols else stmt]
    out = []
    for dims, totals, base in _raw_selects(family, dialect, span.since, span.until):
        if not any(s in totals for s in sums):
            continue  # nothing asked of this statement
        cols = [dims[g].label(g) for g in group]
        stmt = base.add_columns(
            *cols,
            *[
                sa.cast(sa.func.coalesce(totals[s], 0) if s in totals else sa.literal_column("0"), hour.c[s].type).label(s)
                for s in sums
            ],
        ).where(*[dims[k] == v for k, v in filt.items()])
        # by position: an expression with bound values repeated in GROUP BY is another expression to Postgres
        # (its own parameters); without groups, no row when no log row matched, as a rollup bucket
        out.append(stmt.group_by(*[sa.literal_column(str(i + 1)) for i in range(len(group))]) if group
                   else stmt.having(sa.func.count() > 0))
    return out


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
    over exactly [since, until) (:func:`spans`), reading day tables for whole days; ``where`` filters
    dimensions by equality (None values are ignored)."""
    filt = {k: v for k, v in (where or {}).items() if v is not None}
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for span in spans(since, until, days=grain != "hour"):
        for stmt in _statements(family, conn.dialect.name, span, group, sums, filt, grain is not None):
            for row in (await conn.execute(stmt)).mappings():
                bucket = (floor_hour(span.since) if span.grain == "raw" else row["bucket"]) if grain else None
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
