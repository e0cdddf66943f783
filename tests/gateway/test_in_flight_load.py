"""Attempts in flight per deployment come from the executor's outcome hooks, so `least_busy` sees the
load of external deployments (not only the local engine's queue), and every count is given back
whatever way an attempt ends: an answer, an upstream error, a client that leaves mid-stream."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import dep, settings
from tests.support.harness import GatewayThread, running_gateway

SPREAD = "name: spread\nselector: {type: least_busy}\n"
MSG = [{"role": "user", "content": "hello"}]


def _put_policy(gw: GatewayThread) -> None:
    r = httpx.put(
        gw.base_url + "/admin/api/policies/spread",
        content=SPREAD,
        headers={"content-type": "application/yaml"},
    )
    assert r.status_code == 201, r.text


def _in_flight(gw: GatewayThread) -> dict[str, int]:
    return gw.call(_snapshot(gw))


async def _snapshot(gw: GatewayThread) -> dict[str, int]:
    return gw.services.router.in_flight.snapshot()


def _wait_idle(gw: GatewayThread, timeout_s: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while (left := _in_flight(gw)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def test_least_busy_spreads_concurrent_slow_requests_across_external_deployments(
    tmp_path: Path, sqlite_url: str
) -> None:
    with FakeProviderThread() as a, FakeProviderThread() as b:
        a.set_faults("latency:1500")
        b.set_faults("latency:1500")
        cfg = settings(
            tmp_path, sqlite_url, [dep("a", "model-a", a.base_url), dep("b", "model-b", b.base_url)]
        )
        with running_gateway(cfg) as gw:
            _put_policy(gw)
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)

            def served(_: int) -> str:
                raw = client.chat.completions.with_raw_response.create(model="spread", messages=MSG)
                return raw.headers["x-hybridgate-deployment"]

            with ThreadPoolExecutor(6) as pool:
                counts = Counter(pool.map(served, range(6)))
            # Every external deployment reads idle without the counts, so all six would go to `a`.
            assert set(counts) == {"a", "b"} and min(counts.values()) >= 2, counts
            assert _wait_idle(gw) == {}


def test_in_flight_counts_are_given_back_after_errors_and_abandoned_streams(
    tmp_path: Path, sqlite_url: str
) -> None:
    with FakeProviderThread() as a, FakeProviderThread() as b:
        cfg = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)])
        with running_gateway(cfg) as gw:
            a.set_faults("500")
            r = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "m", "messages": MSG})
            assert (
                r.status_code == 200 and r.headers["x-hybridgate-deployment"] == "b"
            )  # a failed, b answered
            assert _wait_idle(gw) == {}

            a.set_faults("chunk_latency:200,tokens:50")
            body = {"model": "m", "messages": MSG, "stream": True}
            with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=body) as s:
                lines = s.iter_lines()
                assert next(lines).startswith("data: ")
                assert _in_flight(gw) == {"a": 1}  # counted while the stream runs
            # the client left after one chunk: the attempt ends and its count is given back
            assert _wait_idle(gw) == {}
