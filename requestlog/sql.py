"""SQL pieces every user of the log database shares, so each is written once.

`dialect_insert`: the INSERT construct of the engine's dialect, the one that offers ``ON CONFLICT``
(idempotent log writes, once-per-source feedback, additive bandit totals, budget upserts).
`DB_ERRORS`: the exceptions that mean "the database is away or refused", which callers turn into
a 503 or a local fallback rather than a crash. Besides the driver's errors, that is SQLAlchemy's pool
timeout (`sqlalchemy.exc.TimeoutError`, no DBAPI error): every pooled connection is held, as under a
database that hangs while requests keep arriving, and none came free within the pool's timeout.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

DB_ERRORS = (OSError, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DBAPIError, sa.exc.TimeoutError)


def dialect_insert(table: sa.Table, dialect: str) -> Any:
    """``postgresql.insert`` or ``sqlite.insert`` of ``table`` (the only two databases supported)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"request log supports PostgreSQL and SQLite, not {dialect!r}")
