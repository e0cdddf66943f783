"""Redis-backed shared state: two store instances (= two gateway processes) agree; Lua mirrors the
pure Python model; Redis down degrades to in-process state without errors."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.breaker import BreakerConfig, BreakerStatus, CircuitBreaker
from router.budget import BudgetExceeded, BudgetLimit, Ledger, to_nano
from router.ratelimit import RateLimit
from state.breakers import InProcessBreakerStore, RedisBreakerStore
from state.budgets import RedisBudgetStore
from state.ratelimits import RedisRateLimitStore
from state.redis_util import RedisGuard, make_redis
from tests.support.redis import Clock, delete_keys

CFG = BreakerConfig(
    window_s=10, buckets=5, min_requests=4, consecutive_failures=3, cooldown_s=5, half_open_probes=1,
    successes_to_close=1, latency_ms=200, latency_samples=10, probe_timeout_s=30,
)  # fmt: skip
DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1



@pytest.fixture()
async def clients(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    """Two independent clients: what two gateway processes would hold."""
    # Generous timeouts: these tests check atomicity, not fail-fast behaviour, and a loaded CI box
    # can take over a second to open a burst of connections (which would fall back to local state).
    a = make_redis(redis_url, timeout_s=5.0, connect_timeout_s=10.0, pool_wait_s=10.0)
    b = make_redis(redis_url, timeout_s=5.0, connect_timeout_s=10.0, pool_wait_s=10.0)
    yield a, b
    await a.aclose()
    await b.aclose()
    await delete_keys(redis_url, redis_prefix)



# ---- breakers ----------------------------------------------------------------------------------------------


async def test_two_processes_share_breaker_state(clients, redis_prefix) -> None:
    clock = Clock()
    a = RedisBreakerStore(clients[0], prefix=redis_prefix, config=CFG, clock=clock)
    b = RedisBreakerStore(clients[1], prefix=redis_prefix, config=CFG, clock=clock)
    await a.record("d1", False)
    await b.record("d1", False)
    assert await a.state("d1") == "closed"
    assert await b.record("d1", False) == "open"  # third consecutive failure, counted across processes
    assert await a.states(["d1", "d2"]) == {"d1": "open", "d2": "closed"}
    assert not await a.allow("d1")
    clock.t += 5
    assert await b.state("d1") == "half_open"
    assert await b.allow("d1")  # b takes the single probe slot ...
    assert not await a.allow("d1")  # ... so a may not probe too
    assert await a.record("d1", True) == "closed"  # the probe's success (reported anywhere) closes
    assert await b.state("d1") == "closed" and await b.allow("d1")
    await a.force("d1", "open")
    assert await b.state("d1") == "open" and not await b.allow("d1")
    await b.force("d1", None)
    assert await a.allow("d1")
    assert not a.guard.degraded and not b.guard.degraded and a.guard.failures == 0


async def test_every_store_reports_a_forced_breaker_as_forced(clients, redis_prefix) -> None:
    """A breaker an operator forced reads as forced (and which way) in every process, told apart from one
    the traffic opened or closed; handed back to automatic, it reads as not forced."""
    clock = Clock()
    a = RedisBreakerStore(clients[0], prefix=redis_prefix, config=CFG, clock=clock)
    b = RedisBreakerStore(clients[1], prefix=redis_prefix, config=CFG, clock=clock)
    local = InProcessBreakerStore(CFG, clock=clock)
    for store in (a, local):
        for _ in range(3):
            await store.record("tripped", False)
        await store.force("held-open", "open")
        await store.force("held-closed", "closed")
    names = ["tripped", "held-open", "held-closed", "untouched"]
    want = {"tripped": BreakerStatus("open"), "held-open": BreakerStatus("open", "open"),
            "held-closed": BreakerStatus("closed", "closed"), "untouched": BreakerStatus("closed")}
    assert await b.statuses(names) == want == await local.statuses(names)
    assert await b.states(names) == {n: s.state for n, s in want.items()} == await local.states(names)
    await b.force("held-open", None)
    await local.force("held-open", None)
    assert (await a.statuses(["held-open"]))["held-open"] == BreakerStatus("closed") == (
        await local.statuses(["held-open"]))["held-open"]


async def test_every_process_reads_the_same_time_until_half_open(clients, redis_prefix) -> None:
    """The wait a refused client is told (Retry-After) comes from the shared breaker state: a breaker
    opened by one process counts down the same cooldown in the other."""
    clock = Clock()
    a = RedisBreakerStore(clients[0], prefix=redis_prefix, config=CFG, clock=clock)
    b = RedisBreakerStore(clients[1], prefix=redis_prefix, config=CFG, clock=clock)
    for _ in range(3):
        await a.record("d1", False)
    clock.t += 2
    for _ in range(3):
        await a.record("d2", False)
    clock.t += 1.5
    assert await b.seconds_until_half_open(["d1", "d2", "d3"]) == {
        "d1": pytest.approx(1.5), "d2": pytest.approx(3.5), "d3": 0.0}
    await a.force("d3", "open")
    clock.t += 2
    assert await b.seconds_until_half_open(["d1", "d2", "d3"]) == {
        "d1": 0.0, "d2": pytest.approx(1.5), "d3": None}
    assert not a.guard.degraded and not b.guard.degraded


async def test_concurrent_records_are_atomic(clients, redis_prefix) -> None:
    cfg = BreakerConfig(consecutive_failures=0, min_requests=10_000, window_s=60)
    clock = Clock()
    stores = [RedisBreakerStore(c, prefix=redis_prefix, config=cfg, clock=clock) for c in clients]
    await asyncio.gather(*(stores[i % 2].record("d", i % 3 == 0) for i in range(300)))
    r = clients[0]
    counts = await r.hgetall(f"{redis_prefix}breaker:d:b")
    assert sum(int(v) for k, v in counts.items() if k.startswith("r")) == 300
    assert sum(int(v) for k, v in counts.items() if k.startswith("f")) == 200


async def test_a_probe_slot_released_in_one_process_lets_the_other_probe(clients, redis_prefix) -> None:
    """A half-open probe that ends with no verdict (client-caused failure, cancelled) gives its slot back
    for every process at once, not after probe_timeout_s; nothing else about the breaker changes."""
    clock = Clock()
    a = RedisBreakerStore(clients[0], prefix=redis_prefix, config=CFG, clock=clock)
    b = RedisBreakerStore(clients[1], prefix=redis_prefix, config=CFG, clock=clock)
    for _ in range(3):
        await a.record("d1", False)
    clock.t += 5
    probe = await a.allow("d1")
    assert probe and probe.probe is not None and not await b.allow("d1")  # a holds the single probe slot
    await a.release("d1", probe.probe)
    assert await b.state("d1") == "half_open"
    other = await b.allow("d1")  # b may probe now
    assert other
    await a.release("d1", probe.probe)  # the same slot given back again: b keeps its own
    assert not await a.allow("d1")
    assert await b.record("d1", True, probe=other.probe) == "closed"
    closed = await b.allow("d1")
    assert closed and closed.probe is None  # no probe slot while closed
    await b.release("d1", closed.probe)  # a release while closed changes nothing
    assert await a.state("d1") == "closed" and await a.allow("d1")
    assert not a.guard.degraded and not b.guard.degraded


ops = st.lists(
    st.tuples(
        st.sampled_from(["allow", "allow", "ok", "fail", "fail", "slow", "release", "replay", "force_open",
                         "force_closed", "unforce"]),
        st.sampled_from([0.0, 0.3, 1.0, 2.5, 6.0]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_lua_breaker_matches_python_model(redis_url, redis_prefix, seq) -> None:
    async def body() -> None:
        client = make_redis(redis_url)
        clock = Clock()
        prefix = f"{redis_prefix}{random.getrandbits(40):x}:"
        store = RedisBreakerStore(client, prefix=prefix, config=CFG, clock=clock)
        model = CircuitBreaker(CFG)
        held: list[tuple[str, str]] = []  # probe tokens (store's, model's) admitted, not given back yet
        given: list[tuple[str, str]] = []  # probe tokens given back already
        try:
            for op, dt in seq:
                clock.t += dt
                if op == "allow":
                    got_admission, want = await store.allow("d"), model.allow(clock.t)
                    assert got_admission.allowed == want.allowed
                    assert (got_admission.probe is None) == (want.probe is None)
                    if got_admission.probe is not None and want.probe is not None:
                        held.append((got_admission.probe, want.probe))
                elif op in ("ok", "fail", "slow", "release"):
                    pair = held.pop(0) if held else None
                    ours, theirs = pair or (None, None)
                    given += [pair] if pair else []
                    if op == "release":
                        await store.release("d", ours)
                        model.release(clock.t, theirs)
                    else:
                        lat = 500.0 if op == "slow" else 20.0
                        got = await store.record("d", op != "fail", lat, ours)
                        assert got == model.record(clock.t, op != "fail", lat, theirs)
                elif op == "replay":
                    ours, theirs = given[-1] if given else (None, None)
                    await store.release("d", ours)
                    model.release(clock.t, theirs)
                else:
                    mode = {"force_open": "open", "force_closed": "closed", "unforce": None}[op]
                    await store.force("d", mode)
                    model.force(mode)
                assert await store.state("d") == model.state_at(clock.t)
                assert (await store.seconds_until_half_open(["d"]))["d"] == model.seconds_until_half_open(clock.t)
                h = await client.hgetall(f"{prefix}breaker:d")
                slots = await client.hgetall(f"{prefix}breaker:d:p")
                assert int(h.get("consec", 0)) == model.consecutive
                assert sorted(float(e) for e in slots.values()) == sorted(model.probes.values())
                assert {mine for mine, _ in held} >= set(slots)
            assert store.guard.failures == 0
        finally:
            await client.aclose()
            await delete_keys(redis_url, prefix)

    asyncio.run(body())


# ---- budgets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("admission", ["strict", "lenient"])
async def test_fifty_concurrent_reservations_never_overspend(clients, redis_prefix, admission) -> None:
    clock = Clock()
    stores = [RedisBudgetStore(c, prefix=redis_prefix, clock=clock) for c in clients]
    limit = 0.10
    lims = [BudgetLimit("key:k", limit, "day", admission), BudgetLimit("team:t", 100.0, "month")]
    rng = random.Random(7)
    max_costs = [rng.uniform(0.005, 0.02) for _ in range(50)]
    admitted: list[float] = []
    spent: list[float] = []
    # What this test has seen reserved and not yet settled, plus what it has spent. It lags Redis
    # (a reservation counts once its reply arrives; a hold stops counting as its commit is sent,
    # and actual ≤ hold), so it is a lower bound of Redis's spent + reserved at every moment.
    view = {"outstanding": 0.0, "max": 0.0}

    async def one(i: int) -> None:
        store = stores[i % 2]
        try:
            res = await store.reserve(lims, max_costs[i])
        except BudgetExceeded as exc:
            assert exc.scope == "key:k"
            return
        admitted.append(max_costs[i])
        view["outstanding"] += res.amount_usd
        view["max"] = max(view["max"], view["outstanding"] + sum(spent))
        await asyncio.sleep(rng.uniform(0, 0.01))  # the upstream call
        view["outstanding"] -= res.amount_usd
        if i % 5 == 0:
            await store.release(res)  # failed before costing anything
        else:
            actual = max_costs[i] * rng.uniform(0.1, 1.0)
            spent.append(actual)
            await store.commit(res, actual)

    await asyncio.gather(*(one(i) for i in range(50)))
    snap = (await stores[0].snapshot(lims))["key:k"]
    assert snap.reserved_usd == 0  # every hold settled
    assert snap.spent_usd == pytest.approx(sum(spent), abs=1e-8)
    if admission == "strict":
        assert view["max"] <= limit + 1e-9  # spent + held never exceeded the limit
        assert snap.spent_usd <= limit
    else:
        assert snap.spent_usd <= limit + max(max_costs)
    assert 0 < len(admitted) < 50
    team = (await stores[1].snapshot(lims))["team:t"]
    assert team.spent_usd == pytest.approx(snap.spent_usd, abs=1e-8)
    assert not stores[0].guard.degraded and not stores[1].guard.degraded


async def test_a_redis_restarted_without_its_data_does_not_admit_a_spent_budget_afresh(
    clients, redis_prefix, redis_url
) -> None:
    """What a process knows was spent (the shared spend it last saw, what it counted during an outage)
    goes with every reserve: a Redis that lost its accounts is raised to it before anything is admitted,
    instead of admitting the whole budget again until the next reconcile round."""
    clock = Clock()
    a = RedisBudgetStore(clients[0], prefix=redis_prefix, clock=clock)
    lims = [BudgetLimit("key:k", 1.0, "day")]
    await a.commit(await a.reserve(lims, 0.5), 0.5)
    b = RedisBudgetStore(clients[1], prefix=redis_prefix, clock=clock)
    await b.commit(await b.reserve(lims, 0.4), 0.4)
    await delete_keys(redis_url, redis_prefix)  # Redis restarted without persistence
    assert (await b.snapshot(lims))["key:k"].spent_usd == pytest.approx(0.9)  # routing sees what b knows
    with pytest.raises(BudgetExceeded):
        await b.reserve(lims, 0.3)  # 0.9 known spent + 0.3 > 1.0
    fresh = RedisBudgetStore(clients[0], prefix=redis_prefix, clock=clock)  # knows nothing itself
    with pytest.raises(BudgetExceeded):
        await fresh.reserve(lims, 0.3)  # b's refused reserve put the known spend back into Redis
    await fresh.commit(await fresh.reserve(lims, 0.05), 0.05)
    assert (await a.snapshot(lims))["key:k"].spent_usd == pytest.approx(0.95)
    assert not a.guard.degraded and not b.guard.degraded and not fresh.guard.degraded


async def test_budget_lua_matches_ledger(clients, redis_prefix) -> None:
    """Random reserve/commit/release/expiry sequence: Redis accounts equal the pure Ledger's."""
    clock = Clock()
    store = RedisBudgetStore(clients[0], prefix=redis_prefix, clock=clock, reservation_ttl_s=30)
    led = Ledger()
    lim = BudgetLimit("user:u", 1.0, "total")
    rng = random.Random(3)
    live: list = []
    for step in range(300):
        clock.t += rng.choice([0.0, 1.0, 10.0])
        r = rng.random()
        if r < 0.5:
            amount = rng.uniform(0.01, 0.3)
            rid = f"r{step}"
            model_ok = led.reserve([("a", to_nano(1.0), "strict")], to_nano(amount, round_up=True), rid, clock.t, 30) is None
            try:
                live.append(await store.reserve([lim], amount, reservation_id=rid))
                assert model_ok
            except BudgetExceeded:
                assert not model_ok
        elif live:
            res = live.pop(rng.randrange(len(live)))
            if r < 0.8:
                actual = res.amount_usd * rng.random()
                await store.commit(res, actual)
                led.commit(["a"], res.id, to_nano(actual))
            else:
                await store.release(res)
                led.release(["a"], res.id)
        h = await clients[0].hgetall(f"{redis_prefix}budget:user:u:total:total")
        acct = led.accounts.get("a")
        assert (int(h.get("spent", 0)), int(h.get("reserved", 0))) == ((acct.spent, acct.reserved) if acct else (0, 0))
    assert store.guard.failures == 0


