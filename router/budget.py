"""Budget arithmetic: USD per period per key/user/team, reserve-then-commit.

Before a call the gateway *reserves* the most the call can cost (prompt tokens × input price +
max_tokens × output price); after it, it *commits* the actual cost, which releases the rest of the
reservation. Admission looks at spent + reserved, so concurrent requests cannot all see the same
"enough left": with ``strict`` admission the limit is never exceeded while actual costs stay
within their reservations; with ``lenient`` admission (admit while anything is left) the overshoot
is at most one request's maximum cost. Money is kept in integer nano-USD so that the in-process
ledger and the Redis Lua script compute bit-identical results (no float drift over millions of
small charges).

Pure: `Ledger` takes ``now`` explicitly and is the reference model for the Redis store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from common.types import DeploymentConfig, RequestFeatures

Period = Literal["day", "week", "month", "total"]
Admission = Literal["strict", "lenient"]
NANO = 1_000_000_000


def to_nano(usd: float, *, round_up: bool = False) -> int:
    """USD → integer nano-USD. Reservations round up so they never under-reserve."""
    x = usd * NANO
    return math.ceil(x - 1e-6) if round_up else round(x)


def to_usd(nano: int) -> float:
    return nano / NANO


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """A spending cap for one scope (``"key:<id>"``, ``"user:<name>"``, ``"team:<name>"``)."""

    scope: str
    limit_usd: float
    period: Period = "month"
    admission: Admission = "strict"


def period_key(period: Period, now: datetime) -> str:
    """Calendar period ``now`` falls in (UTC): ``2024-05-15``, ``2024-W20``, ``2024-05``, ``total``."""
    t = now.astimezone(UTC) if now.tzinfo is not None else now
    if period == "day":
        return t.strftime("%Y-%m-%d")
    if period == "week":
        y, w, _ = t.isocalendar()
        return f"{y}-W{w:02d}"
    if period == "month":
        return t.strftime("%Y-%m")
    return "total"


def _utc_midnight(now: datetime) -> datetime:
    """The start of ``now``'s UTC day (a naive ``now`` is taken as UTC)."""
    t = now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def period_end(period: Period, now: datetime) -> datetime | None:
    """When the current period ends (UTC); None for ``total``. Used to expire old accounts."""
    day = _utc_midnight(now)
    if period == "day":
        return day + timedelta(days=1)
    if period == "week":
        return day + timedelta(days=7 - day.weekday())
    if period == "month":
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return None


def period_start(period: Period, now: datetime) -> datetime | None:
    """When the current period began (UTC); None for ``total`` (since the beginning). The window
    the request log is summed over to open an account (`Ledger.reconcile`)."""
    day = _utc_midnight(now)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return None


def account_key(limit: BudgetLimit, now: datetime) -> str:
    return f"{limit.scope}:{limit.period}:{period_key(limit.period, now)}"


@dataclass(frozen=True, slots=True)
class AccountPeriod:
    """One budget account and the window of the request log it covers.

    The window's ends are properties: requests build one of these per budget on every call, and
    only a read of the log needs the window."""

    key: str
    scope: str
    period: Period
    at: datetime  # a moment inside the period

    @property
    def since(self) -> datetime | None:
        """Start of the period (None: all of the log)."""
        return period_start(self.period, self.at)

    @property
    def until(self) -> datetime | None:
        """End of the period (None: never); stores expire the account after it."""
        return period_end(self.period, self.at)


def account_period(limit: BudgetLimit, now: datetime) -> AccountPeriod:
    return AccountPeriod(account_key(limit, now), limit.scope, limit.period, now)


