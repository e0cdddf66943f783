"""GCRA rate limits and concurrency leases (pure arithmetic and the in-process store)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.ratelimit import GcraTable, Leases, RateLimit, adjust, gcra
from state.ratelimits import InProcessRateLimitStore


def test_gcra_burst_then_spacing() -> None:
    tat, now, rate, burst = 0.0, 100.0, 1.0, 3  # 60/min, burst 3
    admitted = []
    for _ in range(5):
        ok, tat2, retry = gcra(tat, now, 1, rate, burst)
        admitted.append(ok)
        if ok:
            tat = tat2
        else:
            assert retry == pytest.approx(1.0)
    assert admitted == [True, True, True, False, False]
    ok, _, _ = gcra(tat, now + 1.0, 1, rate, burst)
    assert ok


def test_oversized_cost_only_when_idle() -> None:
    ok, tat, _ = gcra(0.0, 10.0, 500, 1.0, 100)  # idle: admitted, pushes tat far out
    assert ok and tat == 510.0
    ok, _, retry = gcra(tat, 11.0, 1, 1.0, 100)
    assert not ok and retry == pytest.approx(510 + 1 - 100 - 11)


def test_an_oversized_request_is_told_to_wait_until_the_limiter_is_idle() -> None:
    """Costing more than the whole burst, it is admitted as soon as the limiter is idle (tat ≤ now), so
    that, not a fit that never comes, is its Retry-After."""
    ok, tat, _ = gcra(0.0, 10.0, 30, 1.0, 100)
    assert ok and tat == 40.0
    ok, _, retry = gcra(tat, 11.0, 500, 1.0, 100)
    assert not ok and retry == pytest.approx(29.0)  # not 40 + 500 - 100 - 11 = 429
    ok, _, _ = gcra(tat, 11.0 + retry, 500, 1.0, 100)
    assert ok  # admitted after exactly that wait


def test_adjust_refund_never_below_now() -> None:
    assert adjust(50.0, 10.0, -100, 1.0) == 10.0
    assert adjust(50.0, 10.0, -10, 1.0) == 40.0
    assert adjust(5.0, 10.0, 10, 1.0) == 20.0


def test_all_or_nothing_across_limits() -> None:
    table = GcraTable()
    lims = [RateLimit("key:k", requests_per_min=60, tokens_per_min=1000)]
    assert table.hit(lims, 900, now=0).allowed
    d = table.hit(lims, 900, now=0)
    assert not d.allowed and d.kind == "tokens" and d.scope == "key:k"
    assert d.retry_after_s == pytest.approx(800 * 60 / 1000)
    # the refused request did not use a request cell: 58 more requests of 0 tokens fit
    assert sum(table.hit(lims, 0, now=0).allowed for _ in range(60)) == 59


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 3)), max_size=80), st.integers(1, 10), st.floats(0.2, 5))
def test_gcra_never_exceeds_rate_plus_burst(arrivals, burst, rate) -> None:
    """Over any prefix [t0, t], admitted units ≤ burst + rate · (t − t0) (cost ≤ burst)."""
    tat, now, t0, total = 0.0, 0.0, 0.0, 0
    for dt, cost in arrivals:
        now += dt
        cost = min(cost, burst)
        ok, new_tat, retry = gcra(tat, now, cost, rate, burst)
        if ok:
            tat = new_tat
            total += cost
        else:
            assert retry > 0
        assert total <= burst + rate * (now - t0) + 1e-9


async def test_in_process_store_and_leases() -> None:
    t = [0.0]
    store = InProcessRateLimitStore(clock=lambda: t[0])
    lims = [RateLimit("user:u", requests_per_min=2, request_burst=2)]
    assert (await store.hit(lims, 10)).allowed and (await store.hit(lims, 10)).allowed
    d = await store.hit(lims, 10)
    assert not d.allowed and d.retry_after_s == pytest.approx(30.0)
    t[0] = 30.0
    assert (await store.hit(lims, 10)).allowed
    a = await store.acquire_slot("deployment:x", 2, ttl_s=60)
    b = await store.acquire_slot("deployment:x", 2, ttl_s=60)
    assert a and b and await store.acquire_slot("deployment:x", 2) is None
    assert await store.in_flight(["deployment:x", "deployment:y"]) == {"deployment:x": 2, "deployment:y": 0}
    await store.release_slot("deployment:x", a)
    assert await store.acquire_slot("deployment:x", 2) is not None
    t[0] = 200.0  # leases expired (crashed holders)
    assert await store.in_flight(["deployment:x"]) == {"deployment:x": 1}  # the ttl=600 default one remains


def test_leases_reacquire_same_id_refreshes() -> None:
    lz = Leases({})
    assert lz.acquire("a", 1, 0, 10) and lz.acquire("a", 1, 5, 10)
    assert lz.held["a"] == 15 and not lz.acquire("b", 1, 6, 10)
