"""What the request log says each budget scope spent in a period: the durable side of budgets.

Budget stores count spend as requests settle, in memory or in Redis, and both can forget: a gateway
restart empties the in-process ledger, a Redis restart (or a Redis outage, during which each process
counts only its own spend) loses or splits the shared accounts. Every request's cost is also in
the log, which survives all of these (its sink spools through database outages). The stores read it
here to open an account and to catch up with what they did not see (`router.budget.Ledger.reconcile`).

One query per (scope kind, period start): ``SUM(cost_usd) … GROUP BY <column>`` over the accounts
asked for, on the ``api_key_id`` index or the ``(user, created_at)`` / ``(team, created_at)`` ones
(migration 0004).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.tables import requests

# Budget scope kind → the request column that names it (see service.routing.limits_for).
_SCOPE_COLUMNS: dict[str, sa.Column[str]] = {
    "key": requests.c.api_key_id,
    "user": requests.c.user,
    "team": requests.c.team,
}


class SpendAccount(Protocol):
    """What a spend query needs of a budget account (`router.budget.AccountPeriod` is one)."""

    @property
    def key(self) -> str: ...

    @property
    def scope(self) -> str: ...

    @property
    def since(self) -> datetime | None: ...


class LoggedSpend:
    """Sums of logged request costs per budget account."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def spent(self, accounts: Sequence[SpendAccount]) -> dict[str, float]:
        """USD logged per account key (0.0 for accounts with no rows; scopes of other kinds are left out)."""
        groups: dict[tuple[str, datetime | None], dict[str, list[str]]] = {}
        for acct in accounts:
            kind, _, name = acct.scope.partition(":")
            if kind in _SCOPE_COLUMNS and name:
                groups.setdefault((kind, acct.since), {}).setdefault(name, []).append(acct.key)
        out: dict[str, float] = {}
        if not groups:
            return out
        async with self._engine.connect() as conn:
            for (kind, since), names in groups.items():
                col = _SCOPE_COLUMNS[kind]
                q = sa.select(col, sa.func.sum(requests.c.cost_usd)).where(col.in_(list(names)))
                if since is not None:
                    q = q.where(requests.c.created_at >= since)
                totals = {name: float(total or 0.0) for name, total in (await conn.execute(q.group_by(col))).all()}
                for name, keys in names.items():
                    for key in keys:
                        out[key] = totals.get(name, 0.0)
        return out