# ---- rate limits ----------------------------------------------------------------------------------------------------


async def test_rate_limits_shared_between_processes(clients, redis_prefix) -> None:
    clock = Clock()
    a, b = (RedisRateLimitStore(c, prefix=redis_prefix, clock=clock) for c in clients)
    lims = [RateLimit("key:k", requests_per_min=60, request_burst=10)]
    results = await asyncio.gather(*((a if i % 2 else b).hit(lims, 100) for i in range(30)))
    assert sum(r.allowed for r in results) == 10
    refused = next(r for r in results if not r.allowed)
    assert refused.kind == "requests" and refused.retry_after_s == pytest.approx(1.0)
    clock.t += 1.0
    assert (await a.hit(lims, 100)).allowed
    assert not (await b.hit(lims, 100)).allowed


async def test_an_oversized_request_waits_until_the_shared_limiter_is_idle(clients, redis_prefix) -> None:
    """The Lua mirror of `router.ratelimit.gcra`: a request above the whole burst is told to retry when
    the limiter is idle, and is admitted then."""
    clock = Clock()
    a, b = (RedisRateLimitStore(c, prefix=redis_prefix, clock=clock) for c in clients)
    lims = [RateLimit("key:k", tokens_per_min=600)]  # 10 tokens/s, burst 600
    assert (await a.hit(lims, 300)).allowed
    d = await b.hit(lims, 1000)
    assert not d.allowed and d.retry_after_s == pytest.approx(30.0)  # not (300 + 1000 - 600) / 10 = 70
    clock.t += d.retry_after_s
    assert (await b.hit(lims, 1000)).allowed


