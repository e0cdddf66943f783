"""Micro-benchmark: aiohttp vs httpx as the upstream client, against the fake provider.

Not a test (pytest does not collect it). Run: ``python tests/backends/bench_clients.py``.
The fake provider runs in a child process so client and server do not share a core or the GIL;
the numbers are the client's view: sequential latency (p50/p99) and throughput at a fixed
concurrency, for non-streamed and streamed chat calls. They decided the client of
`backends.openai_compatible`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson

from backends.base import UpstreamCall
from backends.fake_provider import FakeProviderProcess
from backends.openai_compatible import OpenAICompatibleBackend

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there, how are you today?"}]}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def _measure(
    name: str, call: Callable[[], Awaitable[None]], n_seq: int, n_conc: int, conc: int
) -> None:
    for _ in range(200):  # warm-up: connections, caches
        await call()
    lat = []
    for _ in range(n_seq):
        t = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t) * 1e3)
    sem = asyncio.Semaphore(conc)

    async def one() -> None:
        async with sem:
            await call()

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n_conc)))
    rps = n_conc / (time.perf_counter() - t)
    print(
        f"{name:36s} p50 {statistics.median(lat):6.3f} ms  p99 {_pct(lat, 0.99):6.3f} ms  "
        f"{rps:7.0f} req/s @ concurrency {conc}"
    )


async def bench(base_url: str, n_seq: int, n_conc: int, conc: int) -> None:
    url = base_url + "/chat/completions"
    payload = orjson.dumps(BODY)
    stream_payload = orjson.dumps(STREAM_BODY)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}

    connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def aio_call() -> None:
            async with session.post(url, data=payload, headers=headers) as r:
                orjson.loads(await r.read())

        async def aio_stream() -> None:
            async with session.post(url, data=stream_payload, headers=headers) as r:
                async for _ in r.content.iter_any():
                    pass

        await _measure("aiohttp non-stream", aio_call, n_seq, n_conc, conc)
        await _measure("aiohttp stream", aio_stream, n_seq, n_conc, conc)

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def hx_call() -> None:
            r = await client.post(url, content=payload, headers=headers)
            orjson.loads(r.content)

        async def hx_stream() -> None:
            async with client.stream("POST", url, content=stream_payload, headers=headers) as r:
                async for _ in r.aiter_raw():
                    pass

        await _measure("httpx non-stream", hx_call, n_seq, n_conc, conc)
        await _measure("httpx stream", hx_stream, n_seq, n_conc, conc)

    backend = OpenAICompatibleBackend("bench", base_url, api_key="x")

    async def be_call() -> None:
        await backend.complete(UpstreamCall("chat", BODY, 30.0))

    async def be_stream() -> None:
        async for _ in backend.stream(UpstreamCall("chat", BODY, 30.0)):
            pass

    await _measure("OpenAICompatibleBackend non-stream", be_call, n_seq, n_conc, conc)
    await _measure("OpenAICompatibleBackend stream", be_stream, n_seq, n_conc, conc)
    await backend.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=2000)
    ap.add_argument("--conc-requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    with FakeProviderProcess() as fp:
        coro = bench(fp.base_url, args.seq, args.conc_requests, args.concurrency)
        if args.uvloop:
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)


if __name__ == "__main__":
    main()
