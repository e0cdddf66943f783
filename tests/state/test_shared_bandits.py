"""Bandit statistics shared as additive totals: rebuilding from the sums gives the same bandit as
learning locally, and the database store adds concurrent increments exactly (PostgreSQL, SQLite)."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from requestlog import migrate
from router.plugins import LinUCBBandit, ThompsonBandit
from router.protocols import SharedBandit
from state.bandits import DbBanditStore, RedisBanditStore
from state.redis_util import make_redis
from tests.support.wait import wait_until


def _contexts(n: int, seed: int = 0) -> list[tuple[str, float, dict]]:
    rng = random.Random(seed)
    return [(rng.choice(["a", "b", "c"]), rng.random(),
             {"prompt_tokens": rng.randint(1, 5000), "max_tokens": rng.choice([None, 64, 2048]),
              "capabilities": rng.choice([[], ["tools"], ["json_mode", "vision"]]),
              "endpoint": rng.choice(["chat", "completion"])}) for _ in range(n)]


def _summed(bandit: SharedBandit, events: list[tuple[str, float, dict]]) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = {}
    for arm, reward, ctx in events:
        for k, v in bandit.increments(arm, reward, ctx).items():
            totals.setdefault(arm, {})[k] = totals.get(arm, {}).get(k, 0.0) + v
    return totals


def test_linucb_rebuilt_from_totals_equals_the_one_that_learned_each_reward() -> None:
    events = _contexts(200)
    learned, rebuilt = LinUCBBandit(), LinUCBBandit()
    for arm, reward, ctx in events:
        learned.update(arm, reward, ctx, propensity=0.5)
    rebuilt.load_totals(_summed(rebuilt, events))
    a, b = learned.to_dict(), rebuilt.to_dict()
    assert a["n"] == b["n"]
    for arm in a["n"]:
        np.testing.assert_allclose(a["b"][arm], b["b"][arm], atol=1e-9)
        np.testing.assert_allclose(a["a_inv"][arm], b["a_inv"][arm], atol=1e-9)
    ctx = {"prompt_tokens": 300, "endpoint": "chat"}
    assert learned.choose(["a", "b", "c"], ctx, random.Random(1)) == rebuilt.choose(["a", "b", "c"], ctx, random.Random(1))


def test_thompson_rebuilt_from_totals_equals_the_one_that_learned_each_reward() -> None:
    events = _contexts(300, seed=3)
    learned, rebuilt = ThompsonBandit(), ThompsonBandit()
    for arm, reward, ctx in events:
        learned.update(arm, reward, ctx, propensity=1.0)
    rebuilt.load_totals(_summed(rebuilt, events))
    for arm, s in learned.to_dict()["arms"].items():
        r = rebuilt.to_dict()["arms"][arm]
        assert r["n"] == s["n"]
        assert r["alpha"] == pytest.approx(s["alpha"]) and r["beta"] == pytest.approx(s["beta"])
        assert r["mean"] == pytest.approx(s["mean"]) and r["m2"] == pytest.approx(s["m2"], abs=1e-9)


@pytest.fixture(params=["postgresql", "sqlite"])
def log_url(request: pytest.FixtureRequest, tmp_path) -> str:
    url = (request.getfixturevalue("fresh_pg_url") if request.param == "postgresql"
           else f"sqlite+aiosqlite:///{tmp_path / 'bandits.db'}")
    migrate.upgrade(url)
    return url


async def test_database_store_adds_concurrent_increments_exactly(log_url: str) -> None:
    """Fifty feedbacks from five 'processes' (engines) at once: no increment is lost to a race."""
    engines = [create_async_engine(log_url) for _ in range(5)]
    stores = [DbBanditStore(e) for e in engines]
    bandit = ThompsonBandit()
    rewards = [(i % 3 == 0, i / 50) for i in range(50)]
    try:
        await asyncio.gather(*(stores[i % 5].add("default", "good" if good else "bad", bandit.increments("", r, {}))
                               for i, (good, r) in enumerate(rewards)))
        totals = await stores[0].load("default")
        assert await stores[1].load("other") == {}
    finally:
        for e in engines:
            await e.dispose()
    assert totals is not None
    good = [r for g, r in rewards if g]
    assert totals["good"]["n"] == len(good) and totals["bad"]["n"] == 50 - len(good)
    assert totals["good"]["sum"] == pytest.approx(sum(good))
    assert totals["bad"]["alpha"] + totals["bad"]["beta"] == pytest.approx(50 - len(good))


async def test_database_store_outage_keeps_the_local_bandit() -> None:
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    store = DbBanditStore(engine)
    try:
        await store.add("default", "a", {"n": 1.0})  # logged, not raised: the feedback row is already stored
        assert await store.load("default") is None  # None = keep the local statistics
    finally:
        await engine.dispose()


async def test_increments_made_while_the_database_was_away_arrive_when_it_returns(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'late.db'}"
    engine = create_async_engine(url)
    store = DbBanditStore(engine)
    bandit = ThompsonBandit()
    try:
        await store.add("default", "a", bandit.increments("a", 1.0, {}))  # no schema yet: the write fails
        assert await store.load("default") is None and len(store.backlog.items) == 1
        migrate.upgrade(url)  # the database is back
        await store.add("default", "a", bandit.increments("a", 0.0, {}))
        totals = await store.load("default")
    finally:
        await engine.dispose()
    assert totals == {"a": {"alpha": 1.0, "beta": 1.0, "n": 2.0, "sum": 1.0, "sumsq": 1.0}}
    assert store.backlog.items == []


async def test_increments_made_while_redis_was_down_arrive_when_it_restarts(tmp_path) -> None:
    """A real Redis on a port of its own, stopped and started again under the store."""
    if shutil.which("redis-server") is None:  # pragma: no cover - environment, not behaviour
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def start() -> None:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
                        "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], check=True)
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG", 5, interval_s=0.05)

    def stop() -> None:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)

    start()
    client = make_redis(f"redis://127.0.0.1:{port}/0", timeout_s=0.5, connect_timeout_s=0.5)
    store = RedisBanditStore(client, prefix="hgtest:")
    bandit = ThompsonBandit()
    try:
        await store.add("default", "a", bandit.increments("a", 1.0, {}))
        stop()
        await store.add("default", "a", bandit.increments("a", 0.0, {}))  # Redis gone: kept
        assert await store.load("default") is None and len(store.backlog.items) == 1
        start()
        deadline = time.monotonic() + 10
        while (totals := await store.load("default")) is None:  # the guard retries after its interval
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
        stop()
    # the first reward was lost with the unsaved Redis; the one sent while it was down was not
    assert totals == {"a": {"alpha": 0.0, "beta": 1.0, "n": 1.0, "sum": 0.0, "sumsq": 0.0}}
    assert store.backlog.items == []


def _rewards(n: float) -> dict[str, dict[str, float]]:
    """Shared totals of ``n`` rewards of 1.0 on arm "a"."""
    return {"a": {"alpha": n, "beta": 0.0, "n": n, "sum": n, "sumsq": n}}


class _GatedStore:
    """A bandit store whose writes wait for a gate and whose reads return ``totals`` as they are:
    while a write waits, a read misses it, as a shared store's read does while another connection's
    write is still in flight."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.totals = _rewards(2)

    async def add(self, bandit: str, arm: str, increments: dict[str, float]) -> None:
        await self.gate.wait()
        self.totals = _rewards(self.totals["a"]["n"] + increments["n"])

    async def load(self, bandit: str) -> dict[str, dict[str, float]] | None:
        return self.totals


