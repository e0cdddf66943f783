"""Budget accounts caught up with the request log: opened from it, then re-read while in use.

Why: the stores count spend in memory or in Redis, which forget it (a restart) or split it (a Redis
outage, or several processes without Redis). The log holds every request's cost durably, so a store
that takes ``max(counted, logged)`` per account (`router.budget.Ledger.reconcile`) never forgets
spend that was logged and never counts a cost twice.

* **Opening.** The first time a process uses an account it reads the log before admitting anything
  on it, so a budget spent before a restart stays spent. The read has a short deadline
  (``timeout_s``); when it fails, requests go on with what the store has, and only the periodic job
  tries the log again until a read succeeds, so a log outage costs requests one deadline, not one
  per request.
* **Catching up.** `due()` hands the periodic job every account used since its last round, so spend
  that other processes logged (and spend counted during a Redis outage) reaches this store within a
  round plus the log sink's batching delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from common.errors import error_text
from router.budget import AccountPeriod, to_nano

log = logging.getLogger("hybridgate.state")


class SpendSource(Protocol):
    async def spent(self, accounts: Sequence[AccountPeriod]) -> dict[str, float]:
        """USD logged per account key."""
        ...


class SpendReconciler:
    """Which accounts this process has opened, which it used lately, and the guarded log read."""

    def __init__(
        self,
        source: SpendSource,
        *,
        timeout_s: float = 1.0,
        max_opened: int = 100_000,
    ) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self._max_opened = max_opened
        self._opened: OrderedDict[str, None] = OrderedDict()
        self._used: dict[str, AccountPeriod] = {}
        self._opening: dict[str, asyncio.Future[None]] = {}  # accounts whose opening read is in flight
        self.log_down = False  # the last read failed: requests stop reading until a periodic one succeeds
        self.failures = 0  # log reads that failed or timed out (observability, tests)

    def unopened(self, accounts: Sequence[AccountPeriod]) -> list[AccountPeriod]:
        """Note the accounts as used; return those this process has not opened yet."""
        todo = []
        for a in accounts:
            self._used[a.key] = a
            if a.key not in self._opened:
                todo.append(a)
        return todo

    async def open(
        self,
        accounts: Sequence[AccountPeriod],
        apply: Callable[[Sequence[AccountPeriod], dict[str, int]], Awaitable[None]],
    ) -> None:
        """Open the accounts this process has not opened yet: read the log and ``apply`` the totals.

        Concurrent first requests on one account share one read (a burst after a restart would
        otherwise send the same sum to the database once per request), and each returns only after
        the totals are applied, so none admits anything on an account not yet opened."""
        todo = self.unopened(accounts)
        if not todo:
            return
        theirs = {id(f): f for a in todo if (f := self._opening.get(a.key)) is not None}
        mine = [a for a in todo if a.key not in self._opening]
        if mine:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for a in mine:
                self._opening[a.key] = done
            try:
                got = await self.read(mine)
                if got:
                    self.opened(list(got))
                    await apply(mine, got)
            finally:
                for a in mine:
                    self._opening.pop(a.key, None)
                done.set_result(None)
        for f in theirs.values():
            await asyncio.shield(f)  # one waiter cancelled must not cancel the others' wait

    def due(self) -> list[AccountPeriod]:
        """The accounts used since the last call (what the periodic catch-up re-reads)."""
        used, self._used = list(self._used.values()), {}
        return used

    def requeue(self, accounts: Sequence[AccountPeriod]) -> None:
        """A periodic read failed: keep its accounts for the next round."""
        for a in accounts:
            self._used.setdefault(a.key, a)

    def opened(self, keys: Sequence[str]) -> None:
        for k in keys:
            self._opened[k] = None
            self._opened.move_to_end(k)
        while len(self._opened) > self._max_opened:  # old periods' accounts fall out first
            self._opened.popitem(last=False)

    async def read(self, accounts: Sequence[AccountPeriod], *, periodic: bool = False) -> dict[str, int] | None:
        """nano-USD logged per account, or None when the log cannot be read right now.

        A request's read (``periodic=False``) is skipped while the log is known to be down."""
        if not accounts or (self.log_down and not periodic):
            return None
        try:
            got = await asyncio.wait_for(self.source.spent(accounts), self.timeout_s)
        except Exception as exc:  # the log database down or slow: budgets go on with what they have
            self.failures += 1
            if not self.log_down:
                log.warning("budgets: request log unreadable (%s); accounts stay as counted",
                            error_text(exc, with_type=True))
            self.log_down = True
            return None
        if self.log_down:
            log.warning("budgets: request log readable again")
        self.log_down = False
        return {a.key: to_nano(got.get(a.key, 0.0)) for a in accounts}
