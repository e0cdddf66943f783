"""Alembic migrations of the request log on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from requestlog import migrate
from requestlog.tables import metadata
from requestlog.urls import to_async_url, to_sync_url
from router.offline.feedback_db import read_logged_decisions
from service import policy_eval

EXPECTED_TABLES = {
    "requests",
    "stored_responses",
    "attempts",
    "feedback",
    "api_keys",
    "policies",
    "policy_active",
    "policy_retirements",
    "router_artifacts",
    "bandit_totals",
    "scope_budgets",
    "gateway_instances",
    "console_revocations",
    "alembic_version",
    # admin console rollups (requestlog/rollups.py) and breaker history
    "rollup_requests_hour",
    "rollup_requests_day",
    "rollup_attempts_hour",
    "rollup_attempts_day",
    "rollup_latency_hour",
    "rollup_latency_day",
    "breaker_events",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("fresh_pg_url")
    return request.getfixturevalue("sqlite_url")


def _inspect(url: str):
    engine = sa.create_engine(to_sync_url(url), poolclass=sa.pool.NullPool)
    return engine, sa.inspect(engine)


def test_upgrade_from_empty_is_complete_and_idempotent(empty_url: str) -> None:
    assert migrate.current(empty_url) is None
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()
    assert migrate.is_up_to_date(empty_url)
    migrate.upgrade(empty_url)  # second run: nothing to do, no error
    assert migrate.current(empty_url) == migrate.head()

    engine, insp = _inspect(empty_url)
    try:
        assert set(insp.get_table_names()) == EXPECTED_TABLES
        indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes("requests")}
        assert {("created_at",), ("api_key_id",), ("served_model",), ("requested_model",),
                ("user", "created_at"), ("team", "created_at")} <= indexed
        assert ("request_id",) in {tuple(ix["column_names"]) for ix in insp.get_indexes("attempts")}
        assert insp.get_foreign_keys("attempts") == []
        assert insp.get_pk_constraint("policies")["constrained_columns"] == ["name", "version"]
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("feedback")}
        assert ("request_id", "source") in uniques
        with engine.connect() as conn:
            # the migration and the live table definitions agree (no autogenerate diff)
            assert (
                compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
                == []
            )
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    migrate.downgrade(empty_url, "base")
    assert migrate.current(empty_url) is None
    engine, insp = _inspect(empty_url)
    try:
        assert set(insp.get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()


def test_upgrading_a_populated_log_keeps_its_rows(empty_url: str) -> None:
    """A deployment on the first schema, with traffic logged, moves to head without losing a row."""
    migrate.upgrade(empty_url, "0001_initial")
    engine, _ = _inspect(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO requests (id, created_at, endpoint, status, http_status, streamed, attempts_count)"
                " VALUES ('r1', CURRENT_TIMESTAMP, 'chat', 'ok', 200, false, 1)"))
        migrate.upgrade(empty_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, bandit FROM requests")).all()
        assert [tuple(r) for r in rows] == [("r1", None)]
    finally:
        engine.dispose()


def _log(conn: sa.Connection, rid: str, served: str, chosen: str | None = None) -> None:
    """A request of policy `p` with a prompt, propensity 0.5 and one feedback score of 1."""
    chosen_cols = ", chosen_model" if chosen is not None else ""
    conn.execute(sa.text(
        "INSERT INTO requests (id, created_at, endpoint, status, http_status, streamed, attempts_count, policy,"
        f" served_model, propensity, prompt_text{chosen_cols}) VALUES (:id, CURRENT_TIMESTAMP, 'chat', 'ok',"
        f" 200, false, 1, 'p', :served, 0.5, 'q'{', :chosen' if chosen is not None else ''})"),
        {"id": rid, "served": served, "chosen": chosen})
    conn.execute(sa.text("INSERT INTO feedback (id, request_id, source, score, created_at)"
                         " VALUES (:id, :id, 'user', 1.0, CURRENT_TIMESTAMP)"), {"id": rid})


def test_rows_logged_before_the_chosen_arm_count_the_answering_model_as_chosen(empty_url: str) -> None:
    """Off-policy evaluation reads each row's chosen model as its action; rows logged before 0010 (no
    column yet, or NULL after the upgrade) take the answering model. The downgrade keeps the table, so
    the rollup triggers on it still count what is logged afterwards."""
    migrate.upgrade(empty_url, "0009_policy_retirements")
    engine, _ = _inspect(empty_url)
    try:
        with engine.begin() as conn:
            _log(conn, "old", "model-b")
        assert [(d["action"], d["served"]) for d in read_logged_decisions(empty_url, "p")] == [("model-b", "model-b")]
        migrate.upgrade(empty_url)
        with engine.begin() as conn:
            _log(conn, "new", "model-b", chosen="model-a")  # model-a was chosen, a fallback answered
        assert sorted((d["action"], d["served"]) for d in read_logged_decisions(empty_url, "p")) == [
            ("model-a", "model-b"), ("model-b", "model-b")]

        async def console_rows() -> list[str]:
            async_engine = create_async_engine(to_async_url(empty_url), poolclass=sa.pool.NullPool)
            try:
                return sorted(x.model for x in await policy_eval.logged_traffic(async_engine, "p"))
            finally:
                await async_engine.dispose()

        assert asyncio.run(console_rows()) == ["model-a", "model-b"]

        migrate.downgrade(empty_url, "0009_policy_retirements")
        assert "chosen_model" not in {c["name"] for c in sa.inspect(engine).get_columns("requests")}
        with engine.begin() as conn:
            before = conn.execute(sa.text("SELECT coalesce(sum(requests), 0) FROM rollup_requests_hour")).scalar()
            _log(conn, "after", "model-b")
            after = conn.execute(sa.text("SELECT coalesce(sum(requests), 0) FROM rollup_requests_hour")).scalar()
        assert (before, after) == (2, 3)
    finally:
        engine.dispose()


def test_concurrent_upgrades_serialise(empty_url: str) -> None:
    """Several workers running `migrate` at start-up at once: all succeed, schema built once."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate.upgrade(empty_url)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert migrate.current(empty_url) == migrate.head()