async def test_a_sync_during_an_unfinished_store_write_does_not_undo_the_local_update() -> None:
    from policies.registry import PolicyRegistry
    from router.protocols import Plugins
    from service.metrics import Metrics
    from service.routing import Catalog, GatewayRouter
    from state.breakers import InProcessBreakerStore
    from state.budgets import InProcessBudgetStore
    from state.ratelimits import InProcessRateLimitStore

    bandit, store = ThompsonBandit(), _GatedStore()
    router = GatewayRouter(Catalog([], {}), PolicyRegistry(), InProcessBreakerStore(), InProcessBudgetStore(),
                           InProcessRateLimitStore(), Metrics(), Plugins(bandits={"default": bandit}),
                           bandit_store=store)
    n = lambda: bandit.to_dict()["arms"]["a"]["n"]  # noqa: E731
    await router.sync_bandits()
    assert n() == 2  # two rewards from other processes
    logged = {"name": "default", "arm": "a", "context": {}, "propensity": 0.5}
    feedback = asyncio.create_task(router.feedback("r1", 1.0, logged))
    await asyncio.sleep(0)  # learned locally; its store write waits at the gate
    assert n() == 3
    await router.sync_bandits()  # reads totals that lack the update: must not apply them
    assert n() == 3
    store.gate.set()
    await feedback
    store.totals = _rewards(store.totals["a"]["n"] + 4)  # four more from other processes
    await router.sync_bandits()  # nothing in flight now: the store's totals are applied
    assert n() == 7