async def test_token_limits_all_or_nothing_and_refund(clients, redis_prefix) -> None:
    clock = Clock()
    a, b = (RedisRateLimitStore(c, prefix=redis_prefix, clock=clock) for c in clients)
    lims = [RateLimit("key:k", requests_per_min=600, tokens_per_min=6000)]
    assert (await a.hit(lims, 4000)).allowed
    d = await b.hit(lims, 3000)  # 7000 > 6000: refused, and no request cell used
    assert not d.allowed and d.kind == "tokens" and d.retry_after_s == pytest.approx(10.0)
    await a.adjust_tokens(lims, -1000)  # the first call used 1000 tokens fewer than estimated
    assert (await b.hit(lims, 3000)).allowed
    tat = float(await clients[0].get(f"{redis_prefix}rl:key:k:requests"))
    assert tat == pytest.approx(clock.t + 2 * 0.1)  # exactly two request cells were charged


async def test_concurrency_leases_shared(clients, redis_prefix) -> None:
    clock = Clock()
    a, b = (RedisRateLimitStore(c, prefix=redis_prefix, clock=clock) for c in clients)
    got = await asyncio.gather(*((a if i % 2 else b).acquire_slot("deployment:x", 5, ttl_s=60) for i in range(20)))
    leases = [g for g in got if g]
    assert len(leases) == 5
    assert await b.in_flight(["deployment:x"]) == {"deployment:x": 5}
    await a.release_slot("deployment:x", leases[0])
    live = RedisRateLimitStore(clients[1], prefix=redis_prefix, clock=clock)  # a process that stays up
    assert await live.acquire_slot("deployment:x", 5) is not None  # the default 10 s lease, renewed below
    for _ in range(13):
        clock.t += 5  # its request still runs: maintain() renews the lease
        await live.maintain()
    # the 60 s leases' holders (a, b) died: their slots came back; the renewed lease still counts
    assert await a.in_flight(["deployment:x"]) == {"deployment:x": 1}
    clock.t += 11  # that process died too: nobody renews, the lease lapses within its TTL
    assert await a.in_flight(["deployment:x"]) == {"deployment:x": 0}


