"""Circuit breaker state machine: examples and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.breaker import BreakerConfig, CircuitBreaker, quantile

CFG = BreakerConfig(
    window_s=10, buckets=5, min_requests=4, error_rate=0.5, consecutive_failures=3, cooldown_s=5,
    half_open_probes=2, successes_to_close=2, probe_timeout_s=20, latency_ms=500, latency_samples=20,
)  # fmt: skip


def test_consecutive_failures_trip() -> None:
    b = CircuitBreaker(BreakerConfig(consecutive_failures=3, min_requests=100))
    for t in range(2):
        assert b.record(t, ok=False) == "closed"
    assert b.record(2, ok=False) == "open"
    assert not b.allow(3)


def test_error_rate_needs_min_requests() -> None:
    b = CircuitBreaker(BreakerConfig(consecutive_failures=0, min_requests=4, error_rate=0.5))
    b.record(0, False)
    b.record(0.1, True)
    b.record(0.2, False)
    assert b.state == "closed"  # 2/3 failed, but only 3 requests
    assert b.record(0.3, True) == "open"  # 2/4 = 0.5


def test_window_slides() -> None:
    b = CircuitBreaker(BreakerConfig(window_s=10, buckets=10, consecutive_failures=0, min_requests=4, error_rate=0.5))
    b.record(0, False)
    b.record(0, False)
    for t in (20, 20.1, 20.2):
        b.record(t, True)
    assert b.window_counts(20.2) == (3, 0)  # the failures at t=0 left the window
    assert b.record(20.3, False) == "closed"  # 1/4


def test_latency_quantile_trips() -> None:
    b = CircuitBreaker(BreakerConfig(consecutive_failures=0, min_requests=5, latency_ms=1000, latency_quantile=0.8))
    for i, ms in enumerate([100, 100, 100, 2000]):
        b.record(i * 0.1, True, ms)
    assert b.state == "closed"
    assert b.record(0.5, True, 3000) == "open"  # p80 of [100,100,100,2000,3000] = 2000


def test_cooldown_half_open_probes_and_close() -> None:
    b = CircuitBreaker(CFG)
    for t in (0, 0.1, 0.2):
        b.record(t, False)
    assert b.state == "open" and b.state_at(4.9) == "open" and b.state_at(5.2) == "half_open"
    assert not b.allow(4.9)
    first, second = b.allow(5.2), b.allow(5.3)
    assert first and second and first.probe != second.probe  # two probe slots, each under its own token
    assert not b.allow(5.4)
    assert b.record(6, True, probe=first.probe) == "half_open"  # one success of two needed
    third = b.allow(6.1)  # slot freed by the finished probe
    assert third and third.probe not in (first.probe, second.probe)
    assert b.record(7, True, probe=second.probe) == "closed"
    assert b.window_counts(7) == (0, 0) and b.probes == {}


def test_half_open_failure_reopens() -> None:
    b = CircuitBreaker(CFG)
    for t in (0, 0.1, 0.2):
        b.record(t, False)
    assert b.allow(6)
    assert b.record(6.5, False) == "open"
    assert b.opened_at == 6.5 and not b.allow(10)
    assert b.allow(11.5)


def test_lost_probe_slot_is_reclaimed() -> None:
    b = CircuitBreaker(CFG)
    for t in (0, 0.1, 0.2):
        b.record(t, False)
    assert b.allow(6) and b.allow(6)  # both probes never report back
    assert not b.allow(10)
    assert b.allow(26.1)  # probe_timeout_s later


def test_release_gives_back_a_half_open_probe_slot_and_nothing_else() -> None:
    """A probe that ends with no verdict (the upstream refused the client's request as invalid, or the
    client left) frees its slot at once: the next request probes, and the breaker's state is unchanged.
    Giving the same slot back again frees nothing: another probe keeps its slot."""
    b = CircuitBreaker(CFG)
    for t in (0, 0.1, 0.2):
        b.record(t, False)
    first, second = b.allow(6), b.allow(6)
    assert first and second and not b.allow(6)  # both probe slots taken
    assert b.release(6.1, first.probe) == "half_open" and list(b.probes) == [second.probe]
    assert b.probe_successes == 0
    third = b.allow(6.2)  # well before probe_timeout_s
    assert third
    for _ in range(3):
        b.release(6.3, first.probe)  # a give-back repeated: its slot is no longer there to free
    b.release(6.3, None)  # an attempt that took no slot
    assert set(b.probes) == {second.probe, third.probe} and not b.allow(6.4)
    closed = CircuitBreaker(CFG)
    closed.record(0, False)
    assert closed.release(1, None) == "closed" and closed.consecutive == 1 and closed.window_counts(1) == (1, 1)
    assert b.record(7, True, probe=second.probe) == "half_open" and b.record(7.1, True, probe=third.probe) == "closed"


def test_a_late_give_back_never_frees_the_slot_of_the_probe_that_replaced_it() -> None:
    """A probe whose slot expired (its result took longer than probe_timeout_s, or its give-back was
    lost and is retried late) gives back nothing when it does report: the slot now belongs to the
    probe admitted after the timeout, and no third request probes beside it. Its verdict still counts."""
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=5, half_open_probes=1,
                                     successes_to_close=2, probe_timeout_s=20))
    b.record(0, False)
    late = b.allow(6)
    assert late and not b.allow(25.9)
    fresh = b.allow(26.1)  # late's slot expired: reclaimed for a new probe
    assert fresh and fresh.probe != late.probe
    b.release(26.2, late.probe)
    assert not b.allow(26.3)
    assert b.record(26.4, True, probe=late.probe) == "half_open" and b.probe_successes == 1
    assert not b.allow(26.5) and list(b.probes) == [fresh.probe]
    assert b.record(27, True, probe=fresh.probe) == "closed"


def test_straggler_results_while_open_are_ignored() -> None:
    b = CircuitBreaker(CFG)
    for t in (0, 0.1, 0.2):
        b.record(t, False)
    assert b.record(1, True) == "open" and b.state == "open"


def test_force() -> None:
    b = CircuitBreaker(CFG)
    b.force("open")
    assert not b.allow(0) and b.state_at(0) == "open"
    b.force("closed")
    for t in range(10):
        b.record(t, False)
    assert b.allow(10) and b.state_at(10) == "closed"
    b.force(None)
    assert b.state == "closed" and b.forced is None and b.window_counts(10) == (0, 0)


def test_seconds_until_half_open_counts_down_the_cooldown() -> None:
    """What a client refused by an open breaker is told to wait: the rest of the cooldown, 0 once a
    probe would be admitted (or while closed), None while forced open (it never reopens by itself)."""
    b = CircuitBreaker(CFG)
    assert b.seconds_until_half_open(0) == 0.0
    for t in (10.0, 10.1, 10.2):
        b.record(t, False)
    assert b.state == "open"
    assert b.seconds_until_half_open(10.2) == pytest.approx(5.0)
    assert b.seconds_until_half_open(13.7) == pytest.approx(1.5)
    assert b.seconds_until_half_open(15.2) == 0.0 and b.state_at(15.2) == "half_open"
    assert b.allow(15.2) and b.seconds_until_half_open(15.3) == 0.0  # half-open, a probe out
    b.force("open")
    assert b.seconds_until_half_open(100) is None
    b.force("closed")
    assert b.seconds_until_half_open(100) == 0.0


def test_quantile_nearest_rank() -> None:
    assert quantile([5, 1, 3, 2, 4], 0.5) == 3
    assert quantile([1, 2, 3, 4], 0.95) == 4
    assert quantile([7], 0.0) == 7


# ---- properties ------------------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["allow", "ok", "fail", "slow", "release", "replay", "force_open", "force_closed",
                         "unforce"]),
        st.sampled_from([0.0, 0.05, 0.5, 1.0, 2.5, 6.0, 25.0]),
    ),
    max_size=120,
)

LEGAL = {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}


@settings(max_examples=300, deadline=None)
@given(ops)
def test_breaker_properties(seq: list[tuple[str, float]]) -> None:
    b = CircuitBreaker(CFG)
    now = 1000.0
    run_of_failures = 0
    held: list[str] = []  # probe tokens admitted and not yet given back, oldest first
    given: list[str] = []  # probe tokens given back already
    for op, dt in seq:
        now += dt
        before = b.state
        was_forced = b.forced
        if op == "allow":
            opened_at = b.opened_at
            admission = b.allow(now)
            allowed = admission.allowed
            if admission.probe is not None:
                assert allowed and admission.probe in b.probes and admission.probe not in held + given
                held.append(admission.probe)
            if was_forced == "open":
                assert not allowed
            elif was_forced == "closed":
                assert allowed
            elif before == "open" and now < opened_at + CFG.cooldown_s:
                assert not allowed, "open must reject until the cooldown has passed"
            elif before == "closed":
                assert allowed
        elif op in ("ok", "fail", "slow"):
            probe = held.pop(0) if held else None
            b.record(now, op != "fail", 2000.0 if op == "slow" else 50.0, probe)
            given += [probe] if probe is not None else []
            assert probe not in b.probes
        elif op == "release":
            probe = held.pop(0) if held else None
            b.release(now, probe)
            given += [probe] if probe is not None else []
            assert b.state == before and probe not in b.probes  # a release never changes the state
        elif op == "replay":
            slots = dict(b.probes)
            b.release(now, given[-1] if given else None)  # a give-back repeated frees no other slot
            assert b.state == before and b.probes == slots
        elif op == "force_open":
            b.force("open")
        elif op == "force_closed":
            b.force("closed")
        else:
            b.force(None)

        if op in ("ok", "fail", "slow", "allow") and before != b.state:
            assert (before, b.state) in LEGAL, f"illegal transition {before}→{b.state}"
            if b.state == "half_open":
                assert op == "allow"
        # consistency of counters
        req, fail = b.window_counts(now)
        assert 0 <= fail <= req
        assert len(b.probes) <= CFG.half_open_probes and set(b.probes) <= set(held)
        assert b.consecutive >= 0 and len(b.latencies) <= CFG.latency_samples
        assert 0 <= b.probe_successes < CFG.successes_to_close or b.state != "half_open"
        if b.state == "closed" and b.forced is None:
            assert b.consecutive < CFG.consecutive_failures
        if b.state != "closed":
            assert b.window_counts(now) == (0, 0) or b.forced is not None
        # N consecutive failures while closed and unforced always trip
        if op == "fail" and before == "closed" and was_forced is None:
            run_of_failures += 1
        elif op in ("ok", "slow", "force_open", "force_closed", "unforce") or b.state != "closed":
            run_of_failures = 0
        if op == "fail" and run_of_failures >= CFG.consecutive_failures and was_forced is None:
            assert b.state == "open"
            run_of_failures = 0
        assert b.state_at(now) in ("closed", "open", "half_open")
        # the wait until half-open agrees with what routing sees now and after the wait
        wait = b.seconds_until_half_open(now)
        if b.forced == "open":
            assert wait is None
        else:
            assert wait is not None and (wait > 0) == (b.state_at(now) == "open")
            if wait > 0:
                assert b.state_at(now + wait + 1e-9) == "half_open"  # (1e-9: float rounding of the sum)


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_admits_at_most_k_concurrent(probes: int) -> None:
    cfg = BreakerConfig(consecutive_failures=1, cooldown_s=1, half_open_probes=probes, probe_timeout_s=100)
    b = CircuitBreaker(cfg)
    b.record(0, False)
    admitted = sum(b.allow(2 + i * 0.01).allowed for i in range(10))
    assert admitted == probes
