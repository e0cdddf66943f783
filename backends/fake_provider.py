"""A fast, deterministic fake LLM provider: a real HTTP server on 127.0.0.1 for tests and benchmarks.

Why a real server and not mocks: the gateway's upstream clients (aiohttp, httpx, litellm, the
official SDKs) must be exercised over real sockets — keep-alive, chunked SSE, connection cuts,
timeouts — and the gateway benchmark needs a zero-latency upstream to measure our own overhead.
So per-request work is kept tiny: no router, bodies built straight from dicts with orjson, a
whole stream written in one `write` when no per-chunk latency is asked for, and no access log.

Speaks:
  * OpenAI ``POST /v1/chat/completions`` (stream / non-stream; n, max_tokens /
    max_completion_tokens → finish_reason "length", stop, tools/tool_choice → tool_calls,
    response_format json_object / json_schema → valid JSON text, logprobs/top_logprobs, seed,
    stream_options.include_usage), ``POST /v1/completions`` (stream / non-stream, echo, logprobs),
    ``POST /v1/embeddings`` (deterministic unit vectors from a hash of the input; float/base64,
    dimensions), ``GET /v1/models`` and ``GET /v1/models/{id}``;
  * Anthropic ``POST /v1/messages`` (stream / non-stream, the exact event sequence
    message_start, content_block_start, ping, content_block_delta…, content_block_stop,
    message_delta (with usage), message_stop; tools → tool_use blocks; stop_sequences).

Replies are deterministic functions of the request (see `FakeProviderConfig.reply_mode`).
Tokens are "words of at most 8 characters with their leading whitespace" (`tokenize`): cheap,
deterministic, and the concatenation of a reply's tokens is exactly the reply, so streamed
content chunks are one token each and usage counts always match what was sent.

Faults (see `backends.fake_provider_faults` for the full grammar) can be set for the whole
server (`set_faults`, `fail_next`, ``POST /_control/faults``) or per request with the header
``x-fake-fault: <spec>`` or the magic string ``[[fault:<spec>]]`` anywhere in the body.

Control API (JSON): ``GET /_control/stats``, ``POST /_control/stats/reset``,
``GET|POST|DELETE /_control/faults``, ``GET /_control/requests`` (recent request bodies),
``GET /health``.

Use: ``async with FakeProvider() as fp: fp.base_url`` in async tests; `FakeProviderThread` for
sync tests; `FakeProviderProcess` (or ``python -m backends.fake_provider --port 9001``) for a
separate process, e.g. in benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import itertools
import math
import os
import random
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import orjson
from aiohttp import web

from backends.fake_provider_faults import MAGIC_RE, Fault, FaultSpecError, FaultState, parse_fault

__all__ = [
    "FakeProvider",
    "FakeProviderConfig",
    "FakeProviderProcess",
    "FakeProviderThread",
    "RecordedRequest",
    "count_tokens",
    "tokenize",
]

_TOKEN_RE = re.compile(r"\s*\S{1,8}|\s+")
_FINGERPRINT = "fp_fake"
_LOREM = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basil",
    "cedar",
    "dune",
    "ember",
    "fern",
    "grove",
    "harbor",
    "island",
    "jade",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "orchid",
    "pebble",
    "quartz",
    "river",
    "sage",
    "thistle",
    "umber",
    "valley",
    "willow",
    "yarrow",
    "zephyr",
)
_NOOP = Fault()
_JSON = "application/json"
_SSE_HEADERS = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})


def tokenize(text: str) -> list[str]:
    """Split text into fake tokens: runs of ≤8 non-space chars with their leading whitespace."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Number of fake tokens in `text` (see `tokenize`)."""
    return len(_TOKEN_RE.findall(text)) if text else 0


@dataclass(slots=True)
class FakeProviderConfig:
    """Behaviour of one fake provider instance.

    reply_mode:
      * "echo": the reply is the last user message's text (capped at `max_reply_tokens`;
        "OK" when there is no text);
      * "fixed": always `reply_text`;
      * "lorem": `reply_tokens` deterministic words seeded by the prompt, `seed` and choice index.
    A request can always ask for an exact length with the fault item ``tokens:<n>``.
    """

    models: dict[str, int] = field(default_factory=lambda: {"fake-model": 8192, "fake-small": 512})
    default_context_window: int = 8192
    strict_models: bool = False  # unknown model → 404 model_not_found instead of being served
    reply_mode: Literal["echo", "fixed", "lorem"] = "echo"
    reply_text: str = "This is a fake reply."
    reply_tokens: int = 16
    max_reply_tokens: int = 256
    embedding_dim: int = 64
    api_key: str | None = None  # when set, requests must carry it (Bearer or x-api-key)
    record_requests: int = 200  # how many recent requests `requests` keeps


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake provider saw it (for assertions on what the gateway sent)."""

    method: str
    path: str
    model: str | None
    body: Any
    headers: Mapping[str, str]


@dataclass(slots=True)
class _Choice:
    """The planned answer for one choice: content tokens or a tool call, and why it ended."""

    tokens: list[str]
    finish: str  # OpenAI finish_reason: "stop" | "length" | "tool_calls"
    tool: tuple[str, str, str] | None = None  # (call id, function name, arguments JSON)
    stop_hit: str | None = None  # the stop sequence that ended it, if any

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) if self.tool is None else count_tokens(self.tool[2])


class _Reject(Exception):
    """Raised inside request handling to answer with an error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        etype: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