def prices(dep: DeploymentConfig, overrides: dict[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    """USD per million tokens (input, output); missing pricing counts as free."""
    if overrides and dep.name in overrides:
        return overrides[dep.name]
    return dep.pricing.input_per_mtok or 0.0, dep.pricing.output_per_mtok or 0.0


def cost_usd(prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> float:
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


def max_cost_usd(prompt_tokens: int, max_tokens: int, price_in: float, price_out: float) -> float:
    """The most a call can cost: what must be reserved before it starts."""
    return cost_usd(prompt_tokens, max_tokens, price_in, price_out)


def worst_case_tokens(features: RequestFeatures, dep: DeploymentConfig) -> tuple[int, int]:
    """The most (prompt, output) tokens one call of the request can use on ``dep``: the output is
    every choice (``n``) at its cap, which is the request's max_tokens or, when it sets none, the
    model's output limit (``max_output_tokens``, else what the context window leaves after the
    prompt); embeddings produce none."""
    if features.endpoint == "embedding":
        return features.prompt_tokens, 0
    if features.max_tokens is not None:  # 0 (a completions echo that scores the prompt) generates nothing
        cap = features.max_tokens
    else:
        cap = dep.max_output_tokens or max(1, dep.context_window - features.prompt_tokens)
    return features.prompt_tokens, cap * max(1, features.choices)


def worst_case_usd(
    features: RequestFeatures,
    first: Iterable[DeploymentConfig],
    then: Iterable[DeploymentConfig] = (),
    price: Callable[[DeploymentConfig], tuple[float, float]] = prices,
) -> float:
    """What a request may cost at most, to reserve before any call: the priciest deployment that may
    answer it (``first``: the plan's candidates, one of which answers), plus the priciest second
    answer when a cascade may escalate (``then``). Every endpoint builds `RequestFeatures` from its
    own format, so one rule covers them all."""

    def most(deployments: Iterable[DeploymentConfig]) -> float:
        return max((max_cost_usd(*worst_case_tokens(features, d), *price(d)) for d in deployments), default=0.0)

    return most(first) + most(then)


class BudgetExceeded(Exception):
    """Raised by stores when a reservation does not fit; the gateway maps it to 429 budget_exceeded."""

    code = "budget_exceeded"

    def __init__(self, scope: str, limit_usd: float, remaining_usd: float, period: str) -> None:
        super().__init__(f"budget exceeded for {scope} ({period}): {remaining_usd:.6f} of {limit_usd:.6f} USD left")
        self.scope = scope
        self.limit_usd = limit_usd
        self.remaining_usd = remaining_usd
        self.period = period


@dataclass(frozen=True, slots=True)
class Reservation:
    """Handle returned by ``reserve``; pass it to ``commit`` or ``release``."""

    id: str
    amount_usd: float
    accounts: tuple[str, ...]  # account keys charged
    expires_at: float  # ledger clock seconds; an expired reservation is released automatically


@dataclass(slots=True)
class Account:
    """nano-USD. ``holds`` maps reservation id → (amount, expires_at)."""

    spent: int = 0
    reserved: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)


def admits(acct: Account, limit_nano: int, amount: int, admission: Admission) -> bool:
    """The single admission rule, shared by the ledger and (transcribed) the Lua script."""
    used = acct.spent + acct.reserved
    if admission == "lenient":
        return used < limit_nano
    return used + amount <= limit_nano


class Ledger:
    """In-memory accounts: the reference semantics of budget storage.

    ``reserve`` is all-or-nothing across the accounts of a request (key, user, team): a request
    refused by its team budget leaves nothing reserved on its key budget.
    """

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}

    def _acct(self, key: str) -> Account:
        a = self.accounts.get(key)
        if a is None:
            a = self.accounts[key] = Account()
        return a

    def sweep(self, key: str, now: float) -> None:
        """Release holds whose request died without commit/release (crashed process)."""
        a = self.accounts.get(key)
        if a is None:
            return
        for rid, (amt, exp) in list(a.holds.items()):
            if exp <= now:
                del a.holds[rid]
                a.reserved -= amt

    def reserve(
        self, keys: list[tuple[str, int, Admission]], amount: int, rid: str, now: float, ttl_s: float
    ) -> int | None:
        """Reserve ``amount`` on every (account, limit, admission); None if admitted, else the index of
        the first account that refused."""
        for key, _, _ in keys:
            self.sweep(key, now)
        if keys and all(rid in self._acct(key).holds for key, _, _ in keys):
            return None  # a retried reserve of a live hold: already admitted
        for n, (key, limit, admission) in enumerate(keys):
            if not admits(self._acct(key), limit, amount, admission):
                return n
        for key, _, _ in keys:
            a = self._acct(key)
            if rid not in a.holds:
                a.holds[rid] = (amount, now + ttl_s)
                a.reserved += amount
        return None

    def commit(self, keys: list[str], rid: str, actual: int) -> None:
        """Charge the actual cost and drop the hold (which may already have expired)."""
        for key in keys:
            a = self._acct(key)
            hold = a.holds.pop(rid, None)
            if hold is not None:
                a.reserved -= hold[0]
            a.spent += actual

    def reconcile(self, key: str, logged: int) -> None:
        """Raise the account's spend to what the request log recorded for its period, never lower it.

        Why a maximum: the log is the durable record (it survives restarts of the gateway and of
        Redis, and holds what other processes spent), while the ledger may hold charges whose log
        rows are still on their way. Taking the larger of the two counts each cost once whichever
        side saw it first, and can be repeated at any time.
        """
        a = self._acct(key)
        a.spent = max(a.spent, logged)

    def release(self, keys: list[str], rid: str) -> None:
        for key in keys:
            a = self.accounts.get(key)
            if a is not None:
                hold = a.holds.pop(rid, None)
                if hold is not None:
                    a.reserved -= hold[0]
