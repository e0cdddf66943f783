"""Retiring a policy: out of routing in every registry sharing the store, versions kept as history,
numbering continued by a later write, and seeding at start that never undoes a retirement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from policies.registry import InMemoryPolicyStore, PolicyNotFound, PolicyRegistry, PolicyRetired
from requestlog.migrate import upgrade
from tests.support.db import migrated_sqlite_url
from tests.support.policies import V1, V2
from tests.support.wait import await_until


async def test_retire_takes_a_policy_out_of_routing_and_keeps_its_versions() -> None:
    reg = PolicyRegistry()
    await reg.create("p", V1, created_by="alice")
    await reg.update("p", V2)
    r = await reg.retire("p", retired_by="bob")
    assert (r.name, r.version, r.retired_by) == ("p", 2, "bob") and r.retired_at.tzinfo is not None
    assert reg.active("p") is None and reg.active_version("p") is None
    assert [v.version for v in reg.versions("p")] == [1, 2] and reg.names() == ["p"]
    assert reg.retired("p") == r and reg.retirements("p") == [r]
    [summary] = reg.list()
    assert (summary.active_version, summary.latest_version, summary.retired) == (None, 2, r)
    with pytest.raises(PolicyRetired) as again:
        await reg.retire("p")
    assert again.value.retirement == r
    with pytest.raises(PolicyRetired):
        await reg.rollback("p")  # no live version to go back from
    with pytest.raises(PolicyNotFound):
        await reg.retire("missing")


async def test_a_write_after_retirement_routes_again_with_the_next_version() -> None:
    reg = PolicyRegistry()
    await reg.create("p", V1)
    await reg.update("p", V2)
    await reg.retire("p")
    # the same text as the last version still makes a new version: a retired policy has no live one to match
    v3 = await reg.put("p", V2, created_by="carol")
    assert (v3.version, reg.active_version("p")) == (3, 3) and reg.active("p").description == "second"
    assert reg.retired("p") is None
    assert len(reg.retirements("p")) == 1  # the history stays
    await reg.retire("p")
    assert [r.version for r in reg.retirements("p")] == [2, 3]


async def test_activating_a_stored_version_restores_a_retired_policy() -> None:
    reg = PolicyRegistry()
    await reg.create("p", V1)
    await reg.update("p", V2)
    await reg.retire("p")
    await reg.activate("p", 1)
    assert reg.active("p").description == "first" and reg.retired("p") is None


async def test_another_registry_sees_the_retirement_by_polling() -> None:
    store = InMemoryPolicyStore()  # shared storage: the database
    a, b = PolicyRegistry(store), PolicyRegistry(store)
    await a.create("p", V1)
    await b.reload()
    assert b.active("p") is not None
    stop = asyncio.Event()
    loop_task = asyncio.create_task(b.run_reload_loop(interval_s=0.05, stop=stop))
    try:
        await a.retire("p", retired_by="ops")
        await await_until(lambda: b.active("p") is None, 2.0, what="retirement not seen by the other registry")
        assert b.retired("p").retired_by == "ops"
        await a.put("p", V2)
        await await_until(lambda: b.active_version("p") == 2, 2.0, what="the new version not seen")
        assert b.retired("p") is None
    finally:
        stop.set()
        await loop_task


async def test_two_registries_retiring_at_once_record_one_retirement() -> None:
    store = InMemoryPolicyStore()
    a, b = PolicyRegistry(store), PolicyRegistry(store)
    await a.create("p", V1)
    await b.reload()
    results = await asyncio.gather(a.retire("p"), b.retire("p"), return_exceptions=True)
    assert sorted(type(x).__name__ for x in results) == ["PolicyRetired", "Retirement"]
    assert len(store.retirements) == 1


# ---- seeding at start ------------------------------------------------------------------------------


async def test_a_retired_seeded_policy_stays_retired_until_its_file_changes(tmp_path: Path) -> None:
    store = InMemoryPolicyStore()
    seed = tmp_path / "policies"
    seed.mkdir()
    (seed / "p.yaml").write_text(V1)
    first = PolicyRegistry(store)  # a gateway's first start
    assert [v.version for v in await first.seed_dir(seed)] == [1]
    await first.retire("p")

    restarted = PolicyRegistry(store)
    assert await restarted.seed_dir(seed) == []
    assert restarted.active("p") is None and len(store.rows) == 1

    (seed / "p.yaml").write_text(V2)  # a new release of the file
    again = PolicyRegistry(store)
    [v2] = await again.seed_dir(seed)
    assert (v2.version, again.active("p").description) == (2, "second")


async def test_a_retired_policy_is_not_seeded_back_from_text_an_admin_once_stored(tmp_path: Path) -> None:
    """The file is unchanged since it was seeded even when an admin wrote other versions afterwards:
    the restart keeps the retirement (the file's text is among the stored versions)."""
    store = InMemoryPolicyStore()
    seed = tmp_path / "policies"
    seed.mkdir()
    (seed / "p.yaml").write_text(V1)
    reg = PolicyRegistry(store)
    await reg.seed_dir(seed)
    await reg.put("p", V2, created_by="admin-api")
    await reg.retire("p")
    restarted = PolicyRegistry(store)
    assert await restarted.seed_dir(seed) == [] and restarted.active("p") is None


# ---- the database store, on both databases ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def migrated_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    if request.param == "sqlite":
        url = migrated_sqlite_url(request.getfixturevalue("sqlite_template"), tmp_path / "p.db")
    else:
        url = request.getfixturevalue("fresh_pg_url")
        await asyncio.to_thread(upgrade, url)
    engine = create_async_engine(url)
    yield engine
    await engine.dispose()


async def test_db_store_retirement_is_seen_by_another_process_with_its_history(migrated_engine) -> None:
    from policies.db_store import DbPolicyStore

    a = PolicyRegistry(DbPolicyStore(migrated_engine))
    b = PolicyRegistry(DbPolicyStore(migrated_engine))  # another process, same database
    await a.create("p", V1)
    await a.update("p", V2)
    await b.reload()
    assert b.active_version("p") == 2
    r = await a.retire("p", retired_by="admin-api")
    assert r.version == 2
    assert await b.reload() is True
    assert b.active("p") is None and b.active_version("p") is None
    seen = b.retired("p")
    assert (seen.version, seen.retired_by) == (2, "admin-api")
    assert abs((seen.retired_at - r.retired_at).total_seconds()) < 1e-3 and seen.retired_at.tzinfo is not None
    assert [v.version for v in b.versions("p")] == [1, 2]
    with pytest.raises(PolicyRetired):
        await b.retire("p")  # already retired by the other process
    v3 = await b.put("p", V1)
    assert v3.version == 3
    await a.reload()
    assert a.active_version("p") == 3 and a.retired("p") is None
    await a.retire("p", retired_by="console")
    fresh = PolicyRegistry(DbPolicyStore(migrated_engine))
    await fresh.reload()
    assert [(x.version, x.retired_by) for x in fresh.retirements("p")] == [(2, "admin-api"), (3, "console")]


async def test_db_store_concurrent_retirements_record_one(migrated_engine) -> None:
    from policies.db_store import DbPolicyStore

    a = PolicyRegistry(DbPolicyStore(migrated_engine))
    b = PolicyRegistry(DbPolicyStore(migrated_engine))
    await a.create("p", V1)
    await b.reload()
    results = await asyncio.gather(a.retire("p"), b.retire("p"), return_exceptions=True)
    assert sorted(type(x).__name__ for x in results) == ["PolicyRetired", "Retirement"], results
    fresh = PolicyRegistry(DbPolicyStore(migrated_engine))
    await fresh.reload()
    assert len(fresh.retirements("p")) == 1
