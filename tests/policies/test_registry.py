"""PolicyRegistry: versions, validation on write, rollback, hot reload across processes, DB store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from policies.loader import PolicyValidationError, examples_dir
from policies.registry import (
    InMemoryPolicyStore,
    PolicyExists,
    PolicyNotFound,
    PolicyRegistry,
    StoredPolicy,
    VersionConflict,
)
from tests.support.policies import V1, V2

BAD = "name: p\nselector: {type: cheapest, nope: 1}\n"


async def test_create_update_list_rollback() -> None:
    reg = PolicyRegistry()
    v1 = await reg.create("p", V1, created_by="alice", comment="init")
    assert (v1.version, reg.active_version("p")) == (1, 1)
    assert reg.active("p").selector.type == "cheapest"
    with pytest.raises(PolicyExists):
        await reg.create("p", V1)
    v2 = await reg.update("p", V2, created_by="bob")
    assert v2.version == 2 and reg.active("p").selector.type == "least_busy"
    [summary] = reg.list()
    assert (summary.name, summary.active_version, summary.latest_version, summary.versions) == ("p", 2, 2, 2)
    assert summary.description == "second"
    back = await reg.rollback("p")
    assert back.version == 1 and reg.active("p").description == "first"
    with pytest.raises(PolicyNotFound):
        await reg.rollback("p")  # nothing older than v1
    await reg.rollback("p", 2)
    assert reg.active_version("p") == 2
    assert [v.row.created_by for v in reg.versions("p")] == ["alice", "bob"]
    assert reg.get("p", 1).row.comment == "init"
    assert reg.active("missing") is None
    with pytest.raises(PolicyNotFound):
        await reg.update("missing", V1)


async def test_update_without_activation() -> None:
    reg = PolicyRegistry()
    await reg.create("p", V1)
    v2 = await reg.update("p", V2, activate=False)
    assert v2.version == 2 and reg.active_version("p") == 1
    await reg.activate("p", 2)
    assert reg.active("p").description == "second"


async def test_invalid_policy_is_never_stored() -> None:
    store = InMemoryPolicyStore()
    reg = PolicyRegistry(store)
    await reg.create("p", V1)
    with pytest.raises(PolicyValidationError) as ei:
        await reg.update("p", BAD)
    assert ei.value.errors[0].path == "selector.nope" and ei.value.errors[0].line == 2
    with pytest.raises(PolicyValidationError):
        await reg.create("q", V1)  # YAML says name: p
    assert len(store.rows) == 1 and reg.active_version("p") == 1


async def test_seed_examples_is_idempotent() -> None:
    reg = PolicyRegistry()
    first = await reg.seed_dir(examples_dir())
    again = await reg.seed_dir(examples_dir())
    assert {v.name for v in first} >= {"auto", "cheap-first", "local-first", "bandit"}
    assert again == [] and all(reg.active_version(v.name) == 1 for v in first)


async def test_a_restart_keeps_what_an_admin_changed_until_the_seed_file_changes(tmp_path: Path) -> None:
    """Seeding stores a file's text only when no version of its policy holds it: a version an admin wrote
    (or rolled back to) stays live across restarts; an edited file becomes the next live version."""
    store = InMemoryPolicyStore()
    (tmp_path / "p.yaml").write_text(V1)
    await PolicyRegistry(store).seed_dir(tmp_path)
    admin = PolicyRegistry(store)
    await admin.update("p", V2)
    assert await PolicyRegistry(store).seed_dir(tmp_path) == []  # a restart
    restarted = PolicyRegistry(store)
    await restarted.reload()
    assert restarted.active_version("p") == 2
    await restarted.rollback("p")  # v1, the file's text, live again: a restart leaves it so
    assert await PolicyRegistry(store).seed_dir(tmp_path) == []
    (tmp_path / "p.yaml").write_text(V1 + "# edited\n")
    [v3] = await PolicyRegistry(store).seed_dir(tmp_path)
    assert v3.version == 3


async def test_two_processes_hot_reload_and_version_conflicts() -> None:
    store = InMemoryPolicyStore()  # shared storage: the database
    a, b = PolicyRegistry(store), PolicyRegistry(store)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(b.run_reload_loop(interval_s=0.05, stop=stop))
    try:
        await a.create("p", V1)
        await b.update("p", V2)  # b learns of v1 first (reload before write) and writes v2
        t0 = time.perf_counter()
        await a.rollback("p", 1)
        while b.active_version("p") != 1:
            assert time.perf_counter() - t0 < 2.0, "hot reload took longer than 2 s"
            await asyncio.sleep(0.01)
        assert b.active("p").description == "first"
    finally:
        stop.set()
        await loop_task


async def test_concurrent_writers_get_distinct_versions() -> None:
    store = InMemoryPolicyStore()
    a, b = PolicyRegistry(store), PolicyRegistry(store)
    await a.create("p", V1)
    await b.reload()
    # both believe the next version is 2; the store's uniqueness sorts it out
    va, vb = await asyncio.gather(a.update("p", V2), b.update("p", V2.replace("second", "third")))
    assert sorted([va.version, vb.version]) == [2, 3]


async def test_reload_skips_invalid_stored_rows() -> None:
    store = InMemoryPolicyStore()
    reg = PolicyRegistry(store)
    await reg.create("p", V1)
    from datetime import UTC, datetime

    await store.insert(StoredPolicy("p", 2, BAD, datetime.now(UTC)))
    await store.set_active("p", 2)
    await reg.reload()
    assert reg.active_version("p") == 1  # the broken version is not served
    with pytest.raises(VersionConflict):
        await store.insert(StoredPolicy("p", 2, V2, datetime.now(UTC)))


async def test_an_unusable_stored_row_is_logged_once_not_on_every_poll(caplog: pytest.LogCaptureFixture) -> None:
    """A row this schema refuses (written by hand, or valid under an older release's) never becomes
    usable: re-reading it every second would only repeat the same error lines."""
    from datetime import UTC, datetime

    store = InMemoryPolicyStore()
    reg = PolicyRegistry(store)
    await reg.create("p", V1)
    await store.insert(StoredPolicy("p", 2, BAD, datetime.now(UTC)))
    await store.set_active("p", 2)
    with caplog.at_level("ERROR", logger="hybridgate.policies"):
        for _ in range(5):
            await reg.reload()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "stored policy p v2 is invalid, ignored",
        "active version p v2 is missing or invalid; keeping v1",
    ]
    assert reg.active_version("p") == 1


async def test_a_new_version_goes_after_an_unusable_stored_one() -> None:
    from datetime import UTC, datetime

    store = InMemoryPolicyStore()
    reg = PolicyRegistry(store)
    await reg.create("p", V1)
    await store.insert(StoredPolicy("p", 2, BAD, datetime.now(UTC)))
    v3 = await reg.update("p", V2)
    assert (v3.version, reg.active_version("p")) == (3, 3)
    assert [v.version for v in reg.versions("p")] == [1, 3]


# ---- the database store ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def db_engine(request, tmp_path) -> AsyncIterator:
    from requestlog.tables import policies, policy_active, policy_retirements

    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: sa.MetaData().create_all(c, tables=[policies, policy_active, policy_retirements]))
    yield engine
    await engine.dispose()


async def test_db_store_roundtrip(db_engine) -> None:
    from policies.db_store import DbPolicyStore

    a = PolicyRegistry(DbPolicyStore(db_engine))
    await a.create("p", V1, created_by="alice", comment="init")
    await a.update("p", V2)
    await a.rollback("p")
    b = PolicyRegistry(DbPolicyStore(db_engine))  # another process, same database
    await b.reload()
    assert b.active_version("p") == 1 and b.active("p").description == "first"
    row = b.get("p", 1).row
    assert row.created_by == "alice" and row.comment == "init" and row.created_at.tzinfo is not None
    await b.reload()
    va, vb = await asyncio.gather(a.update("p", V2), b.update("p", V2.replace("second", "third")))
    assert sorted([va.version, vb.version]) == [3, 4]