# ----------------------------------------------------------------------------------------------
# request → text helpers


def _text_of(content: Any) -> str:
    """Plain text of an OpenAI or Anthropic message content (string or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") == "tool_result":
                    parts.append(_text_of(part.get("content")))
        return " ".join(p for p in parts if p)
    return ""


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return _text_of(msg.get("content"))
        for msg in reversed(messages):
            if isinstance(msg, dict):
                return _text_of(msg.get("content"))
    return ""


def _chat_prompt_tokens(body: Mapping[str, Any]) -> int:
    """OpenAI-style accounting: 3 per message + its text + 3 priming, plus the tools' JSON."""
    total = 3
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                total += 3 + count_tokens(_text_of(msg.get("content")))
                if msg.get("tool_calls"):
                    total += count_tokens(orjson.dumps(msg["tool_calls"]).decode())
    if body.get("tools"):
        total += count_tokens(orjson.dumps(body["tools"]).decode())
    return total


def _anthropic_prompt_tokens(body: Mapping[str, Any]) -> int:
    total = count_tokens(_text_of(body.get("system")))
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                total += 3 + count_tokens(_text_of(msg.get("content")))
    if body.get("tools"):
        total += count_tokens(orjson.dumps(body["tools"]).decode())
    return max(total, 1)


def _example_for_schema(schema: Any, depth: int = 0) -> Any:
    """A deterministic value that satisfies a (simple) JSON schema: for tool arguments/json_schema."""
    if not isinstance(schema, dict) or depth > 8:
        return "fake"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example_for_schema(schema[key][0], depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or (typ is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: _example_for_schema(v, depth + 1) for k, v in props.items()}
    if typ == "array":
        items = schema.get("items")
        return [_example_for_schema(items, depth + 1)] if isinstance(items, dict) else []
    return {"string": "fake", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(typ, "fake")


def _lorem(n: int, key: str) -> str:
    rng = random.Random(key)
    return " ".join(rng.choice(_LOREM) for _ in range(n))


def _apply_stop(text: str, stop: Any) -> tuple[str, str | None]:
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str) and s]
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return (text, None) if best is None else (text[: best[0]], best[1])


def _logprob(i: int) -> float:
    return -0.01 * ((i * 7) % 13 + 1)


def _chat_logprobs_entry(tok: str, i: int, top: int) -> dict[str, Any]:
    lp = _logprob(i)
    tops = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}]
    tops += [
        {"token": f"alt{k}", "logprob": lp - k, "bytes": list(f"alt{k}".encode())} for k in range(1, top)
    ]
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": tops[:top]}


def _completion_logprobs(tokens: Sequence[str], top: int, offset: int) -> dict[str, Any]:
    offsets = []
    pos = offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": list(tokens),
        "token_logprobs": [_logprob(i) for i in range(len(tokens))],
        "top_logprobs": [
            {t: _logprob(i), **{f"alt{k}": _logprob(i) - k for k in range(1, top)}}
            for i, t in enumerate(tokens)
        ]
        if top
        else None,
        "text_offset": offsets,
    }


