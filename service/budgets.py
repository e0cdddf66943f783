"""User and team budget limits as the request service applies them.

Two sources: the config file's ``budgets`` (changed only there) and those set through the admin API
(`state.scope_budgets`: a database table every process re-reads on its sync interval). An admin
budget overrides a config budget of the same scope. Reserving and settling spend against these
limits is `service.routing.GatewayRouter`'s job; the arithmetic is `router.budget`'s, the
accounts are `state.budgets`'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from router.budget import BudgetLimit, Period, period_start
from state.budgets import BudgetStore
from state.scope_budgets import ScopeBudgetStore


class ConfiguredBudget(Protocol):
    """A budget entry of the config file."""

    @property
    def scope(self) -> str: ...
    @property
    def limit_usd(self) -> float: ...
    @property
    def period(self) -> Any: ...


def config_limits(entries: Iterable[ConfiguredBudget]) -> dict[str, BudgetLimit]:
    return {b.scope: BudgetLimit(b.scope, b.limit_usd, b.period) for b in entries}


class ScopeBudgets:
    """The user and team limits in force in this process: config ones, overridden by admin ones."""

    def __init__(
        self, config: Mapping[str, BudgetLimit] | None = None, store: ScopeBudgetStore | None = None
    ) -> None:
        self.config: dict[str, BudgetLimit] = dict(config or {})
        self.admin: dict[str, BudgetLimit] = {}
        self.limits: dict[str, BudgetLimit] = dict(self.config)
        self.store = store
        # counts this process's own puts and deletes: a sync whose read overlapped one may have read the
        # table before that write, so its result is dropped (the next sync reads it again)
        self._writes = 0

    def set_admin(self, limits: Mapping[str, BudgetLimit]) -> None:
        self.admin = dict(limits)
        self.limits = self.config | self.admin

    async def sync(self) -> None:
        """Take the admin budgets any process has set (the last read is kept while the database is away)."""
        if self.store is not None:
            writes = self._writes
            loaded = await self.store.load()
            if writes == self._writes:
                self.set_admin(loaded)

    async def put(self, scope: str, limit_usd: float, period: Period) -> BudgetLimit:
        """Set an admin budget: stored for every process, applied here at once. Raises the database's
        errors (`requestlog.sql.DB_ERRORS`) when it is away; nothing changes then."""
        limit = BudgetLimit(scope, limit_usd, period)
        if self.store is not None:
            await self.store.put(limit)
        self._writes += 1
        self.set_admin(self.admin | {scope: limit})
        return limit

    async def delete(self, scope: str) -> Literal["deleted", "in_config", "absent"]:
        """Remove an admin budget; a config budget of the scope (if any) applies again."""
        removed = await self.store.delete(scope) if self.store is not None else scope in self.admin
        self._writes += 1
        self.set_admin({k: v for k, v in self.admin.items() if k != scope})
        if removed:
            return "deleted"
        return "in_config" if scope in self.config else "absent"

    async def listing(self, accounts: BudgetStore) -> list[dict[str, Any]]:
        """Every limit in force with what its current period has spent and holds reserved."""
        limits = list(self.limits.values())
        snaps = await accounts.snapshot(limits)
        out = []
        for lim in sorted(limits, key=lambda x: x.scope):
            snap = snaps.get(lim.scope)
            spent = snap.spent_usd if snap else 0.0
            reserved = snap.reserved_usd if snap else 0.0
            out.append(
                {
                    "scope": lim.scope,
                    "limit_usd": lim.limit_usd,
                    "period": lim.period,
                    "source": "admin" if lim.scope in self.admin else "config",
                    "spent_usd": spent,
                    "reserved_usd": reserved,
                    "remaining_usd": lim.limit_usd - spent - reserved,
                }
            )
        return out


def spend_window_start(period: str, now: datetime) -> datetime:
    """Where the budget period that holds ``now`` began (ten years back for a ``total`` budget)."""
    return period_start(period, now) or now - timedelta(days=3650)  # type: ignore[arg-type]
