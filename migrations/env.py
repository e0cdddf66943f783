"""Alembic environment of the request log.

Normally driven by :mod:`requestlog.migrate`, which opens one locked connection and passes it
in ``config.attributes["connection"]``. Without one (``alembic`` CLI, autogenerate), it
connects itself to ``sqlalchemy.url`` using a blocking driver.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from requestlog.tables import metadata
from requestlog.urls import to_sync_url

config = context.config
target_metadata = metadata


def _configure(**kw: object) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, **kw)


def run_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    url = to_sync_url(config.get_main_option("sqlalchemy.url") or "")
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    # SQLite cannot ALTER most things: batch mode recreates tables when a migration needs it.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(
        to_sync_url(config.get_main_option("sqlalchemy.url") or ""), poolclass=pool.NullPool
    )
    try:
        with engine.connect() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