def _embed(key: bytes, dim: int) -> list[float]:
    """Deterministic unit vector from a hash of the input."""
    raw = struct.unpack(f"<{dim}H", hashlib.shake_256(key).digest(dim * 2))
    vec = [x / 32767.5 - 1.0 for x in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _anthropic_event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"
_OPENAI_ERRORS: Mapping[int, tuple[str, str | None, str]] = MappingProxyType(
    {
        400: ("invalid_request_error", None, "Bad request (fake provider)."),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (fake provider)."),
        403: (
            "invalid_request_error",
            "permission_denied",
            "You are not allowed to use this model (fake provider).",
        ),
        404: (
            "invalid_request_error",
            "model_not_found",
            "The model does not exist or you do not have access to it.",
        ),
        408: ("timeout", None, "Request timed out (fake provider)."),
        409: ("invalid_request_error", "conflict", "Conflict (fake provider)."),
        422: ("invalid_request_error", None, "Unprocessable request (fake provider)."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (fake provider)."),
        500: (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        502: ("server_error", None, "Bad gateway (fake provider)."),
        503: ("server_error", None, "The engine is currently overloaded, please try again later."),
        504: ("server_error", None, "Gateway timeout (fake provider)."),
    }
)
_ANTHROPIC_ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        503: "overloaded_error",
        529: "overloaded_error",
    }
)
_ANTHROPIC_MESSAGES: Mapping[int, str] = MappingProxyType(
    {
        400: "Bad request (fake provider)",
        401: "Invalid API Key",
        403: "Permission denied (fake provider)",
        404: "model: not found (fake provider)",
        429: "Number of request tokens has exceeded your rate limit (fake provider)",
        500: "Internal server error (fake provider)",
        503: "Overloaded",
        529: "Overloaded",
    }
)


# ----------------------------------------------------------------------------------------------
# the server


class FakeProvider:
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

    # -- programmatic control -------------------------------------------------------------------

    def set_faults(
        self, default: str | Fault | None = None, *, models: Mapping[str, str | Fault] | None = None
    ) -> None:
        """Replace the server-wide faults: `default` for every request, `models[m]` for model m.

        ``set_faults()`` clears them (a pending `fail_next` is kept; `clear_faults` drops it too).
        """
        state = FaultState(
            default=parse_fault(default),
            per_model={m: parse_fault(s) for m, s in (models or {}).items()} or None,
            fail_next_count=self._faults.fail_next_count,
            fail_next_fault=self._faults.fail_next_fault,
            fail_next_model=self._faults.fail_next_model,
        )
        self._faults = state

    def fail_next(self, count: int, fault: str | Fault = "500", *, model: str | None = None) -> None:
        """Make the next `count` model requests (for `model`, if given) fail with `fault`, then recover."""
        if count < 0:
            raise ValueError("count must be >= 0")
        parsed = parse_fault(fault)
        self._faults.fail_next_fault = parsed
        self._faults.fail_next_model = model
        self._faults.fail_next_count = count

    def clear_faults(self) -> None:
        self._faults = FaultState()

    @property
    def faults(self) -> dict[str, Any]:
        return self._faults.describe()

    @property
    def stats(self) -> dict[str, Any]:
        """Snapshot of the counters (same shape as ``GET /_control/stats``)."""
        return {
            "total": self._total,
            "streams": self._streams,
            "faults_injected": self._faults_injected,
            "in_flight": self._in_flight,
            "max_in_flight": self._max_in_flight,
            "by_path": dict(self._by_path),
            "by_model": dict(self._by_model),
            "by_path_model": {p: dict(m) for p, m in self._by_path_model.items()},
        }

    def reset_stats(self) -> None:
        self._total = 0
        self._streams = 0
        self._faults_injected = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._by_path: dict[str, int] = {}
        self._by_model: dict[str, int] = {}
        self._by_path_model: dict[str, dict[str, int]] = {}
        self._recent.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """The most recent model requests (oldest first), bodies parsed."""
        return list(self._recent)

    # -- dispatch -------------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            if request.method == "GET" and request.path.startswith(("/v1/models/", "/models/")):
                return self._model_one(request.path.rsplit("/", 1)[1])
            return self._error_response(
                "openai",
                _Reject(
                    404,
                    f"Unknown path {request.method} {request.path}",
                    etype="invalid_request_error",
                    code="unknown_url",
                ),
            )
        return await handler(request)

    def _error_response(self, dialect: str, rej: _Reject) -> web.Response:
        if dialect == "anthropic":
            etype = (
                rej.etype
                if rej.etype and rej.etype.endswith("_error")
                else _ANTHROPIC_ERROR_TYPES.get(
                    rej.status, "api_error" if rej.status >= 500 else "invalid_request_error"
                )
            )
            body = {"type": "error", "error": {"type": etype, "message": rej.message}}
        else:
            default_type, default_code, _ = _OPENAI_ERRORS.get(
                rej.status, ("server_error" if rej.status >= 500 else "invalid_request_error", None, "")
            )
            body = {
                "error": {
                    "message": rej.message,
                    "type": rej.etype or default_type,
                    "param": rej.param,
                    "code": rej.code if rej.code is not None else default_code,
                }
            }
        return web.Response(
            status=rej.status, body=orjson.dumps(body), content_type=_JSON, headers=rej.headers
        )

    async def _begin(
        self, request: web.BaseRequest, dialect: str
    ) -> tuple[dict[str, Any], str | None, Fault]:
        """Read + parse the body, count it, check auth, work out the fault. Raises _Reject."""
        raw = await request.content.read()
        path = request.path
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._count(path, None)
            raise _Reject(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            self._count(path, None)
            raise _Reject(400, "Request body must be a JSON object")
        model = body.get("model")
        model = model if isinstance(model, str) else None
        self._count(path, model)
        self._recent.append(RecordedRequest(request.method, path, model, body, request.headers))
        key = self.config.api_key
        if key is not None:
            hdrs = request.headers
            if hdrs.get("Authorization") != f"Bearer {key}" and hdrs.get("x-api-key") != key:
                raise _Reject(
                    401,
                    "Invalid API Key"
                    if dialect == "anthropic"
                    else "Incorrect API key provided. You can find your API key in the fake provider config.",
                )
        fault = self._faults.for_request(model) if self._faults.any_active() else _NOOP
        try:
            header = request.headers.get("x-fake-fault")
            if header:
                fault = fault.merged(parse_fault(header))
            if b"[[fault:" in raw:
                for m in MAGIC_RE.finditer(raw):
                    fault = fault.merged(parse_fault(m.group(1).decode()))
        except FaultSpecError as exc:
            raise _Reject(400, f"fake provider: bad fault spec: {exc}") from None
        if not fault.is_noop():
            await self._pre_faults(fault, dialect)
        if model is None:
            raise _Reject(400, "you must provide a model parameter", param="model")
        if self.config.strict_models and model not in self.config.models:
            raise _Reject(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return body, model, fault

    def _count(self, path: str, model: str | None) -> None:
        self._total += 1
        self._by_path[path] = self._by_path.get(path, 0) + 1
        m = model or "-"
        self._by_model[m] = self._by_model.get(m, 0) + 1
        per = self._by_path_model.get(path)
        if per is None:
            per = self._by_path_model[path] = {}
        per[m] = per.get(m, 0) + 1

    async def _pre_faults(self, fault: Fault, dialect: str) -> None:
        """Faults that act before any answer: latency, hang, error statuses, content filter."""
        if fault.latency_s:
            await asyncio.sleep(fault.latency_s)
        if fault.hang:
            self._faults_injected += 1
            await self._wait_forever()
            raise _Reject(503, "fake provider shutting down")
        if fault.status is not None:
            self._faults_injected += 1
            headers: dict[str, str] = {}
            if fault.status == 429 or fault.retry_after_s is not None:
                ra = fault.retry_after_s if fault.retry_after_s is not None else 1.0
                headers["Retry-After"] = str(int(ra)) if ra == int(ra) else str(ra)
                headers["retry-after-ms"] = str(int(ra * 1000))
            if dialect == "anthropic":
                raise _Reject(
                    fault.status,
                    _ANTHROPIC_MESSAGES.get(fault.status, f"Error {fault.status} (fake provider)"),
                    headers=headers,
                )
            _, _, msg = _OPENAI_ERRORS.get(fault.status, ("", None, f"Error {fault.status} (fake provider)."))
            raise _Reject(fault.status, msg, headers=headers)
        if fault.content_filter:
            self._faults_injected += 1
            if dialect == "anthropic":
                raise _Reject(400, "Output blocked by content filtering policy")
            raise _Reject(
                400,
                "Your request was rejected as a result of the safety system: the prompt triggered "
                "the content management policy (content_policy_violation).",
                code="content_filter",
                param="prompt",
            )

    async def _wait_forever(self) -> None:
        assert self._closing is not None
        await self._closing.wait()

    def _check_context(
        self, model: str, prompt_tokens: int, max_tokens: int | None, fault: Fault, dialect: str
    ) -> None:
        window = self.config.models.get(model, self.config.default_context_window)
        requested = prompt_tokens + (max_tokens or 0)
        if not fault.context_length and requested <= window:
            return
        if fault.context_length:
            self._faults_injected += 1
            requested = max(requested, window + 1)
        if dialect == "anthropic":
            raise _Reject(400, f"prompt is too long: {requested} tokens > {window} maximum")
        raise _Reject(
            400,
            f"This model's maximum context length is {window} tokens. However, you requested {requested} tokens "
            f"({prompt_tokens} in the messages, {max_tokens or 0} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )

    # -- planning -------------------------------------------------------------------------------

    def _reply_text(self, prompt_text: str, seed: Any, index: int, fault: Fault) -> str:
        cfg = self.config
        if fault.reply_tokens is not None:
            return _lorem(fault.reply_tokens, f"{prompt_text}|{seed}|{index}")
        if cfg.reply_mode == "fixed":
            return cfg.reply_text
        if cfg.reply_mode == "lorem":
            return _lorem(cfg.reply_tokens, f"{prompt_text}|{seed}|{index}")
        text = (
            MAGIC_RE.sub(b"", prompt_text.encode()).decode().strip()
            if "[[fault:" in prompt_text
            else prompt_text.strip()
        )
        if not text:
            return "OK"
        toks = tokenize(text)
        return "".join(toks[: cfg.max_reply_tokens]) if len(toks) > cfg.max_reply_tokens else text

    def _plan(
        self,
        prompt_text: str,
        *,
        n: int,
        max_tokens: int | None,
        stop: Any,
        seed: Any,
        fault: Fault,
        tool: tuple[str, dict[str, Any]] | None = None,
        json_schema: Any = None,
        json_mode: bool = False,
        id_prefix: str = "call_",
    ) -> list[_Choice]:
        out = []
        for i in range(n):
            if tool is not None:
                args = orjson.dumps(_example_for_schema(tool[1])).decode()
                cid = f"{id_prefix}fake{hashlib.blake2s(f'{prompt_text}|{i}'.encode(), digest_size=8).hexdigest()}"
                out.append(_Choice([], "tool_calls", (cid, tool[0], args)))
                continue
            text = self._reply_text(prompt_text, seed, i, fault)
            if json_schema is not None:
                text = orjson.dumps(_example_for_schema(json_schema)).decode()
            elif json_mode:
                text = orjson.dumps({"reply": text}).decode()
            text, hit = _apply_stop(text, stop)
            toks = tokenize(text)
            if max_tokens is not None and len(toks) > max_tokens:
                out.append(_Choice(toks[:max_tokens], "length"))
            else:
                out.append(_Choice(toks, "stop", stop_hit=hit))
        return out

    # -- OpenAI chat ----------------------------------------------------------------------------

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        self._enter()
        try:
            body, model, fault = await self._begin(request, "openai")
            assert model is not None
            prompt_tokens = _chat_prompt_tokens(body)
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            self._check_context(model, prompt_tokens, max_tokens, fault, "openai")
            n = int(body.get("n") or 1)
            tools = body.get("tools")
            tool_choice = body.get("tool_choice")
            tool = None
            if tools and tool_choice != "none":
                tool = _pick_openai_tool(tools, tool_choice)
            rf = body.get("response_format") or {}
            json_schema = None
            if rf.get("type") == "json_schema":
                json_schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
            plans = self._plan(
                _last_user_text(body.get("messages")),
                n=n,
                max_tokens=max_tokens,
                stop=body.get("stop"),
                seed=body.get("seed"),
                fault=fault,
                tool=tool,
                json_schema=json_schema,
                json_mode=rf.get("type") == "json_object",
            )
            completion_tokens = sum(p.n_tokens for p in plans)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            top = int(body.get("top_logprobs") or 0)
            want_lp = bool(body.get("logprobs"))
            cid = f"chatcmpl-fake{next(self._ids):012d}"
            created = int(time.time())
            if body.get("stream"):
                self._streams += 1
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                events = _chat_stream_events(
                    cid,
                    created,
                    model,
                    plans,
                    usage if include_usage else None,
                    want_lp,
                    max(top, 1) if want_lp else 0,
                )
                return await self._send_stream(request, events, fault)
            choices = []
            for i, p in enumerate(plans):
                if p.tool is not None:
                    message: dict[str, Any] = {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "tool_calls": [
                            {
                                "id": p.tool[0],
                                "type": "function",
                                "function": {"name": p.tool[1], "arguments": p.tool[2]},
                            }
                        ],
                    }
                else:
                    message = {"role": "assistant", "content": p.text, "refusal": None}
                lp = None
                if want_lp and p.tool is None:
                    lp = {
                        "content": [_chat_logprobs_entry(t, j, max(top, 1)) for j, t in enumerate(p.tokens)],
                        "refusal": None,
                    }
                choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": p.finish})
            resp = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": _FINGERPRINT,
                "choices": choices,
                "usage": usage,
            }
            return await self._send_body(request, orjson.dumps(resp), fault)
        except _Reject as rej:
            return self._error_response("openai", rej)
        finally:
            self._in_flight -= 1

    # -- OpenAI completions ---------------------------------------------------------------------

    async def _completions(self, request: web.BaseRequest) -> web.StreamResponse:
        self._enter()
        try:
            body, model, fault = await self._begin(request, "openai")
            assert model is not None
            prompts = _completion_prompts(body.get("prompt", ""))
            prompt_tokens = sum(c for _, c in prompts)
            max_tokens = body.get("max_tokens")
            if max_tokens is None:
                max_tokens = 16  # the legacy endpoint's documented default
            self._check_context(
                model, max(c for _, c in prompts) if prompts else 0, max_tokens, fault, "openai"
            )
            n = int(body.get("n") or 1)
            echo = bool(body.get("echo"))
            lp_top = body.get("logprobs")
            cid = f"cmpl-fake{next(self._ids):012d}"
            created = int(time.time())
            all_plans: list[tuple[int, str, _Choice]] = []
            for pi, (ptext, _) in enumerate(prompts):
                for j, plan in enumerate(
                    self._plan(
                        ptext,
                        n=n,
                        max_tokens=max_tokens,
                        stop=body.get("stop"),
                        seed=body.get("seed"),
                        fault=fault,
                    )
                ):
                    all_plans.append((pi * n + j, ptext, plan))
            completion_tokens = sum(p.n_tokens for _, _, p in all_plans)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if body.get("stream"):
                self._streams += 1
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                events = _completion_stream_events(
                    cid, created, model, all_plans, usage if include_usage else None, echo, lp_top
                )
                return await self._send_stream(request, events, fault)
            choices = []
            for idx, ptext, p in all_plans:
                text = (ptext + p.text) if echo else p.text
                lp = (
                    _completion_logprobs(p.tokens, int(lp_top), len(ptext) if echo else 0)
                    if lp_top is not None
                    else None
                )
                choices.append({"text": text, "index": idx, "logprobs": lp, "finish_reason": p.finish})
            resp = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": _FINGERPRINT,
                "choices": choices,
                "usage": usage,
            }
            return await self._send_body(request, orjson.dumps(resp), fault)
        except _Reject as rej:
            return self._error_response("openai", rej)
        finally:
            self._in_flight -= 1

    # -- OpenAI embeddings ----------------------------------------------------------------------

    async def _embeddings(self, request: web.BaseRequest) -> web.StreamResponse:
        self._enter()
        try:
            body, model, fault = await self._begin(request, "openai")
            assert model is not None
            items = _embedding_inputs(body.get("input"))
            dim = int(body.get("dimensions") or self.config.embedding_dim)
            b64 = body.get("encoding_format") == "base64"
            prompt_tokens = 0
            data = []
            window = self.config.models.get(model, self.config.default_context_window)
            for i, (key, ntok) in enumerate(items):
                if ntok > window or fault.context_length:
                    self._check_context(model, ntok, None, fault, "openai")
                prompt_tokens += ntok
                vec = _embed(key, dim)
                emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
                data.append({"object": "embedding", "index": i, "embedding": emb})
            resp = {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
            return await self._send_body(request, orjson.dumps(resp), fault)
        except _Reject as rej:
            return self._error_response("openai", rej)
        finally:
            self._in_flight -= 1

    # -- Anthropic messages ---------------------------------------------------------------------

    async def _messages(self, request: web.BaseRequest) -> web.StreamResponse:
        self._enter()
        try:
            body, model, fault = await self._begin(request, "anthropic")
            assert model is not None
            max_tokens = body.get("max_tokens")
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise _Reject(400, "max_tokens: Field required")
            prompt_tokens = _anthropic_prompt_tokens(body)
            self._check_context(model, prompt_tokens, None, fault, "anthropic")
            tools = body.get("tools")
            tc = body.get("tool_choice") or {}
            tool = None
            if tools and tc.get("type") != "none":
                chosen = (
                    next((t for t in tools if t.get("name") == tc.get("name")), tools[0])
                    if tc.get("type") == "tool"
                    else tools[0]
                )
                tool = (chosen.get("name", "tool"), chosen.get("input_schema") or {})
            plan = self._plan(
                _last_user_text(body.get("messages")),
                n=1,
                max_tokens=max_tokens,
                stop=body.get("stop_sequences"),
                seed=None,
                fault=fault,
                tool=tool,
                id_prefix="toolu_",
            )[0]
            stop_reason = {
                "stop": "stop_sequence" if plan.stop_hit else "end_turn",
                "length": "max_tokens",
                "tool_calls": "tool_use",
            }[plan.finish]
            mid = f"msg_fake{next(self._ids):012d}"
            usage = {
                "input_tokens": prompt_tokens,
                "output_tokens": plan.n_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            }
            if body.get("stream"):
                self._streams += 1
                events = _anthropic_stream_events(mid, model, plan, stop_reason, usage)
                return await self._send_stream(request, events, fault, "anthropic")
            if plan.tool is not None:
                content = [
                    {
                        "type": "tool_use",
                        "id": plan.tool[0],
                        "name": plan.tool[1],
                        "input": orjson.loads(plan.tool[2]),
                    }
                ]
            else:
                content = [{"type": "text", "text": plan.text}]
            resp = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": plan.stop_hit,
                "usage": usage,
            }
            return await self._send_body(request, orjson.dumps(resp), fault)
        except _Reject as rej:
            return self._error_response("anthropic", rej)
        finally:
            self._in_flight -= 1

    # -- models, health, control ----------------------------------------------------------------

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=self._models_body, content_type=_JSON)

    def _model_one(self, model: str) -> web.Response:
        if model not in self.config.models and self.config.strict_models:
            return self._error_response(
                "openai",
                _Reject(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    code="model_not_found",
                ),
            )
        return web.Response(
            body=orjson.dumps({"id": model, "object": "model", "created": 0, "owned_by": "fake-provider"}),
            content_type=_JSON,
        )

    async def _health(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def _ctl_stats(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.stats), content_type=_JSON)

    async def _ctl_stats_reset(self, request: web.BaseRequest) -> web.StreamResponse:
        self.reset_stats()
        return web.Response(body=b'{"ok":true}', content_type=_JSON)

    async def _ctl_faults_get(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.faults), content_type=_JSON)

    async def _ctl_faults_delete(self, request: web.BaseRequest) -> web.StreamResponse:
        self.clear_faults()
        return web.Response(body=orjson.dumps(self.faults), content_type=_JSON)

    async def _ctl_faults_post(self, request: web.BaseRequest) -> web.StreamResponse:
        """Body: {"clear": bool, "default": spec|null, "models": {m: spec}, "fail_next": {"count", "fault", "model"}}.

        Keys left out keep their current value; "clear": true starts from no faults.
        """
        try:
            data = orjson.loads(await request.read())
            if not isinstance(data, dict):
                raise FaultSpecError("body must be a JSON object")
            if data.get("clear"):
                self.clear_faults()
            if "default" in data or "models" in data:
                cur = self._faults
                self.set_faults(
                    data.get("default", cur.default),
                    models=data.get("models", cur.per_model),
                )
            if "fail_next" in data:
                fn = data["fail_next"] or {}
                self.fail_next(int(fn.get("count", 1)), fn.get("fault", "500"), model=fn.get("model"))
        except (FaultSpecError, ValueError, TypeError) as exc:
            return self._error_response("openai", _Reject(400, f"bad fault request: {exc}"))
        return web.Response(body=orjson.dumps(self.faults), content_type=_JSON)

    async def _ctl_requests(self, request: web.BaseRequest) -> web.StreamResponse:
        items = [
            {
                "method": r.method,
                "path": r.path,
                "model": r.model,
                "body": r.body,
                "headers": {str(k).lower(): v for k, v in r.headers.items()},
            }
            for r in self._recent
        ]
        return web.Response(body=orjson.dumps(items), content_type=_JSON)

    # -- writing answers ------------------------------------------------------------------------

    def _enter(self) -> None:
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight

    async def _send_body(self, request: web.BaseRequest, payload: bytes, fault: Fault) -> web.StreamResponse:
        if fault.is_noop():
            return web.Response(body=payload, content_type=_JSON)
        if fault.malformed:
            self._faults_injected += 1
            return web.Response(body=payload[: max(1, len(payload) // 2)], content_type=_JSON)
        if fault.cut_after is not None or fault.stall_after is not None:
            self._faults_injected += 1
            resp = web.StreamResponse(headers={"Content-Type": _JSON})
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            if fault.stall_after is not None:
                await self._wait_forever()
            return _abort(request, resp)
        return web.Response(body=payload, content_type=_JSON)

    async def _send_stream(
        self, request: web.BaseRequest, events: list[bytes], fault: Fault, dialect: str = "openai"
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        if not fault.is_noop():
            events = self._stream_faults(events, fault, dialect)
        limit = None
        if fault.cut_after is not None or fault.stall_after is not None:
            self._faults_injected += 1
            # never the terminal event: a cut stream must not look complete
            n = fault.cut_after if fault.cut_after is not None else fault.stall_after or 0
            limit = min(n, len(events) - 1)
            events = events[:limit]
        try:
            if fault.chunk_latency_s:
                for ev in events:
                    await asyncio.sleep(fault.chunk_latency_s)
                    await resp.write(ev)
            elif events:
                await resp.write(b"".join(events))
            if limit is not None:
                if fault.stall_after is not None and fault.cut_after is None:
                    await self._wait_forever()
                return _abort(request, resp)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        return resp

    def _stream_faults(self, events: list[bytes], fault: Fault, dialect: str) -> list[bytes]:
        """Rewrite the event list for malformed / error_event / nodone faults."""
        if fault.malformed:
            self._faults_injected += 1
            events = [b'data: {"id": "broken", "choices": [\n\n', *events]
        if fault.error_event_after is not None:
            self._faults_injected += 1
            n = min(fault.error_event_after, len(events) - 1)
            if dialect == "anthropic":
                err = _anthropic_event(
                    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                )
            else:
                err = _sse(
                    {
                        "error": {
                            "message": "upstream model crashed mid-stream (fake provider)",
                            "type": "server_error",
                            "param": None,
                            "code": 500,
                        }
                    }
                )
            events = [*events[:n], err, events[-1]]
        if fault.no_done:
            self._faults_injected += 1
            events = events[:-1]
        return events


def _abort(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection without finishing the body: what a crashing upstream looks like."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    resp.force_close()
    return resp


def _pick_openai_tool(tools: Any, tool_choice: Any) -> tuple[str, dict[str, Any]] | None:
    funcs = [t.get("function") or {} for t in tools if isinstance(t, dict)]
    if not funcs:
        return None
    chosen = funcs[0]
    if isinstance(tool_choice, dict):
        want = (tool_choice.get("function") or {}).get("name")
        chosen = next((f for f in funcs if f.get("name") == want), chosen)
    return chosen.get("name", "tool"), chosen.get("parameters") or {}


def _completion_prompts(prompt: Any) -> list[tuple[str, int]]:
    """(text, token count) per prompt; token-id prompts count their ids and have no text."""
    if isinstance(prompt, str):
        return [(prompt, count_tokens(prompt))]
    if isinstance(prompt, list):
        if prompt and all(isinstance(x, int) for x in prompt):
            return [("", len(prompt))]
        out = []
        for p in prompt:
            if isinstance(p, str):
                out.append((p, count_tokens(p)))
            elif isinstance(p, list):
                out.append(("", len(p)))
        return out or [("", 0)]
    return [("", 0)]


def _embedding_inputs(inp: Any) -> list[tuple[bytes, int]]:
    if isinstance(inp, str):
        return [(inp.encode(), count_tokens(inp))]
    if isinstance(inp, list):
        if inp and all(isinstance(x, int) for x in inp):
            return [(orjson.dumps(inp), len(inp))]
        out = []
        for x in inp:
            if isinstance(x, str):
                out.append((x.encode(), count_tokens(x)))
            elif isinstance(x, list):
                out.append((orjson.dumps(x), len(x)))
        if out:
            return out
    raise _Reject(400, "'input' must be a string, a list of strings or a list of token lists", param="input")


def _chat_stream_events(
    cid: str,
    created: int,
    model: str,
    plans: list[_Choice],
    usage: dict[str, int] | None,
    want_lp: bool,
    top: int,
) -> list[bytes]:
    base: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": _FINGERPRINT,
    }
    if usage is not None:
        base["usage"] = None

    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> bytes:
        return _sse(
            {**base, "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
        )

    out = []
    for i, p in enumerate(plans):
        if p.tool is not None:
            cid_, name, args = p.tool
            out.append(
                chunk(
                    i,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": cid_,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ],
                    },
                )
            )
            for piece in tokenize(args):
                out.append(chunk(i, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        else:
            out.append(
                chunk(
                    i,
                    {"role": "assistant", "content": "", "refusal": None},
                    lp={"content": [], "refusal": None} if want_lp else None,
                )
            )
            for j, tok in enumerate(p.tokens):
                lp = {"content": [_chat_logprobs_entry(tok, j, top)], "refusal": None} if want_lp else None
                out.append(chunk(i, {"content": tok}, lp=lp))
        out.append(chunk(i, {}, p.finish))
    if usage is not None:
        out.append(_sse({**base, "choices": [], "usage": usage}))
    out.append(_SSE_DONE)
    return out


def _completion_stream_events(
    cid: str,
    created: int,
    model: str,
    plans: list[tuple[int, str, _Choice]],
    usage: dict[str, int] | None,
    echo: bool,
    lp_top: Any,
) -> list[bytes]:
    base = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": _FINGERPRINT,
    }
    out = []
    for idx, ptext, p in plans:
        pieces = ([ptext] if echo and ptext else []) + p.tokens
        for j, tok in enumerate(pieces):
            lp = _completion_logprobs([tok], int(lp_top), 0) if lp_top is not None else None
            if lp is not None:
                lp["token_logprobs"] = [_logprob(j)]
            out.append(
                _sse(
                    {**base, "choices": [{"text": tok, "index": idx, "logprobs": lp, "finish_reason": None}]}
                )
            )
        out.append(
            _sse(
                {**base, "choices": [{"text": "", "index": idx, "logprobs": None, "finish_reason": p.finish}]}
            )
        )
    if usage is not None:
        out.append(_sse({**base, "choices": [], "usage": usage}))
    out.append(_SSE_DONE)
    return out


def _anthropic_stream_events(
    mid: str, model: str, plan: _Choice, stop_reason: str, usage: dict[str, int]
) -> list[bytes]:
    start_usage = {**usage, "output_tokens": 1}
    out = [
        _anthropic_event(
            {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            }
        )
    ]
    if plan.tool is not None:
        tid, name, args = plan.tool
        out.append(
            _anthropic_event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}},
                }
            )
        )
        out.append(_anthropic_event({"type": "ping"}))
        for piece in tokenize(args):
            out.append(
                _anthropic_event(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    }
                )
            )
    else:
        out.append(
            _anthropic_event(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            )
        )
        out.append(_anthropic_event({"type": "ping"}))
        for tok in plan.tokens:
            out.append(
                _anthropic_event(
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tok}}
                )
            )
    out.append(_anthropic_event({"type": "content_block_stop", "index": 0}))
    out.append(
        _anthropic_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": plan.stop_hit},
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        )
    )
    out.append(_anthropic_event({"type": "message_stop"}))
    return out


