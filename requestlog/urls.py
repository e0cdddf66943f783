"""Translate database URLs between the async drivers the gateway runs on and sync drivers.

The gateway is configured with one URL (``postgresql+asyncpg://`` or ``sqlite+aiosqlite://``);
migrations run on a plain blocking connection (simpler, and callable from a CLI or a thread),
while the sink needs an async driver. Operators may write either form, so both directions
are accepted.
"""

from __future__ import annotations

import math
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


def connect_timeout_args(
    url: str | URL, timeout_s: float = CONNECT_TIMEOUT_S, *, command_timeout_s: float | None = None
) -> dict[str, Any]:
    """``connect_args`` for ``create_engine`` / ``create_async_engine`` that bound how long opening a
    Postgres connection may take, in the spelling of the URL's driver. Without one, a host that
    accepts the connection and never answers (a dead proxy, a firewall that drops packets) costs
    asyncpg's 60 s default, and libpq's (psycopg) wait has no end.

    With ``command_timeout_s``, also how long one statement may take: asyncpg's ``command_timeout``
    (its pool pre-ping too, so a pooled connection to a database that stopped answering fails instead
    of waiting for ever), and SQLite's ``timeout`` (how long a statement waits for another writer's
    lock). psycopg has no client-side statement bound; it gets the connect bound only.

    A bound the URL sets itself (``timeout`` / ``command_timeout`` for asyncpg, ``connect_timeout``
    for psycopg, ``timeout`` for SQLite) is left to the URL."""
    parsed = make_url(url)
    query = parsed.query
    args: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if command_timeout_s is not None and "timeout" not in query:
            args["timeout"] = command_timeout_s
    elif backend == "postgresql":
        if parsed.get_driver_name() == "asyncpg":
            if "timeout" not in query:
                args["timeout"] = timeout_s
            if command_timeout_s is not None and "command_timeout" not in query:
                args["command_timeout"] = command_timeout_s
        elif "connect_timeout" not in query:
            args["connect_timeout"] = max(2, math.ceil(timeout_s))  # libpq: whole seconds, at least 2
    return args
