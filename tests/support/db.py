"""The admin connection to the shared test Postgres (create and drop per-session databases)."""

from __future__ import annotations

import os

PG_ADMIN_DSN = os.environ.get("HYBRIDGATE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)
