"""/metrics stays small whatever model names clients send, and is not public where keys are required."""

from __future__ import annotations

import asyncio
import gc
import random
import string
from pathlib import Path

import httpx
import orjson

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from tests.support.gateway import gateway_settings
from tests.support.harness import running_gateway


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _flood(port: int, key: str, count: int, rng: random.Random, conns: int = 16) -> list[int]:
    """``count`` chat requests naming random models, over ``conns`` keep-alive connections (raw
    HTTP/1.1: an HTTP client library would cost more CPU than the gateway here)."""

    def request() -> bytes:
        # unknown names of valid length (404) and over-long ones (400), a few KB
        size = rng.choice((rng.randint(20, 256), rng.randint(2000, 4000)))
        name = "".join(rng.choices(string.ascii_letters, k=size))
        body = orjson.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}]})
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (key.encode(), len(body), body)
        )

    async def worker(n: int) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        codes = []
        for _ in range(n):
            writer.write(request())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            await reader.readexactly(length)
            codes.append(int(head[9:12]))
        writer.close()
        return codes

    per = [count // conns + (i < count % conns) for i in range(conns)]
    return [c for codes in await asyncio.gather(*(worker(n) for n in per)) for c in codes]


async def _count_rows(gw: object) -> int:
    from sqlalchemy import text

    services = gw.services  # type: ignore[attr-defined]
    await services.sink.flush()
    async with services.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM requests"))).scalar_one())


async def test_random_model_names_never_become_metric_labels(
    fake_provider: FakeProviderThread, fresh_pg_url: str, tmp_path: Path
) -> None:
    upgrade(fresh_pg_url)
    s = gateway_settings(
        fake_provider.base_url,
        fresh_pg_url,
        tmp_path,
        require_keys=True,
        metrics_token="m-token",
        log={"bodies": "none", "spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10},
    )
    with running_gateway(s) as gw:
        key = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "flood"}).json()["key"]
        auth = {"authorization": "Bearer m-token"}
        assert httpx.get(gw.base_url + "/metrics").status_code == 401  # keys required: the token is too
        assert (
            httpx.get(gw.base_url + "/readyz", headers={"authorization": f"Bearer {key}"}).status_code == 401
        )
        assert httpx.get(gw.base_url + "/readyz", headers=auth).json()["status"] in {"ready", "degraded"}
        ok = httpx.post(
            gw.base_url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert ok.status_code == 200

        rng = random.Random(18)
        assert set(await _flood(gw.port, key, 200, rng)) == {400, 404}  # warm-up: pools, caches, allocator
        gc.collect()
        before = _rss_bytes()
        assert set(await _flood(gw.port, key, 2000, rng)) == {400, 404}
        gc.collect()
        after = _rss_bytes()

        text = httpx.get(gw.base_url + "/metrics", headers=auth).text
        assert len(text.encode()) < 1_000_000
        assert 'model="fake-model"' in text  # configured names keep their label
        assert (
            'hybridgate_requests_total{endpoint="chat",model="other",provider="none",status="error"} 2200.0'
            in text
        )
        rows = await gw.acall(_count_rows(gw))
        assert rows == 2201  # every request logged: a long name never breaks the log's index
        assert after <= before * 1.10, (before, after)


def test_metrics_and_readyz_need_no_token_where_keys_are_optional(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path)) as gw:
        assert httpx.get(gw.base_url + "/metrics").status_code == 200
        assert httpx.get(gw.base_url + "/readyz").status_code == 200
    # keys required and no metrics token: loopback callers only (this test is one)
    with running_gateway(
        gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, require_keys=True)
    ) as gw:
        assert httpx.get(gw.base_url + "/metrics").status_code == 200
