"""Shared fixtures: real PostgreSQL and Redis on 127.0.0.1, isolated per test session.

Each pytest session gets its own freshly created Postgres database (dropped at the end), so
parallel sessions and leftovers from earlier runs never interfere. Redis tests get a key prefix
unique to the session and their own logical DB number where they flush.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.db import PG_ADMIN_DSN, admin_execute

REDIS_URL = os.environ.get("HYBRIDGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _lazy_ca_certificates() -> None:
    """Every httpx client (the SDKs', the gateway's, the tests') builds an SSL context, and with
    SSL_CERT_FILE set, or certifi's bundle, it parses every CA certificate up front (~75 ms per client on a
    2-core machine; thousands of clients in a run). The system's hashed certificate directory is the same
    trust store, read only when a TLS handshake needs a certificate, so httpx is pointed at it
    (subprocesses inherit it). The tests themselves speak plain HTTP on 127.0.0.1."""
    cert_dir = os.environ.get("SSL_CERT_DIR") or "/etc/ssl/certs"
    if Path(cert_dir).is_dir() and any(Path(cert_dir).glob("*.0")):
        os.environ["SSL_CERT_DIR"] = cert_dir
        os.environ.pop("SSL_CERT_FILE", None)


_lazy_ca_certificates()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a fresh Postgres database for this test session."""
    name = f"hg_test_{uuid.uuid4().hex[:12]}"
    try:
        admin_execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # pragma: no cover - environment problem, not a test failure
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")
    yield name
    with contextlib.suppress(Exception):
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(pg_database: str) -> str:
    """Async SQLAlchemy URL of the session database (asyncpg driver)."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_database}"


@pytest.fixture()
def fresh_pg_url() -> Iterator[str]:
    """A database of its own for one test (for tests that need an empty log)."""
    name = f"hg_test_{uuid.uuid4().hex[:12]}"
    try:
        admin_execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    with contextlib.suppress(Exception):
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture()
def redis_prefix() -> str:
    """A key prefix unique to one test, so tests sharing one Redis never see each other's keys."""
    return f"hgtest:{uuid.uuid4().hex[:10]}:"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per test run; tests copy it (tests.support.db.migrated_sqlite_url)
    instead of running every Alembic migration again."""
    from requestlog.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path
