"""Batched, idempotent inserts of log records, and the classification of write failures.

Every insert is ``INSERT ... ON CONFLICT (id) DO NOTHING``, inside one transaction per batch.
Re-sending a batch, whole or in part, therefore never duplicates a row; that is what makes spool
replay and retries safe.

On PostgreSQL each table's share of a batch is ONE statement,
``INSERT ... SELECT ... FROM unnest(CAST(:p0 AS VARCHAR[]), ...)``, with one array
parameter per column: the rollup triggers (``requestlog/rollups.py``) are per statement with
transition tables, so they run once per batch rather than once per row as they would under an
executemany. On SQLite (per-row triggers there) it is an executemany of the dialect's insert.

A failed write is either *unavailability* (network, server down, timeouts, missing tables, ...):
keep the rows and retry later; or a *data error* in particular records (a NUL byte in text, an
integer out of range, ...): retrying would fail forever and block the spool, so those records are
isolated by bisection, retried once sanitised, and otherwise handed back as rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import tables
from .codec import ATTEMPT, REQUEST, Params, Record, dumps_json, sanitize_record
from .sql import dialect_insert
from .urls import connect_timeout_args, to_async_url

log = logging.getLogger("hybridgate.requestlog.writer")

# SQLSTATE classes meaning "cannot write now" rather than "these values are bad": connection
# exceptions, invalid transaction state (25006: a read-only database, e.g. a standby after a
# failover, refuses every write while SELECT 1 still answers), transaction rollbacks (deadlock,
# serialization), undefined table / privileges (schema not migrated yet), insufficient resources,
# operator intervention, system errors, invalid authorization or catalog.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset(
    {"08", "25", "28", "3D", "40", "42", "53", "54", "55", "57", "58", "XX"}
)


class Unavailable(Exception):
    """The database cannot take writes right now; the caller keeps the records."""


@dataclass(slots=True)
class WriteResult:
    written: int = 0  # records now in the database (including ones already there)
    rejected: list[tuple[Record, str]] = field(default_factory=list)  # (record, error text)


def make_engine(
    db_url: str, *, connect_timeout_s: float = 5.0, command_timeout_s: float = 10.0, **kw: Any
) -> AsyncEngine:
    """An async engine suited to the log writer (small pool, tolerant JSON encoding).

    No pre-ping: it costs a round trip per batch, and a stale connection after a database
    restart already fails the batch into the spool, from where it is replayed.
    """
    url = to_async_url(db_url)
    connect_args = connect_timeout_args(url, connect_timeout_s, command_timeout_s=command_timeout_s)
    options: dict[str, Any] = {"pool_pre_ping": False, "json_serializer": dumps_json, "connect_args": connect_args}
    if url.get_backend_name() == "postgresql":
        options.update(pool_size=2, max_overflow=2, pool_recycle=1800)
        if url.get_driver_name() == "asyncpg":
            connect_args["server_settings"] = {"application_name": "hybridgate-requestlog"}
    options.update(kw)
    engine = create_async_engine(url, **options)
    if url.get_backend_name() == "sqlite":
        _tune_sqlite(engine)
    return engine


def _tune_sqlite(engine: AsyncEngine) -> None:
    @sa.event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL: dashboards can read while the gateway writes; NORMAL is durable across app
        # crashes (only an OS crash can lose the last commits) and much faster than FULL.
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL"):
            with contextlib.suppress(Exception):  # e.g. read-only or in-memory database
                cur.execute(f"PRAGMA {pragma}")
        cur.close()


def _insert(table: sa.Table, dialect: str) -> sa.Executable:
    return dialect_insert(table, dialect).on_conflict_do_nothing(index_elements=["id"])


class UnnestInsert:
    """One PostgreSQL statement inserting many rows of ``table``, idempotently.

    Each column travels as one array parameter (``CAST(:p13 AS FLOAT[])``) and ``unnest`` turns
    the arrays back into rows, so a batch of any size is a single statement with a fixed text
    (prepared once per connection). JSON columns travel as JSON text and are cast in the SELECT;
    timestamps go through the column type's own bind processing (UTC, timezone-aware).
    """

    def __init__(self, table: sa.Table, defaults: Params) -> None:
        dialect = postgresql.dialect()
        self._columns = list(table.columns)
        self._defaults = defaults
        self._json = [isinstance(c.type.dialect_impl(dialect), sa.JSON) for c in self._columns]
        self._decorators = [c.type if isinstance(c.type, sa.TypeDecorator) else None for c in self._columns]
        self._dialect = dialect
        names = ", ".join(dialect.identifier_preparer.quote(c.name) for c in self._columns)
        arrays = ", ".join(
            f"CAST(:p{i} AS {'text' if is_json else c.type.compile(dialect=dialect)}[])"
            for i, (c, is_json) in enumerate(zip(self._columns, self._json, strict=True))
        )
        selected = ", ".join(
            f"CAST(t.{dialect.identifier_preparer.quote(c.name)} AS jsonb)"
            if is_json
            else f"t.{dialect.identifier_preparer.quote(c.name)}"
            for c, is_json in zip(self._columns, self._json, strict=True)
        )
        self.statement = sa.text(
            f"INSERT INTO {dialect.identifier_preparer.quote(table.name)} ({names}) "
            f"SELECT {selected} FROM unnest({arrays}) AS t({names}) "
            "ON CONFLICT (id) DO NOTHING"
        )

    def params(self, rows: Sequence[Params]) -> dict[str, list[Any]]:
        """The statement's parameters: one list per column, in row order."""
        out: dict[str, list[Any]] = {}
        for i, column in enumerate(self._columns):
            name = column.name
            default = self._defaults.get(name)
            values = [row.get(name, default) for row in rows]
            if self._json[i]:
                values = [None if v is None else dumps_json(v) for v in values]
            elif (decorator := self._decorators[i]) is not None:
                values = [decorator.process_bind_param(v, self._dialect) for v in values]
            out[f"p{i}"] = values
        return out


