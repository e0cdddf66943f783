"""Admin-set budgets in one process: a put or delete here is never undone by a sync that read the table
before it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from router.budget import BudgetLimit
from service.budgets import ScopeBudgets
from state.scope_budgets import ScopeBudgetStore
from tests.support.db import migrated_sqlite_url


class SlowReader(ScopeBudgetStore):
    """The real store whose `load` reads the table at once and answers only when ``answer`` is set, as a
    sync whose read reached the database before a write and came back after it."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.answer = asyncio.Event()
        self.read = asyncio.Event()

    async def load(self) -> dict[str, BudgetLimit]:
        rows = await super().load()
        self.read.set()
        await self.answer.wait()
        return rows


async def test_a_sync_that_read_before_a_put_or_delete_never_undoes_it(tmp_path: Path, sqlite_template: Path) -> None:
    engine = create_async_engine(migrated_sqlite_url(sqlite_template, tmp_path / "log.db"))
    try:
        store = SlowReader(engine)
        store.answer.set()
        budgets = ScopeBudgets(store=store)
        await budgets.put("team:kept", 5.0, "month")

        store.answer.clear()
        store.read.clear()
        sync = asyncio.create_task(budgets.sync())
        await store.read.wait()  # the sync has read the table: one budget
        await budgets.put("team:new", 3.0, "day")
        await budgets.delete("team:kept")
        store.answer.set()
        await sync
        assert set(budgets.limits) == {"team:new"}

        await budgets.sync()  # the next read sees both writes
        assert set(budgets.limits) == {"team:new"} and budgets.limits["team:new"].limit_usd == 3.0
    finally:
        await engine.dispose()