def test_works_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No alembic.ini and no repo-relative paths: the packaged migrations are found from anywhere."""
    monkeypatch.chdir(tmp_path)
    location = migrate.script_location()
    assert location.is_absolute()
    assert (location / "env.py").is_file()
    assert (location / "script.py.mako").is_file()
    migrate.upgrade("sqlite+aiosqlite:///./sub/dir/hybridgate.db")  # default-style relative URL
    assert (tmp_path / "sub" / "dir" / "hybridgate.db").is_file()
    assert migrate.current("sqlite:///./sub/dir/hybridgate.db") == migrate.head()


def test_cli_current_and_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert migrate.main(["--url", url, "current"]) == 0
    assert "(empty)" in capsys.readouterr().out
    assert migrate.main(["--url", url, "upgrade"]) == 0
    assert migrate.head() in capsys.readouterr().out


@pytest.mark.parametrize(
    ("given", "sync", "async_"),
    [
        (
            "postgresql+asyncpg://u:p@h:5/db",
            "postgresql+psycopg://u:p@h:5/db",
            "postgresql+asyncpg://u:p@h:5/db",
        ),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        (
            "sqlite+aiosqlite:///./hybridgate.db",
            "sqlite:///./hybridgate.db",
            "sqlite+aiosqlite:///./hybridgate.db",
        ),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        (
            "postgresql+asyncpg://u@h/db?ssl=require",
            "postgresql+psycopg://u@h/db?sslmode=require",
            "postgresql+asyncpg://u@h/db?ssl=require",
        ),
    ],
)
def test_url_translation(given: str, sync: str, async_: str) -> None:
    assert to_sync_url(given).render_as_string(hide_password=False) == sync
    assert to_async_url(given).render_as_string(hide_password=False) == async_


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        to_sync_url("mysql+aiomysql://u@h/db")
