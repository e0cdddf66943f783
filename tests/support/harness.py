"""Real servers (uvicorn, real sockets) in background threads: the gateway, or any ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import uvicorn
import yaml

from gateway.app import create_app
from gateway.config import Settings
from gateway.http_edge import EdgeConfig
from tests.support.net import free_port


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1:<random port> in a background thread (its own event loop)."""

    def __init__(self, app: Any, config: uvicorn.Config | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.app = app
        self.server = uvicorn.Server(config or uvicorn.Config(
            app, host="127.0.0.1", port=self.port, loop="asyncio", access_log=False, log_level="warning",
            lifespan="on"))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    url = base_url

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (e.g. sink.flush())."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def acall(self, coro: Any) -> Any:
        """Like `call`, awaited from another event loop without blocking it."""
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def start(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayThread(ServerThread):
    """A gateway on 127.0.0.1:<random port>, serving `settings` (with its HTTP edge limits) until stopped."""

    def __init__(self, settings: Settings, **app_kwargs: Any) -> None:
        port = free_port()
        self.settings = settings.model_copy(update={"port": port})
        app = create_app(self.settings, **app_kwargs)
        super().__init__(app, EdgeConfig(
            app, limits=self.settings.http, host="127.0.0.1", port=port, loop="asyncio",
            access_log=False, log_level="warning", lifespan="on"), port=port)

    @property
    def services(self) -> Any:
        return self.app.state.services


@contextlib.contextmanager
def running_gateway(settings: Settings, **app_kwargs: Any) -> Iterator[GatewayThread]:
    gw = GatewayThread(settings, **app_kwargs).start()
    try:
        yield gw
    finally:
        gw.stop()


class GatewayProcess:
    """A gateway as its own OS process (`hybridgate serve`), for tests that kill it (``kill -9``)
    or need several processes; `settings` are written to a YAML file in `workdir`."""

    def __init__(self, settings: Settings, workdir: Path, *, name: str = "gw") -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"port": self.port, "host": "127.0.0.1"})
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(self.settings.model_dump(mode="json", exclude_none=True)))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> GatewayProcess:
        root = Path(__file__).resolve().parents[2]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDGATE_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "--config", str(self.config), "serve", "--port", str(self.port)],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """``kill -9``: no shutdown handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), killed after 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
