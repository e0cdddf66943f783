"""Real servers (uvicorn, real sockets) in background threads: the gateway, or any ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import uvicorn

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
