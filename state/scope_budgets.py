"""User and team budgets set at run time (admin API), kept in the log database.

Config-file budgets stay in the config; these are the ones an operator adds or changes without a
restart. Every process re-reads them on its sync interval, so a change reaches all of them within
`policy_reload_s`; the process that took the change applies it at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.sql import dialect_insert
from requestlog.tables import scope_budgets
from router.budget import BudgetLimit


class ScopeBudgetStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self) -> dict[str, BudgetLimit]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(scope_budgets))).all()
        return {r.scope: BudgetLimit(r.scope, float(r.limit_usd), r.period) for r in rows}

    async def put(self, limit: BudgetLimit) -> None:
        values = {"scope": limit.scope, "limit_usd": limit.limit_usd, "period": limit.period,
                  "updated_at": datetime.now(UTC)}
        ins = dialect_insert(scope_budgets, self._engine.dialect.name).values(**values)
        stmt = ins.on_conflict_do_update(index_elements=["scope"], set_={
            k: ins.excluded[k] for k in ("limit_usd", "period", "updated_at")})
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def delete(self, scope: str) -> bool:
        async with self._engine.begin() as conn:
            res = await conn.execute(sa.delete(scope_budgets).where(scope_budgets.c.scope == scope))
        return bool(res.rowcount)
