"""Fixtures of the request-log tests (real PostgreSQL from tests/conftest.py, SQLite files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from requestlog import migrate
from tests.support.db import migrated_sqlite_url


@pytest.fixture(scope="session")
def pg_log_url(pg_url: str) -> str:
    """The session Postgres database, migrated once (tests use unique ids to stay apart)."""
    migrate.upgrade(pg_url)
    return pg_url


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, un-migrated SQLite file database."""
    return f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"


@pytest.fixture()
def sqlite_log_url(tmp_path: Path, sqlite_template: Path) -> str:
    return migrated_sqlite_url(sqlite_template, tmp_path / "log.db")


@pytest.fixture(params=["postgresql", "sqlite"])
def log_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated log database, once per backend."""
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_log_url")
    else:
        yield request.getfixturevalue("sqlite_log_url")


@pytest.fixture()
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"