# ----------------------------------------------------------------------------------------------
# running it elsewhere: a thread (sync tests) or a subprocess (benchmarks, CLI)


class FakeProviderThread:
    """A FakeProvider on its own event loop in a daemon thread, for synchronous tests.

    ``with FakeProviderThread() as fp: requests.post(fp.base_url + "/chat/completions", …)``.
    Control methods run on the server's loop, so they are safe to call from the test thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self._args = (host, port, kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.provider: FakeProvider | None = None

    def start(self) -> str:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover - uvloop is a dependency
                loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            host, port, kwargs = self._args
            self.provider = FakeProvider(host, port, **kwargs)
            try:
                loop.run_until_complete(self.provider.start())
            except BaseException as exc:  # surfaced to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.provider.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
            self._thread = None

    def __enter__(self) -> FakeProviderThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], Any]) -> Any:
        assert self._loop is not None, "not started"

        async def go() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    @property
    def _p(self) -> FakeProvider:
        assert self.provider is not None, "not started"
        return self.provider

    @property
    def url(self) -> str:
        return self._p.url

    @property
    def base_url(self) -> str:
        return self._p.base_url

    def set_faults(
        self, default: str | Fault | None = None, *, models: Mapping[str, str | Fault] | None = None
    ) -> None:
        self._call(lambda: self._p.set_faults(default, models=models))

    def fail_next(self, count: int, fault: str | Fault = "500", *, model: str | None = None) -> None:
        self._call(lambda: self._p.fail_next(count, fault, model=model))

    def clear_faults(self) -> None:
        self._call(self._p.clear_faults)

    @property
    def stats(self) -> dict[str, Any]:
        return self._call(lambda: self._p.stats)

    def reset_stats(self) -> None:
        self._call(self._p.reset_stats)


class FakeProviderProcess:
    """The fake provider as a child process (``python -m backends.fake_provider``), driven over HTTP.

    Use for benchmarks (the upstream must not share the gateway's CPU/GIL) and tests that need
    a separate process. Port 0 picks a free port; the child reports it on its first stdout line.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, args: Sequence[str] = (), python: str = sys.executable
    ) -> None:
        self.host = host
        self.port = port
        self._cmd = [python, "-m", "backends.fake_provider", "--host", host, "--port", str(port), *args]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, cwd=root, env=env)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if line.startswith(b"FAKE_PROVIDER_LISTENING "):
                self.port = int(line.split()[1].rsplit(b":", 1)[1])
                return self.base_url
            if not line and self._proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"fake provider did not start (last output {line!r})")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> FakeProviderProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": _JSON}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return orjson.loads(resp.read())

    def set_faults(self, default: str | None = None, *, models: Mapping[str, str] | None = None) -> None:
        self._control("POST", "/_control/faults", {"default": default, "models": dict(models or {})})

    def fail_next(self, count: int, fault: str = "500", *, model: str | None = None) -> None:
        self._control(
            "POST", "/_control/faults", {"fail_next": {"count": count, "fault": fault, "model": model}}
        )

    def clear_faults(self) -> None:
        self._control("DELETE", "/_control/faults")

    @property
    def stats(self) -> dict[str, Any]:
        return self._control("GET", "/_control/stats")

    def reset_stats(self) -> None:
        self._control("POST", "/_control/stats/reset", {})


