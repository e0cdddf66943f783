"""Anthropic's Messages API: `POST /v1/messages` through the chat pipeline (gateway/wire/anthropic.py),
with Anthropic's error shape (for every path under /v1/messages: wrong methods and unknown paths too),
and `POST /v1/messages/count_tokens` (the gateway's estimate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from backends.base import Kind
from common.types import DeploymentConfig
from gateway.edge import read_json, validate
from gateway.errors import APIError, model_not_found
from gateway.keys import ApiKey
from gateway.schemas import ChatCompletionRequest, MessagesRequest, estimate_prompt_tokens
from gateway.wire import anthropic as wire


class MessagesWire:
    endpoint = "messages"

    def __init__(self, rid: str) -> None:
        self.mid = "msg_" + rid
        self.original: dict[str, Any] = {}
        self.stream: wire.MessageStream | None = None
        self.stop_sequences: list[str] = []
        # where each message of the translated chat request came from; None until translated (errors
        # found before then already name the Anthropic fields)
        self.origins: list[wire.Origin] | None = None
        # the translation with the request's prompt-caching markers, where it has any (for litellm's
        # deployments: see `native`)
        self.cached: dict[str, Any] | None = None

    async def prepare(self, body: dict[str, Any], key: ApiKey | None) -> dict[str, Any]:
        self.original = body
        req = validate(MessagesRequest, body)
        self.stop_sequences = req.stop_sequences or []
        cached, self.origins = wire.translate(body)
        chat = wire.without_cache_control(cached)
        self.cached = cached if chat is not cached else None
        return chat

    def native(self, d: DeploymentConfig, stream: bool) -> tuple[Kind, dict[str, Any]] | None:
        """Every upstream is reached through chat completions (litellm speaks Anthropic's API). A deployment
        reached through litellm gets the request's prompt-caching markers on the chat request, where
        litellm reads them; the others get the chat request without them (gateway/wire/anthropic.py)."""
        if self.cached is None or d.provider != "litellm":
            return None
        body = {**self.cached, "model": d.upstream_model}
        if stream:
            body["stream"] = True
        else:  # answered whole, as the chat request would be
            body.pop("stream", None)
            body.pop("stream_options", None)
        return "chat", body

    def native_only(self) -> APIError | None:
        return None  # what the translation cannot serve is refused in `wire.translate`

    async def whole(self, chat: dict[str, Any], model: str) -> bytes:
        return orjson.dumps(wire.message_from_chat(chat, model, self.mid, self.stop_sequences))

    def start(self, model: str, prompt_tokens: int = 0) -> bytes:
        """Nothing yet: `message_start` goes out with the first chunk, whose usage may size the prompt
        (`wire.MessageStream.start`)."""
        self.stream = wire.MessageStream(model, self.mid, self.stop_sequences, prompt_tokens or None)
        return b""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        assert self.stream is not None
        return b"".join(map(wire.sse, self.stream.feed(chunk)))

    async def finish(self) -> bytes:
        assert self.stream is not None
        return b"".join(map(wire.sse, self.stream.finish()))

    def fail(self, err: APIError) -> bytes:
        assert self.stream is not None
        return b"".join(map(wire.sse, self.stream.fail(err)))

    def error(self, err: APIError, headers: dict[str, str]) -> Response:
        """Anthropic's error shape; an error found in the translated chat request (its schema, the
        router's refusals, an upstream's client error) names the field of the caller's request."""
        if self.origins is not None:
            err = wire.caller_error(err, self.origins)
        return anthropic_error(err, headers)


def anthropic_error(err: APIError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(wire.error_body(err)),
        status_code=err.status,
        media_type="application/json",
        headers=dict(err.headers) | (headers or {}),
    )


async def count_tokens(request: Request, max_bytes: int, known: Callable[[str], bool]) -> Response:
    """`{"input_tokens": n}`: the same estimate the gateway routes and budgets with; a model the caller
    may not use (`known` says) is a 404, as `POST /v1/messages` answers it."""
    try:
        chat, origins = wire.translate(await read_json(request, max_bytes) | {"max_tokens": 1})
    except APIError as err:
        return anthropic_error(err)
    try:
        req = validate(ChatCompletionRequest, chat)
    except APIError as err:
        return anthropic_error(wire.caller_error(err, origins))
    if not known(req.model):
        return anthropic_error(model_not_found(req.model))
    return Response(
        orjson.dumps({"input_tokens": estimate_prompt_tokens(req)}), media_type="application/json"
    )


def is_messages_path(path: str) -> bool:
    """Whether ``path`` is Anthropic's Messages API (or under it), whose callers read Anthropic's errors."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")
