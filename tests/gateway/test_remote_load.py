"""A self-hosted model served over HTTP reports its load through /health; the router sees it and a
policy rule moves traffic off a saturated local model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from backends.fake_provider import FakeProviderThread
from service.remote_load import health_url
from tests.support.gateway import MSG, dep, settings
from tests.support.harness import running_gateway
from tests.support.net import free_port
from tests.support.wait import wait_until

POLICY = """
name: local-first
rules:
  - name: local-saturated
    when: {local_queue_depth: {gte: 8}}
    then: {forbid: ["tag:local"]}
selector: {type: fixed, order: ["tag:local", cloud]}
"""


class LoadServer:
    """A stand-in for the local model server's /health with a settable queue depth."""

    def __init__(self) -> None:
        self.queue_depth = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.listening = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "queue_depth": self.queue_depth, "free_ssm_slots": 4})

        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.loop.call_soon(self.listening.set)
        self.loop.run_forever()


@pytest.fixture()
def load_server() -> Iterator[LoadServer]:
    s = LoadServer()
    s.thread.start()
    assert s.listening.wait(10), "load server did not start"
    yield s
    s.loop.call_soon_threadsafe(s.loop.stop)


def test_health_url() -> None:
    assert health_url("http://h:8000/v1") == "http://h:8000/health"
    assert health_url("http://h:8000/v1/") == "http://h:8000/health"


def test_saturated_remote_local_model_is_routed_around(
    load_server: LoadServer, sqlite_url: str, tmp_path: Path
) -> None:
    with FakeProviderThread() as local, FakeProviderThread() as cloud:
        deps = [dep("local-http", "local-model", local.base_url, tags=["local"]),
                dep("cloud", "cloud-model", cloud.base_url)]
        with running_gateway(settings(tmp_path, sqlite_url, deps)) as gw:
            gw.services.remote_load.urls["local-http"] = f"http://127.0.0.1:{load_server.port}/health"
            assert httpx.put(gw.base_url + "/admin/api/policies/local-first", content=POLICY,
                             headers={"content-type": "application/yaml"}).status_code == 201

            def served() -> str:
                r = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "local-first", "messages": MSG})
                assert r.status_code == 200, r.text
                return r.headers["x-hybridgate-deployment"]

            time.sleep(0.5)
            assert served() == "local-http"
            load_server.queue_depth = 20  # the local model's queue fills up
            wait_until(lambda: served() == "cloud", 5)
            load_server.queue_depth = 0
            wait_until(lambda: served() == "local-http", 5)
