"""Stored Responses on Postgres and SQLite: put, read back only by the key that created it, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from requestlog.migrate import upgrade
from requestlog.stored_responses import ResponseStore


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("fresh_pg_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    return url


async def test_a_stored_response_is_read_and_deleted_only_by_its_key(db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        store = ResponseStore(engine)
        response = {"id": "resp_1", "object": "response", "output": [], "model": "m"}
        history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        await store.put("resp_1", "key-a", "m", response, [{"id": "msg_1", "type": "message"}], history)
        await store.put("resp_2", None, "m", response | {"id": "resp_2"}, [], [])
        got = await store.get("resp_1", "key-a")
        assert got is not None and got.response == response and got.history == history
        assert got.input_items == [{"id": "msg_1", "type": "message"}]
        assert await store.get("resp_1", "key-b") is None and await store.get("resp_1", None) is None
        assert (await store.get("resp_2", None)) is not None and await store.get("resp_2", "key-a") is None
        assert not await store.delete("resp_1", "key-b")
        assert await store.delete("resp_1", "key-a") and await store.get("resp_1", "key-a") is None
    finally:
        await engine.dispose()


async def test_an_id_with_a_nul_is_not_found_on_either_database(db_url: str) -> None:
    """No stored id holds a NUL (ids are generated); Postgres refuses one in a query, which was a 500."""
    engine = create_async_engine(db_url)
    try:
        store = ResponseStore(engine)
        assert await store.get("resp_\x00", None) is None
        assert await store.get("resp_\x00", "key-a") is None
        assert not await store.delete("resp_\x00", None)
    finally:
        await engine.dispose()
