"""What the request pipeline needs from a wire format other than chat completions.

The pipeline (gateway/openai_api.py) authenticates, routes and executes one internal chat request;
a `WireAdapter` made per request translates the client's body into it (`prepare`), the answer back
(`whole`, or `start`/`feed`/`finish`/`fail` for a stream) and errors into the client's shape. A
deployment whose upstream speaks the client's format natively gets the client's request (`native`):
routing, budgets, retries and the log are the same; only the upstream call and the answer differ.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.responses import Response

from backends.base import Kind
from common.types import DeploymentConfig
from gateway.errors import APIError
from gateway.keys import ApiKey


class WireAdapter(Protocol):
    endpoint: str  # the log row's endpoint ("responses", "messages")
    original: dict[str, Any]  # the client's body, for the request log

    async def prepare(self, body: dict[str, Any], key: ApiKey | None) -> dict[str, Any]:
        """The chat completion body for the client's body (raises APIError naming the param)."""
        ...

    def native(self, d: DeploymentConfig, stream: bool) -> tuple[Kind, dict[str, Any]] | None:
        """The call kind and body for a deployment that gets something other than the plain chat body:
        one whose upstream speaks this wire format (passed through, not translated), or a chat body that
        keeps hints only that deployment's client reads (Messages' `cache_control` for litellm); None to
        send it the chat body."""
        ...

    def native_only(self) -> APIError | None:
        """The client's error when its request can only be answered where the upstream speaks its wire
        format natively (`native` gives a call) and no such deployment serves it; None for a request the
        translation serves as well."""
        ...

    async def whole(self, chat: dict[str, Any], model: str) -> bytes:
        """A complete answer (chat, or the upstream's own form when passed through) as the client's JSON body."""
        ...

    def start(self, model: str, prompt_tokens: int = 0) -> bytes:
        """A stream's opening events; ``prompt_tokens`` is the gateway's estimate of the prompt (what it
        routes and budgets with), for a format that reports the prompt's size before the answer."""
        ...

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    async def finish(self) -> bytes: ...

    def fail(self, err: APIError) -> bytes: ...

    def error(self, err: APIError, headers: dict[str, str]) -> Response: ...
