"""Budget arithmetic: periods, costs, and reserve/commit/release under arbitrary interleavings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.types import DeploymentConfig, Pricing
from router.budget import (
    Account,
    BudgetExceeded,
    BudgetLimit,
    Ledger,
    account_key,
    admits,
    cost_usd,
    max_cost_usd,
    period_end,
    period_key,
    prices,
    to_nano,
)
from state.budgets import InProcessBudgetStore

NOW = datetime(2024, 5, 15, 12, 30, tzinfo=UTC)  # Wednesday, ISO week 20


def test_periods() -> None:
    assert period_key("day", NOW) == "2024-05-15"
    assert period_key("week", NOW) == "2024-W20"
    assert period_key("month", NOW) == "2024-05"
    assert period_key("total", NOW) == "total"
    assert period_end("day", NOW) == datetime(2024, 5, 16, tzinfo=UTC)
    assert period_end("week", NOW) == datetime(2024, 5, 20, tzinfo=UTC)  # next Monday
    assert period_end("month", NOW) == datetime(2024, 6, 1, tzinfo=UTC)
    assert period_end("month", datetime(2024, 12, 31, 23, tzinfo=UTC)) == datetime(2025, 1, 1, tzinfo=UTC)
    assert period_end("total", NOW) is None
    assert account_key(BudgetLimit("key:k", 5, "day"), NOW) == "key:k:day:2024-05-15"


def test_costs() -> None:
    d = DeploymentConfig(name="d", model="m", upstream_model="u", pricing=Pricing(input_per_mtok=3, output_per_mtok=15))
    pin, pout = prices(d)
    assert max_cost_usd(1000, 500, pin, pout) == pytest.approx(0.003 + 0.0075)
    assert cost_usd(1000, 100, pin, pout) == pytest.approx(0.003 + 0.0015)
    assert prices(DeploymentConfig(name="x", model="m", upstream_model="u")) == (0.0, 0.0)
    assert prices(d, {"d": (1.0, 2.0)}) == (1.0, 2.0)
    assert to_nano(1e-9) == 1 and to_nano(0.1 + 0.2, round_up=True) == 300_000_000


def test_admission_modes() -> None:
    a = Account(spent=90, reserved=5)
    assert admits(a, 100, 5, "strict") and not admits(a, 100, 6, "strict")
    assert admits(a, 100, 1000, "lenient") and not admits(Account(spent=100), 100, 1, "lenient")


def test_all_or_nothing_across_accounts() -> None:
    led = Ledger()
    keys = [("key", 100, "strict"), ("team", 10, "strict")]
    assert led.reserve(keys, 20, "r1", 0, 60) == 1  # team refuses
    assert led.accounts["key"].reserved == 0  # ... and nothing was held on the key
    assert led.reserve(keys, 10, "r2", 0, 60) is None
    assert led.accounts["key"].reserved == 10 and led.accounts["team"].reserved == 10


def test_expired_holds_are_swept_and_reserve_is_idempotent() -> None:
    led = Ledger()
    keys = [("a", 100, "strict")]
    assert led.reserve(keys, 60, "r1", 0, 10) is None
    assert led.reserve(keys, 60, "r1", 1, 10) is None  # same id: not held twice
    assert led.accounts["a"].reserved == 60
    assert led.reserve(keys, 60, "r2", 5, 10) == 0
    assert led.reserve(keys, 60, "r2", 10, 10) is None  # r1 expired at t=10 and was released
    assert led.accounts["a"].reserved == 60
    led.commit(["a"], "r1", 30)  # a late commit of an expired hold still charges
    assert led.accounts["a"].spent == 30 and led.accounts["a"].reserved == 60


async def test_store_reserve_commit_release() -> None:
    t = [NOW.timestamp()]
    store = InProcessBudgetStore(clock=lambda: t[0])
    lims = [BudgetLimit("key:k", 1.0, "day"), BudgetLimit("team:t", 10.0, "month")]
    r1 = await store.reserve(lims, 0.6)
    with pytest.raises(BudgetExceeded) as ei:
        await store.reserve(lims, 0.5)
    assert ei.value.scope == "key:k" and ei.value.remaining_usd == pytest.approx(0.4) and ei.value.code == "budget_exceeded"
    await store.commit(r1, 0.1)
    r2 = await store.reserve(lims, 0.5)
    snap = await store.snapshot(lims)
    assert snap["key:k"].spent_usd == pytest.approx(0.1) and snap["key:k"].reserved_usd == pytest.approx(0.5)
    assert snap["team:t"].fraction_remaining == pytest.approx(0.94)
    await store.release(r2)
    await store.charge(lims, 0.2)
    snap = await store.snapshot(lims)
    assert snap["key:k"].spent_usd == pytest.approx(0.3) and snap["key:k"].reserved_usd == 0
    t[0] += 86_400  # next day: the daily key budget starts over, the monthly team one does not
    snap = await store.snapshot(lims)
    assert snap["key:k"].spent_usd == 0 and snap["team:t"].spent_usd == pytest.approx(0.3)


# ---- property: no interleaving overspends ---------------------------------------------------------------

requests = st.lists(
    st.tuples(st.integers(1, 50), st.floats(0, 1), st.booleans()),  # max cost, actual fraction, fails?
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(requests, st.integers(0, 200), st.sampled_from(["strict", "lenient"]), st.randoms(use_true_random=False))
def test_interleavings_never_overspend(reqs, limit, admission, rnd) -> None:
    """Requests reserve, then later commit (actual ≤ max) or release, in a random interleaving."""
    led = Ledger()
    keys = [("acct", limit, admission)]
    pending = list(range(len(reqs)))  # not yet reserved
    held: dict[int, int] = {}  # reserved, not settled: request -> amount
    committed = 0
    max_cost = max(c for c, _, _ in reqs)
    while pending or held:
        if pending and (not held or rnd.random() < 0.5):
            i = pending.pop(rnd.randrange(len(pending)))
            if led.reserve(keys, reqs[i][0], f"r{i}", 0.0, float("inf")) is None:
                held[i] = reqs[i][0]
        else:
            i = rnd.choice(sorted(held))
            amount = held.pop(i)
            c, frac, fails = reqs[i]
            if fails:
                led.release(["acct"], f"r{i}")
            else:
                actual = int(amount * frac)
                led.commit(["acct"], f"r{i}", actual)
                committed += actual
        a = led.accounts["acct"]
        assert a.reserved == sum(held.values()), "reserved must equal the outstanding holds"
        assert a.spent == committed
        if admission == "strict":
            assert a.spent + a.reserved <= limit
        else:  # admitted while anything was left: at most one max cost over
            assert a.spent + a.reserved < limit + max_cost or a.spent + a.reserved == 0
    assert led.accounts["acct"].reserved == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.booleans()), max_size=40), st.randoms(use_true_random=False))
def test_reconciling_with_the_log_counts_every_cost_once(costs, rnd) -> None:
    """Two processes share an account through the log only; each counts its own costs, the log (which
    lags) receives every cost, and reconciling takes the larger side. Spend never goes down, never
    exceeds what was spent, and once the log has everything each process holds the exact total."""
    a, b = Ledger(), Ledger()
    log_total, unlogged, total = 0, [], 0
    for cost, by_a in costs:
        (a if by_a else b).commit(["acct"], "", cost)
        total += cost
        unlogged.append(cost)
        while unlogged and rnd.random() < 0.5:  # the sink writes some of what is pending
            log_total += unlogged.pop(0)
        for led in (a, b):
            before = led._acct("acct").spent
            led.reconcile("acct", log_total)
            led.reconcile("acct", log_total)  # idempotent
            assert before <= led.accounts["acct"].spent <= total
    log_total += sum(unlogged)
    for led in (a, b):
        led.reconcile("acct", log_total)
        assert led.accounts["acct"].spent == total
