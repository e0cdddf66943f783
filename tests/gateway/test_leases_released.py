"""Concurrency leases and budget holds end with their request: after a Redis pause, and after a
request that fails once routed. Two gateways share a private redis-server (paused with CLIENT PAUSE;
the shared one is never paused) and a Postgres log."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import text

from backends.fake_provider import FakeProviderThread
from gateway.config import Settings
from requestlog.migrate import upgrade
from tests.support.harness import GatewayThread, running_gateway
from tests.support.wait import await_until

PREFIX = "hgtest:"
WORDS = " ".join(f"w{i}" for i in range(30))
FAST = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": WORDS}]}
SLOW = {
    "model": "m",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": WORDS + " [[fault:latency:700]]"}],
}


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    if shutil.which("redis-server") is None:  # pragma: no cover - environment, not behaviour
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 5
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield client
    proc.terminate()
    proc.wait(5)


@pytest.fixture()
def two_gateways(
    tmp_path: Path, fresh_pg_url: str, private_redis: redis.Redis
) -> Iterator[tuple[GatewayThread, GatewayThread]]:
    upgrade(fresh_pg_url)
    port = private_redis.connection_pool.connection_kwargs["port"]
    with FakeProviderThread() as fp:
        dep = {
            "name": "priced",
            "model": "m",
            "upstream_model": "fake-model",
            "api_base": fp.base_url,
            "timeout_s": 10,
            "context_window": 8192,
            "pricing": {"input_per_mtok": 0.0, "output_per_mtok": 2500.0},
        }
        s = Settings(
            **{  # type: ignore[arg-type]
                "database_url": fresh_pg_url,
                "redis_url": f"redis://127.0.0.1:{port}/0",
                "redis_prefix": PREFIX,
                "deployments": [dep],
                "local_model": {"enabled": False},
                "require_keys": True,
                "log": {
                    "bodies": "none",
                    "spool_dir": str(tmp_path / f"spool-{uuid.uuid4().hex[:6]}"),
                    "batch_max_ms": 10,
                },
            }
        )
        with running_gateway(s) as a, running_gateway(s) as b:
            yield a, b


def _held(r: redis.Redis) -> tuple[int, int]:
    """(concurrency leases, budget holds) present in Redis."""
    leases = sum(r.zcard(k) for k in r.scan_iter(f"{PREFIX}conc:*"))
    holds = sum(r.zcard(k) for k in r.scan_iter(f"{PREFIX}budget:*:holds"))
    return leases, holds


async def _until_free(
    r: redis.Redis, gws: tuple[GatewayThread, GatewayThread], key: str, within_s: float
) -> float:
    """Seconds until Redis holds nothing and the key is served again; fails after ``within_s``."""
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=10, headers={"authorization": f"Bearer {key}"}) as client:
        await await_until(lambda: _held(r) == (0, 0), within_s, what="leases released", interval_s=0.1)
        rs = await asyncio.gather(
            *(client.post(gw.base_url + "/v1/chat/completions", json=FAST) for gw in gws)
        )
        assert [x.status_code for x in rs] == [200, 200], [x.text for x in rs]  # both slots free
    return time.monotonic() - t0


async def test_a_redis_pause_and_failing_requests_leak_no_lease_or_hold(
    two_gateways: tuple[GatewayThread, GatewayThread], private_redis: redis.Redis
) -> None:
    a, b = two_gateways
    key = httpx.post(
        a.base_url + "/admin/api/keys",
        json={"name": "k", "max_concurrency": 2, "budget_usd": 0.5, "budget_period": "day"},
    ).json()["key"]
    headers = {"authorization": f"Bearer {key}"}

    # 1. Two requests hold both slots and $0.10 when Redis stops answering for 1.5 s; they end during it.
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        slow = [
            asyncio.create_task(client.post(gw.base_url + "/v1/chat/completions", json=SLOW)) for gw in (a, b)
        ]
        t0 = time.monotonic()
        await await_until(lambda: _held(private_redis) == (2, 2), 3, what="both leases held")
        private_redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
    ended = time.monotonic()
    await asyncio.sleep(max(0.0, t0 + 1.6 - time.monotonic()))  # the pause is over
    assert time.monotonic() - ended + await _until_free(private_redis, two_gateways, key, 5.0) < 5.0

    # 2. Requests that fail after routing (every attempt upstream answers 500) free their slots and
    #    holds at once, answer 502 in OpenAI's shape and leave one log row each.
    failing = FAST | {"messages": [{"role": "user", "content": WORDS + " [[fault:500]]"}]}
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        rs = [await client.post(gw.base_url + "/v1/chat/completions", json=failing) for gw in (a, b, a)]
    assert [r.status_code for r in rs] == [502, 502, 502]
    assert rs[0].json()["error"]["type"] == "upstream_error"
    assert await _until_free(private_redis, two_gateways, key, 1.0) < 1.0

    # 3. A model that cannot serve the endpoint (no deployment embeds) answers 400 (model_not_supported) and frees its slot.
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        emb = [
            await client.post(gw.base_url + "/v1/embeddings", json={"model": "m", "input": "x"})
            for gw in (a, b, a)
        ]
    assert [r.status_code for r in emb] == [400, 400, 400]
    assert await _until_free(private_redis, two_gateways, key, 1.0) < 1.0

    ids = [r.headers["x-request-id"] for r in rs]
    for gw in (a, b):
        await gw.acall(gw.services.sink.flush())

    async def logged() -> list[tuple[str, int]]:
        async with a.services.engine.connect() as conn:
            q = text("SELECT id, http_status FROM requests WHERE id = ANY(:ids)")
            return [(row[0], row[1]) for row in (await conn.execute(q, {"ids": ids})).all()]

    assert sorted(await a.acall(logged())) == sorted((i, 502) for i in ids)
