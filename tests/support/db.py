"""The admin connection to the shared test Postgres (create and drop per-session databases)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PG_ADMIN_DSN = os.environ.get("HYBRIDGATE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


def migrated_sqlite_url(template: Path, dest: Path) -> str:
    """A SQLite log database at ``dest``, copied from an already migrated ``template`` file."""
    shutil.copy(template, dest)
    return f"sqlite+aiosqlite:///{dest}"
