"""Shared state through a Redis outage, end to end: the gateway reaches the real Redis through a proxy
the test cuts and restores.

* A half-open probe that ends while Redis is unreachable frees its shared probe slot once Redis answers
  again (the store's upkeep job), not after the 60 s probe timeout.
* Budgets hold during the outage: requests are answered or refused for their budget (never a 5xx),
  each process counting on from the spend it saw before; what was spent meanwhile reaches Redis when
  it returns (from the request log)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from backends.fake_provider import FakeProviderThread
from gateway.app import breaker_config
from gateway.config import Settings
from state.breakers import RedisBreakerStore
from state.redis_util import make_redis
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway
from tests.support.redis import delete_keys
from tests.support.requestlog import ThreadedProxy
from tests.support.wait import wait_until


@pytest.fixture()
def redis_proxy(redis_url: str, redis_prefix: str) -> Iterator[ThreadedProxy]:
    proxy = ThreadedProxy("127.0.0.1", urlsplit(redis_url).port or 6379)
    try:
        yield proxy
    finally:
        proxy.close()
        asyncio.run(delete_keys(redis_url, redis_prefix))


@pytest.fixture()
def direct(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _through(proxy: ThreadedProxy, prefix: str) -> dict[str, Any]:
    """Settings for a gateway whose Redis is behind ``proxy``: fail fast, so a cut shows at once."""
    return {"redis_url": f"redis://127.0.0.1:{proxy.proxy.port}/0", "redis_prefix": prefix,
            "redis_timeout_s": 0.5, "redis_connect_timeout_s": 0.5}


def another_process_may_probe(redis_url: str, s: Settings, deployment: str) -> bool:
    """Whether a process sharing the gateway's Redis is admitted to ``deployment`` now (taking the
    half-open probe slot if it is)."""

    async def ask() -> bool:
        client = make_redis(redis_url, timeout_s=5.0, connect_timeout_s=5.0)
        try:
            store = RedisBreakerStore(client, prefix=s.redis_prefix, config=breaker_config(s))
            return bool(await store.allow(deployment))
        finally:
            await client.aclose()

    return asyncio.run(ask())


FIXED_AB = """
name: fixed-ab
selector: {type: fixed, order: [a, b]}
retry: {max_attempts: 6, max_attempts_per_deployment: 4, jitter: none, backoff_base_s: 0.01}
"""


def test_a_probe_that_ends_while_redis_is_down_frees_its_slot_soon_after_redis_returns(
    sqlite_url: str, tmp_path: Path, redis_proxy: ThreadedProxy, direct: redis.Redis, redis_url: str,
    redis_prefix: str,
) -> None:
    with FakeProviderThread() as a, FakeProviderThread() as b:
        s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)],
                     breaker={"consecutive_failures": 3, "min_requests": 100, "cooldown_s": 1.0, "window_s": 10},
                     **_through(redis_proxy, redis_prefix))
        with running_gateway(s) as gw, httpx.Client(base_url=gw.base_url, timeout=30) as http:
            assert http.put("/admin/api/policies/fixed-ab", content=FIXED_AB,
                            headers={"content-type": "application/yaml"}).status_code == 201

            def post(content: str) -> httpx.Response:
                return http.post("/v1/chat/completions",
                                 json={"model": "fixed-ab", "messages": [{"role": "user", "content": content}]})

            a.set_faults("500")
            assert post("trip").headers["x-hybridgate-deployment"] == "b"
            assert direct.hget(f"{redis_prefix}breaker:a", "state") == "open"
            a.set_faults()
            time.sleep(1.1)  # the cooldown: the next request to a is a half-open probe
            before = a.stats["total"]
            answers: list[httpx.Response] = []
            probe = threading.Thread(target=lambda: answers.append(post("[[fault:latency:1500]] probe")))
            probe.start()
            wait_until(lambda: a.stats["total"] == before + 1, what="the probe reached a")
            assert not another_process_may_probe(redis_url, s, "a")  # the probe holds the only slot
            asyncio.run(redis_proxy.cut())  # Redis goes away mid-probe
            probe.join(10)
            assert answers and answers[0].status_code == 200
            assert answers[0].headers["x-hybridgate-deployment"] == "a"
            # the probe's end never reached Redis: the shared slot is still taken
            assert not another_process_may_probe(redis_url, s, "a")
            asyncio.run(redis_proxy.restore())
            back = time.monotonic()
            wait_until(lambda: another_process_may_probe(redis_url, s, "a"), timeout_s=10,
                       interval_s=0.1, what="the probe slot given back")
            assert time.monotonic() - back < 10  # the probe timeout is 60 s


PRICE_PER_TOKEN = 0.0025  # USD per output token: a 20-token answer costs $0.05
WORDS = " ".join(f"w{i}" for i in range(30))  # echoed back: every answer runs to max_tokens


def test_budgets_are_enforced_per_process_during_a_redis_outage_and_its_spend_reaches_redis_after(
    sqlite_url: str, tmp_path: Path, redis_proxy: ThreadedProxy, direct: redis.Redis, redis_prefix: str
) -> None:
    budget = 0.5  # ten answers
    with FakeProviderThread() as fp:
        priced = dep("priced", "m", fp.base_url, pricing={"input_per_mtok": 0.0, "output_per_mtok": PRICE_PER_TOKEN * 1e6})
        s = settings(tmp_path, sqlite_url, [priced], require_keys=True, budget_reconcile_s=0.3,
                     **_through(redis_proxy, redis_prefix))
        with running_gateway(s) as gw, httpx.Client(base_url=gw.base_url, timeout=30) as http:
            created = http.post("/admin/api/keys", json={"name": "k", "budget_usd": budget, "budget_period": "day"})
            auth = {"authorization": f"Bearer {created.json()['key']}"}

            def ask() -> float | None:
                """One request: the USD its answer cost, or None when refused for the budget."""
                r = http.post("/v1/chat/completions", headers=auth, json={
                    "model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": WORDS}]})
                if r.status_code == 429:
                    assert r.json()["error"]["code"] == "budget_exceeded", r.text
                    return None
                assert r.status_code == 200, r.text  # never a 5xx: Redis is not a request's dependency
                return r.json()["usage"]["completion_tokens"] * PRICE_PER_TOKEN

            before = [ask() for _ in range(4)]
            assert None not in before
            account = next(k for k in direct.scan_iter(f"{redis_prefix}budget:key:*") if not k.endswith(":holds"))
            assert int(direct.hget(account, "spent") or 0) / 1e9 == pytest.approx(sum(before))

            asyncio.run(redis_proxy.cut())
            during: list[float] = []
            for _ in range(20):
                cost = ask()
                if cost is None:
                    break
                during.append(cost)
            else:
                raise AssertionError("the budget was never enforced during the outage")
            assert gw.services.router.budgets.guard.degraded
            assert during  # the outage did not refuse everything either
            spent = sum(before) + sum(during)
            # counted on from what was spent before the outage: the budget holds to within one answer
            assert budget - 0.05 - 1e-9 <= spent <= budget + 1e-9
            assert int(direct.hget(account, "spent") or 0) / 1e9 == pytest.approx(sum(before))  # not in Redis yet

            asyncio.run(redis_proxy.restore())
            wait_until(lambda: int(direct.hget(account, "spent") or 0) / 1e9 >= spent - 1e-9, timeout_s=15,
                       what="the outage's spend reached Redis")
            assert ask() is None  # and Redis refuses the key now
