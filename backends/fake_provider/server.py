"""`FakeProvider`: the server itself — construction, lifecycle, URLs, and routing to the handlers.

The handlers live in the endpoint mixins (`openai_api`, `responses_api`, `anthropic_api`, `control`) over the
shared request pipeline (`core`); the routing table maps (method, path) straight to their bound
methods, so a request costs one dict lookup before its handler runs.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from backends.fake_provider.anthropic_api import AnthropicHandlers
from backends.fake_provider.config import FakeProviderConfig, RecordedRequest
from backends.fake_provider.control import ControlHandlers
from backends.fake_provider.errors import Reject, error_response
from backends.fake_provider.faults import FaultState
from backends.fake_provider.openai_api import OpenAIHandlers
from backends.fake_provider.responses_api import ResponsesHandlers

__all__ = ["FakeProvider"]


class FakeProvider(OpenAIHandlers, ResponsesHandlers, AnthropicHandlers, ControlHandlers):
    """The fake provider server, in-process. Start with `async with FakeProvider() as fp:`.

    `fp.url` is the root (``http://127.0.0.1:PORT``, what litellm's anthropic route wants as
    api_base), `fp.base_url` the OpenAI base (``…/v1``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: FakeProviderConfig | None = None,
        **config_kwargs: Any,
    ) -> None:
        if config is not None and config_kwargs:
            raise TypeError("pass either config= or config keyword arguments, not both")
        self.config = config or FakeProviderConfig(**config_kwargs)
        self.host = host
        self._port = port
        self._faults = FaultState()
        self._ids = itertools.count(1)
        self._recent: collections.deque[RecordedRequest] = collections.deque(
            maxlen=self.config.record_requests
        )
        self._runner: web.ServerRunner | None = None
        self._closing: asyncio.Event | None = None
        self._models_body = b""
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest], Any]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/embeddings"): self._embeddings,
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/responses"): self._responses,
            ("POST", "/v1/messages"): self._messages,
            ("GET", "/v1/models"): self._models,
            ("GET", "/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/_control/stats"): self._ctl_stats,
            ("POST", "/_control/stats/reset"): self._ctl_stats_reset,
            ("POST", "/_control/reset"): self._ctl_stats_reset,
            ("GET", "/_control/faults"): self._ctl_faults_get,
            ("POST", "/_control/faults"): self._ctl_faults_post,
            ("DELETE", "/_control/faults"): self._ctl_faults_delete,
            ("GET", "/_control/requests"): self._ctl_requests,
        }
        self.reset_stats()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> str:
        """Bind and serve; returns `base_url`. Port 0 picks a free port."""
        if self._runner is not None:
            return self.base_url
        self._closing = asyncio.Event()
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake-provider"}
                    for m in self.config.models
                ],
            }
        )
        server = web.Server(self._dispatch, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, backlog=1024, reuse_address=True)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; hanging/stalled handlers are released first so shutdown is quick."""
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:40123`` (Anthropic clients and litellm's anthropic route)."""
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:40123/v1``."""
        return self.url + "/v1"

    # -- dispatch -------------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            if request.method == "GET" and request.path.startswith(("/v1/models/", "/models/")):
                return self._model_one(request.path.rsplit("/", 1)[1])
            return error_response(
                "openai",
                Reject(
                    404,
                    f"Unknown path {request.method} {request.path}",
                    etype="invalid_request_error",
                    code="unknown_url",
                ),
            )
        return await handler(request)