# ----------------------------------------------------------------------------------------------
# CLI


def _parse_models(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, ctx = item.partition("=")
        out[name] = int(ctx) if ctx else 8192
    return out


async def _serve(args: argparse.Namespace) -> None:
    cfg = FakeProviderConfig(
        default_context_window=args.default_context_window,
        strict_models=args.strict_models,
        reply_mode=args.reply_mode,
        reply_tokens=args.reply_tokens,
        embedding_dim=args.embedding_dim,
        api_key=args.api_key,
    )
    if args.reply_text is not None:
        cfg.reply_text = args.reply_text
    if args.model:
        cfg.models = _parse_models(args.model)
    fp = FakeProvider(args.host, args.port, config=cfg)
    await fp.start()
    if args.fault:
        fp.set_faults(args.fault)
    print(f"FAKE_PROVIDER_LISTENING {fp.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fp.stop()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m backends.fake_provider", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001, help="0 = any free port (printed on stdout)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME[=CONTEXT]",
        help="served model and its context window (repeatable); default fake-model=8192, fake-small=512",
    )
    p.add_argument("--default-context-window", type=int, default=8192)
    p.add_argument("--strict-models", action="store_true", help="404 for models not given with --model")
    p.add_argument("--reply-mode", choices=["echo", "fixed", "lorem"], default="echo")
    p.add_argument("--reply-text", default=None)
    p.add_argument("--reply-tokens", type=int, default=16)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--api-key", default=None)
    p.add_argument("--fault", default=None, help="server-wide default fault spec, e.g. 'latency:20'")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep the CLI usable without it
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
