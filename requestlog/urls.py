"""Translate database URLs between the async drivers the gateway runs on and sync drivers.

The gateway is configured with one URL (``postgresql+asyncpg://`` or ``sqlite+aiosqlite://``);
migrations run on a plain blocking connection (simpler, and callable from a CLI or a thread),
while the sink needs an async driver. Operators may write either form, so both directions
are accepted.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, make_url

# How long opening a Postgres connection may take (the commands that use the database: migrate, keys,
# prune; serve's preflight passes its own, shorter bound).
CONNECT_TIMEOUT_S = 10

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+psycopg_async",
    "postgresql+psycopg_async": "postgresql+psycopg_async",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}

_SYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
}


def _convert(url: str | URL, table: dict[str, str], kind: str) -> URL:
    parsed = make_url(url)
    driver = table.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database URL scheme for the request log ({kind}): {parsed.drivername!r}"
        )
    converted = parsed.set(drivername=driver)
    query = dict(converted.query)
    if parsed.drivername == "postgresql+asyncpg" and "ssl" in query and driver != "postgresql+asyncpg":
        # asyncpg spells libpq's sslmode as ssl
        query["sslmode"] = query.pop("ssl")
        converted = converted.set(query=query)
    elif driver == "postgresql+asyncpg" and "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
        converted = converted.set(query=query)
    return converted


def to_async_url(url: str | URL) -> URL:
    """The URL to use with ``create_async_engine`` (asyncpg / aiosqlite unless given another async driver)."""
    return _convert(url, _ASYNC_DRIVERS, "async")


def to_sync_url(url: str | URL) -> URL:
    """The URL to use with a blocking engine (psycopg 3 / sqlite3)."""
    return _convert(url, _SYNC_DRIVERS, "sync")


def connect_timeout_args(url: str | URL, timeout_s: int = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """``connect_args`` for ``create_engine`` / ``create_async_engine`` that bound how long opening a
    Postgres connection may take, in the spelling of the URL's driver. Without one, a host that
    accepts the connection and never answers (a dead proxy, a firewall that drops packets) costs
    asyncpg's 60 s default, and libpq's (psycopg) wait has no end. {} for SQLite, and for a URL that
    sets its own (``timeout`` for asyncpg, ``connect_timeout`` for psycopg)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    name = "timeout" if parsed.get_driver_name() == "asyncpg" else "connect_timeout"
    return {} if name in parsed.query else {name: timeout_s}