def _walk(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (``orig``, causes, contexts)."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        stack.extend([getattr(e, "orig", None), e.__cause__, e.__context__])
    return seen


def describe(exc: BaseException) -> str:
    """A one-line reason without SQLAlchemy's echo of the statement and its parameters."""
    root = exc.orig if isinstance(exc, sa.exc.StatementError) and exc.orig is not None else exc
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return f"{type(root).__name__}: {text}"[:300]


def is_unavailable(exc: BaseException) -> bool:
    """True if the failure is about reaching or using the database, not about the values sent.

    Errors this cannot place count as data errors; the writer double-checks with a ping
    before believing that, so a flapping network is never mistaken for bad data.
    """
    chain = _walk(exc)
    for e in chain:
        if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (OSError, TimeoutError, sa.exc.DisconnectionError, sa.exc.TimeoutError)):
            return True
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
        if type(e).__module__ == "sqlite3" and type(e).__name__ == "OperationalError":
            return True  # locked, no such table, disk I/O error, ...
    for e in chain:
        if type(e).__module__.startswith("asyncpg") and isinstance(e, ValueError):
            return False  # asyncpg could not encode a value (its DataError)
        if type(e).__module__.startswith("asyncpg") and "connection" in str(e).lower():
            return True  # e.g. ConnectionDoesNotExistError, "connection was closed"
    return False


class DbWriter:
    """Writes records to the log tables; knows nothing about queues or spools."""

    def __init__(
        self, engine: AsyncEngine, *, write_timeout_s: float = 15.0, ping_timeout_s: float = 3.0
    ) -> None:
        self.engine = engine
        self.write_timeout_s = write_timeout_s
        self.ping_timeout_s = ping_timeout_s
        dialect = engine.dialect.name
        self._insert_requests = _insert(tables.requests, dialect)
        self._insert_attempts = _insert(tables.attempts, dialect)
        self._unnest: tuple[UnnestInsert, UnnestInsert] | None = None
        if dialect == "postgresql":
            self._unnest = (
                UnnestInsert(tables.requests, REQUEST.defaults),
                UnnestInsert(tables.attempts, ATTEMPT.defaults),
            )

    async def ping(self) -> bool:
        """Whether the database answers a trivial query now. Never raises."""
        try:
            async with asyncio.timeout(self.ping_timeout_s), self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    async def _insert(self, records: Sequence[Record]) -> None:
        requests = [r for r, _ in records]
        attempts = [a for _, atts in records for a in atts]
        async with asyncio.timeout(self.write_timeout_s), self.engine.begin() as conn:
            try:
                await self._execute(conn, requests, attempts)
            except Exception as exc:
                if is_unavailable(exc):
                    # Not back into the pool: a connection that cannot write (to a standby, a read-only
                    # session, a broken socket) would fail every later batch the same way.
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                raise

    async def _execute(self, conn: AsyncConnection, requests: list[Params], attempts: list[Params]) -> None:
        if self._unnest is not None:
            for insert, rows in zip(self._unnest, (requests, attempts), strict=True):
                if rows:
                    await conn.execute(insert.statement, insert.params(rows))
            return
        if requests:
            await conn.execute(self._insert_requests, requests)
        if attempts:
            await conn.execute(self._insert_attempts, attempts)

    async def write(self, records: Sequence[Record]) -> WriteResult:
        """Write records idempotently.

        Raises :class:`Unavailable` when the database cannot take them now (some may have been
        written already: re-sending them is harmless). Otherwise every record is either written
        or returned in ``rejected``.
        """
        if not records:
            return WriteResult()
        try:
            await self._insert(records)
            return WriteResult(written=len(records))
        except Exception as exc:
            if is_unavailable(exc) or not await self.ping():
                raise Unavailable(describe(exc)) from exc
            log.warning(
                "batch of %d records refused (%s); isolating bad records", len(records), describe(exc)
            )
        result = WriteResult()
        failed: list[tuple[Record, BaseException]] = []
        await self._bisect(list(records), result, failed)
        for record, _exc in failed:
            try:
                await self._insert([sanitize_record(record)])
                result.written += 1
            except Exception as exc2:
                if is_unavailable(exc2):
                    raise Unavailable(describe(exc2)) from exc2
                log.error("rejected log record %s: %s", record[0].get("id"), describe(exc2))
                result.rejected.append((record, describe(exc2)))
        return result

    async def _bisect(
        self, records: list[Record], result: WriteResult, failed: list[tuple[Record, BaseException]]
    ) -> None:
        mid = len(records) // 2
        for half in (records[:mid], records[mid:]):
            if not half:
                continue
            try:
                await self._insert(half)
                result.written += len(half)
            except Exception as exc:
                if is_unavailable(exc):
                    raise Unavailable(describe(exc)) from exc
                if len(half) == 1:
                    failed.append((half[0], exc))
                else:
                    await self._bisect(half, result, failed)
