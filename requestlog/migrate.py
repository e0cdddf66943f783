"""Run the Alembic migrations of the request log, without an ``alembic.ini``.

The Alembic ``Config`` is built in code with ``script_location`` set to the directory of the
installed ``migrations`` package, so ``hybridgate migrate`` works from any working directory
and from a wheel, not only from the repository root.

Migrations always run on a blocking driver derived from the configured URL (psycopg 3 for
Postgres, sqlite3 for SQLite): it keeps ``upgrade()`` an ordinary function that a CLI can call
and an async app can run in a thread (:func:`upgrade_async`).

Concurrent callers (several gateway workers starting at once) are serialised: on Postgres by a
transaction-scoped advisory lock, on SQLite by ``BEGIN IMMEDIATE``; the whole upgrade runs in
that one transaction, so the loser sees the schema already at head and does nothing.

Also usable as a tiny CLI for development::

    python -m requestlog.migrate upgrade  [--url URL]
    python -m requestlog.migrate current  [--url URL]
    python -m requestlog.migrate revision -m "add column" [--autogenerate] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .urls import connect_timeout_args, to_sync_url

DEFAULT_URL = "sqlite+aiosqlite:///./hybridgate.db"

_PG_LOCK_KEY = 0x6879_6272_6467  # "hybrdg": arbitrary, constant advisory-lock key


def script_location() -> Path:
    """Directory of the installed ``migrations`` package (holds env.py and versions/). Found, not
    imported: Alembic runs those scripts, and they import `requestlog.tables`, not the other way."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or spec.origin is None:
        raise RuntimeError("the migrations package is not installed")
    return Path(spec.origin).resolve().parent


def make_config() -> Config:
    """An Alembic config pointing at the packaged migrations; no ini file involved."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head() -> str:
    """The newest revision shipped with this code."""
    rev = ScriptDirectory.from_config(make_config()).get_current_head()
    assert rev is not None
    return rev


def _sync_engine(db_url: str) -> sa.Engine:
    url = to_sync_url(db_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _no_implicit_tx(dbapi_conn: Any, _record: Any) -> None:
            # let SQLAlchemy, not the sqlite3 module, decide where transactions begin
            dbapi_conn.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin_immediate(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # libpq waits for ever on a host that takes the connection and never answers: bound it
    return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_timeout_args(url))


@contextmanager
def _locked_connection(db_url: str) -> Iterator[sa.Connection]:
    """A connection inside one transaction that holds the migration lock; commits on success."""
    engine = _sync_engine(db_url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            yield conn
    finally:
        engine.dispose()


def _run(db_url: str, fn: Callable[[Config], None]) -> None:
    cfg = make_config()
    with _locked_connection(db_url) as conn:
        cfg.attributes["connection"] = conn
        fn(cfg)


def upgrade(db_url: str = DEFAULT_URL, revision: str = "head") -> None:
    """Bring the database at ``db_url`` (async or sync URL) up to ``revision``. Idempotent."""
    _run(db_url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(db_url: str, revision: str) -> None:
    """Step the schema back to ``revision`` ("base" drops every table). For development and tests."""
    _run(db_url, lambda cfg: command.downgrade(cfg, revision))


async def upgrade_async(db_url: str = DEFAULT_URL, revision: str = "head") -> None:
    """:func:`upgrade` from inside an event loop, without blocking it."""
    await asyncio.to_thread(upgrade, db_url, revision)


def current(db_url: str = DEFAULT_URL) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    engine = _sync_engine(db_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(db_url: str = DEFAULT_URL) -> bool:
    """True when the database is at the newest shipped revision (for readiness checks)."""
    return current(db_url) == head()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m requestlog.migrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="database URL (async or sync form)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upgrade")
    up.add_argument("revision", nargs="?", default="head")
    sub.add_parser("current")
    rev = sub.add_parser("revision", help="create a new revision file in migrations/versions")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "upgrade":
        upgrade(args.url, args.revision)
        print(current(args.url))
    elif args.cmd == "current":
        print(current(args.url) or "(empty)")
    else:
        cfg = make_config()
        cfg.set_main_option(
            "sqlalchemy.url", to_sync_url(args.url).render_as_string(hide_password=False).replace("%", "%%")
        )
        command.revision(cfg, message=args.message, autogenerate=args.autogenerate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