# ---- Redis down -------------------------------------------------------------------------------------------------------


async def test_redis_down_degrades_to_in_process() -> None:
    client = make_redis(DEAD_URL, timeout_s=0.2)
    try:
        clock = Clock()
        br = RedisBreakerStore(client, config=CFG, clock=clock)
        bu = RedisBudgetStore(client, clock=clock)
        rl = RedisRateLimitStore(client, clock=clock)
        t0 = time.perf_counter()
        for _ in range(3):
            assert await br.record("d", False) in ("closed", "open")
        assert await br.state("d") == "open" and not await br.allow("d")
        assert await br.states(["d", "e"]) == {"d": "open", "e": "closed"}
        await br.force("e", "open")
        assert (await br.statuses(["e"]))["e"] == BreakerStatus("open", "open")  # the override, kept locally
        lims = [BudgetLimit("key:k", 0.01, "day")]
        res = await bu.reserve(lims, 0.008)
        with pytest.raises(BudgetExceeded):
            await bu.reserve(lims, 0.008)  # the in-process ledger still enforces the limit
        await bu.commit(res, 0.004)
        await bu.charge(lims, 0.001)
        assert (await bu.snapshot(lims))["key:k"].spent_usd == pytest.approx(0.005)
        assert (await rl.hit([RateLimit("k", requests_per_min=1, request_burst=1)], 1)).allowed
        assert not (await rl.hit([RateLimit("k", requests_per_min=1, request_burst=1)], 1)).allowed
        lease = await rl.acquire_slot("x", 1)
        assert lease and await rl.in_flight(["x"]) == {"x": 1}
        await rl.release_slot("x", lease)
        await rl.adjust_tokens([RateLimit("k", tokens_per_min=10)], 5)
        elapsed = time.perf_counter() - t0
        assert br.guard.degraded and bu.guard.degraded and rl.guard.degraded
        # one failed connect per store per retry interval, not one per call
        assert br.guard.failures == 1 and bu.guard.failures == 1 and rl.guard.failures == 1
        assert elapsed < 2.0
    finally:
        await client.aclose()


async def test_guard_recovers_after_interval() -> None:
    t = [0.0]
    g = RedisGuard("x", retry_after_s=2.0, clock=lambda: t[0])
    calls = {"remote": 0}

    async def failing() -> str:
        calls["remote"] += 1
        raise ConnectionError("down")

    async def healthy() -> str:
        calls["remote"] += 1
        return "remote"

    async def local() -> str:
        return "local"

    assert await g.run(failing, local) == "local" and g.degraded
    assert await g.run(healthy, local) == "local"  # still inside the retry interval: Redis not tried
    assert calls["remote"] == 1
    t[0] = 2.0
    assert await g.run(healthy, local) == "remote" and not g.degraded
