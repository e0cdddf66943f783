"""Direct backend for OpenAI-compatible upstreams (vLLM, SGLang, our local model server, the fake provider).

Why not litellm for these: the gateway must add ≤ 1 ms p50 and sustain ≥ 600 req/s on one
core, and litellm's per-call work (param mapping, logging hooks, pydantic response objects)
costs more than that. This module forwards the OpenAI-shaped body as bytes, parses the answer
with orjson, and keeps one pooled aiohttp session per deployment. aiohttp was chosen over httpx
by measurement (tests/backends/bench_clients.py, one core each for client and server, uvloop):
aiohttp p50 0.18 ms and ~3400 req/s at concurrency 32; httpx p50 0.70 ms and ~430 req/s.

Timeouts, all reported as kind "timeout" (``err.body["phase"]`` says which):
  * "connect": TCP connect, at most `connect_timeout_s` (never more than the call's deadline);
  * "total": a non-streamed call must finish within ``call.timeout_s``;
  * "first_byte": a streamed call must deliver its first event within ``call.timeout_s``;
  * "idle": between two stream events at most ``call.stream_idle_timeout_s``.
Once a stream has yielded a chunk, every failure (idle timeout, cut connection, bad JSON, an
upstream error event, EOF without ``[DONE]``) is raised as kind "stream_cut" — the `Backend`
contract: the caller must not splice another answer in. ``err.body["cause"]`` keeps the
underlying kind.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from backends.base import (
    RESPONSES_END,
    RESPONSES_FAILED,
    Kind,
    UpstreamCall,
    UpstreamError,
    UpstreamResponse,
    Usage,
    idle_cut,
    redacted,
    redacted_stream,
    secret_values,
    stream_cut,
    timeout_error,
    transport_reason,
    usage_fields,
)
from backends.sse import DONE, SSEDecoder, with_stream_usage
from common.types import DeploymentConfig

__all__ = [
    "OpenAICompatibleBackend",
    "error_from_status",
    "parse_retry_after",
    "classify_client_error",
    "usage_of",
]

_PATHS: Mapping[str, str] = MappingProxyType(
    {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings", "responses": "/responses"}
)
# What a complete answer of each kind must hold to be an answer (not an error object or garbage).
_ANSWER_KEY: Mapping[str, str] = MappingProxyType(
    {"chat": "choices", "completion": "choices", "embedding": "data", "responses": "output"}
)


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "reduce the length",
    "exceeds the model's max",
)
# The code our local model server (`local_model/server.py`) gives a 503 when its engine's queue is full:
# busy, not broken ("overloaded", which never counts against a breaker), whether the server is the
# gateway's own child process or a `local-model serve` reached as any OpenAI-compatible upstream.
LOCAL_OVERLOADED_CODE = "overloaded"

_CONTENT_MARKERS = (
    "content_filter",
    "content_policy",
    "content management policy",
    "content filtering policy",
    "safety system",
    "responsibleaipolicyviolation",
)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_client_error(status: int, text: str) -> str:
    """Kind for a 4xx answer: context window and content policy are recognised by code or message."""
    low = text.lower()
    if any(m in low for m in _CONTEXT_MARKERS):
        return "context_window"
    if any(m in low for m in _CONTENT_MARKERS):
        return "content_policy"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 408:
        return "timeout"
    return "bad_request"


def error_from_status(
    status: int, raw: bytes | str, headers: Mapping[str, str] | None = None
) -> UpstreamError:
    """Map an upstream HTTP error answer to an `UpstreamError` (body: the parsed error JSON, if any)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    body: Any
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = text[:2000]
    message = _error_message(body) or text[:500] or f"HTTP {status}"
    if status == 429:
        return UpstreamError(
            "rate_limit", message, status=status, retry_after_s=parse_retry_after(headers), body=body
        )
    if status >= 500:
        kind = "overloaded" if status == 503 and _error_code(body) == LOCAL_OVERLOADED_CODE else "server_error"
        return UpstreamError(kind, message, status=status, retry_after_s=parse_retry_after(headers), body=body)
    return UpstreamError(classify_client_error(status, text), message, status=status, body=body)


def _error_code(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message")
            return str(msg) if msg is not None else None
        if isinstance(err, str):
            return err
    return None


def usage_of(body: Mapping[str, Any]) -> Usage:
    """Usage from an OpenAI-shaped body, chat or Responses form (zeros when the upstream did not report it)."""
    u = body.get("usage")
    if not isinstance(u, dict):
        return Usage()
    return usage_fields(u)


def responses_event_error(event: Mapping[str, Any]) -> UpstreamError:
    """A Responses stream's `error` or `response.failed` event as the error it reports. An `error` event
    carries its fields flat (the API reference) or nested under `error` (the live API, and a server that
    sends chat's `{"error": {...}}` shape in a Responses stream)."""
    if event.get("type") == "response.failed":
        err = (event.get("response") or {}).get("error")
    else:
        err = event.get("error") if isinstance(event.get("error"), Mapping) else event
    err = err if isinstance(err, Mapping) else {}
    message = str(err.get("message") or "upstream response failed")
    kind = classify_client_error(400, message)
    return UpstreamError(kind if kind in ("context_window", "content_policy") else "server_error", message,
                         status=500, body=dict(event))


def _client_error_reason(exc: aiohttp.ClientError) -> str:
    """`transport_reason` with aiohttp's own failures that have no socket error under them."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection closed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "invalid HTTP response"
    return transport_reason(exc)


def _connection_error(message: str, exc: aiohttp.ClientError) -> UpstreamError:
    """A transport failure: aiohttp's words (and the URL) for the request log, a plain reason for the client."""
    return UpstreamError("connection", message, reason=_client_error_reason(exc))


class OpenAICompatibleBackend:
    """`Backend` for one OpenAI-compatible deployment, over one pooled aiohttp session.

    `base_url` is the OpenAI base including the version segment (``http://host:8000/v1``).
    The session is created lazily inside the running event loop (and re-created if a later call
    runs on a different loop, as pytest-asyncio does per test).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        pool_limit: int = 1024,
        keepalive_timeout_s: float = 60.0,
        require_done: bool = True,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        # what an error must never carry: the key, and a password written into the URL
        self._secrets = secret_values((api_key, urlsplit(self.base_url).password))
        self._urls = {k: self.base_url + p for k, p in _PATHS.items()}
        hdrs = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        hdrs.update(headers or {})
        self._headers = hdrs
        self._stream_headers = {**hdrs, "Accept": "text/event-stream"}
        self.connect_timeout_s = connect_timeout_s
        self._pool_limit = pool_limit
        self._keepalive_timeout_s = keepalive_timeout_s
        self.require_done = require_done
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(
        cls, cfg: DeploymentConfig, *, api_key: str | None = None, **kwargs: Any
    ) -> OpenAICompatibleBackend:
        if not cfg.api_base:
            raise ValueError(
                f"deployment {cfg.name!r}: provider openai_compatible needs api_base (e.g. http://host:8000/v1)"
            )
        return cls(cfg.name, cfg.api_base, api_key=api_key, **kwargs)

    # -- session --------------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        s = self._session
        if s is not None and not s.closed and self._session_loop is loop:
            return s
        connector = aiohttp.TCPConnector(
            limit=self._pool_limit,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_timeout_s,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        s, self._session = self._session, None
        # a session belongs to the loop that made it; one from a finished loop cannot be closed here
        if s is not None and not s.closed and self._session_loop is asyncio.get_running_loop():
            await s.close()

    def _url(self, kind: Kind) -> str:
        try:
            return self._urls[kind]
        except KeyError:
            raise UpstreamError("bad_request", f"{self.name}: unsupported call kind {kind!r}") from None

    def _merge_headers(self, base: dict[str, str], extra: Mapping[str, str]) -> dict[str, str]:
        return {**base, **extra} if extra else base

    # -- non-streamed ---------------------------------------------------------------------------

    async def complete(self, call: UpstreamCall) -> UpstreamResponse:
        return await redacted(self._complete(call), self._secrets)

    async def _complete(self, call: UpstreamCall) -> UpstreamResponse:
        url = self._url(call.kind)
        body = call.body
        if body.get("stream") or "stream_options" in body:
            body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        connect_s = min(self.connect_timeout_s, call.timeout_s)
        timeout = aiohttp.ClientTimeout(total=call.timeout_s, sock_connect=connect_s)
        session = self._get_session()
        try:
            async with session.post(
                url,
                data=orjson.dumps(body),
                headers=self._merge_headers(self._headers, call.headers),
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                if status >= 400:
                    raise error_from_status(status, raw, resp.headers)
        except aiohttp.ConnectionTimeoutError:
            raise timeout_error("connect", connect_s) from None
        except TimeoutError:
            raise timeout_error("total", call.timeout_s) from None
        except aiohttp.ClientPayloadError as exc:
            raise _connection_error(f"upstream answer cut: {exc}", exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise _connection_error(f"cannot connect to {self.base_url}: {exc.os_error}", exc) from None
        except aiohttp.ClientError as exc:  # disconnected, reset, invalid HTTP
            raise _connection_error(f"upstream connection failed: {exc!r}", exc) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                "malformed",
                f"upstream answer is not valid JSON: {exc}",
                status=status,
                body=raw[:2000].decode("utf-8", "replace"),
            ) from None
        if not isinstance(data, dict) or _ANSWER_KEY[call.kind] not in data:
            if isinstance(data, dict) and "error" in data:
                raise _error_from_object(data, raw)
            raise UpstreamError(
                "malformed", "upstream answer does not have the OpenAI shape", status=status, body=data
            )
        return UpstreamResponse(data, usage_of(data), status)

    # -- streamed -------------------------------------------------------------------------------

    def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI chunk dicts; the usage chunk is always requested (see `backends.sse`)."""
        return redacted_stream(self._stream(call), self._secrets)

    async def _stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        if call.kind == "embedding":
            raise UpstreamError("bad_request", "embeddings cannot be streamed")
        url = self._url(call.kind)
        responses = call.kind == "responses"
        payload = orjson.dumps({**call.body, "stream": True} if responses else with_stream_usage(call.body))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeout_s
        connect_s = min(self.connect_timeout_s, call.timeout_s)
        idle_s = call.stream_idle_timeout_s
        session = self._get_session()
        try:
            async with asyncio.timeout_at(deadline):
                resp = await session.post(
                    url,
                    data=payload,
                    headers=self._merge_headers(self._stream_headers, call.headers),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s),
                )
        except aiohttp.ConnectionTimeoutError:
            raise timeout_error("connect", connect_s) from None
        except TimeoutError:
            raise timeout_error("first_byte", call.timeout_s) from None
        except aiohttp.ClientConnectorError as exc:
            raise _connection_error(f"cannot connect to {self.base_url}: {exc.os_error}", exc) from None
        except aiohttp.ClientError as exc:
            raise _connection_error(f"upstream connection failed: {exc!r}", exc) from None

        done = False
        try:
            if resp.status >= 400 or not resp.content_type.startswith("text/event-stream"):
                raw = await self._read_all(resp, deadline, call.timeout_s)
                if resp.status >= 400:
                    raise error_from_status(resp.status, raw, resp.headers)
                raise self._non_sse_answer(raw)
            decoder = SSEDecoder()
            content = resp.content
            n = 0
            while not done:
                try:
                    if n == 0:
                        async with asyncio.timeout_at(deadline):
                            data = await content.readany()
                    else:
                        async with asyncio.timeout(idle_s):
                            data = await content.readany()
                except TimeoutError:
                    if n == 0:
                        raise timeout_error("first_byte", call.timeout_s) from None
                    raise idle_cut(idle_s, n) from None
                except aiohttp.ClientError as exc:  # payload error (connection cut), reset
                    if n == 0:
                        raise UpstreamError(
                            "stream_cut",
                            f"stream cut before the first chunk: {exc!r}",
                            body={"cause": "connection", "chunks_yielded": 0},
                            reason=f"{_client_error_reason(exc)} before the first chunk",
                        ) from None
                    raise stream_cut("connection", repr(exc), n, reason=_client_error_reason(exc)) from None
                events = decoder.feed(data) if data else decoder.flush()
                for _event, payload_bytes in events:
                    if payload_bytes == DONE:
                        done = True
                        break
                    try:
                        chunk = orjson.loads(payload_bytes)
                    except orjson.JSONDecodeError as exc:
                        if n == 0:
                            raise UpstreamError(
                                "malformed",
                                f"stream event is not valid JSON: {exc}",
                                body=payload_bytes[:2000].decode("utf-8", "replace"),
                            ) from None
                        raise stream_cut("malformed", f"stream event is not valid JSON: {exc}", n) from None
                    if not isinstance(chunk, dict):
                        if n == 0:
                            raise UpstreamError("malformed", "stream event is not a JSON object", body=chunk)
                        raise stream_cut("malformed", "stream event is not a JSON object", n)
                    kind = chunk.get("type") if responses else None
                    if responses and not isinstance(kind, str):
                        # every Responses event names its type; one without is an error in chat's shape, or garbage
                        if "error" not in chunk:
                            if n == 0:
                                raise UpstreamError("malformed", "stream event has no type", body=chunk)
                            raise stream_cut("malformed", "stream event has no type", n)
                        kind = "error"
                    if (kind in RESPONSES_FAILED) if responses else ("error" in chunk and not chunk.get("choices")):
                        err = responses_event_error(chunk) if responses else _error_from_object(chunk, payload_bytes)
                        if n == 0:
                            raise err
                        raise stream_cut(err.kind, err.message, n, error=err.body)
                    n += 1
                    yield chunk
                    if kind in RESPONSES_END:  # a Responses stream ends with its last event, no [DONE]
                        done = True
                        break
                if not data and not done:
                    if self.require_done:
                        raise stream_cut("stream_cut", "stream ended without [DONE]", n)
                    break
            if done and not content.at_eof():
                # read the chunked terminator so the connection goes back to the pool
                try:
                    async with asyncio.timeout(min(idle_s, 1.0)):
                        await content.read()
                except (TimeoutError, aiohttp.ClientError):
                    done = False
        finally:
            if done:
                resp.release()
            else:
                resp.close()

    async def _read_all(self, resp: aiohttp.ClientResponse, deadline: float, timeout_s: float) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await resp.read()
        except TimeoutError:
            raise timeout_error("first_byte", timeout_s) from None
        except aiohttp.ClientError as exc:
            raise _connection_error(f"upstream answer cut: {exc!r}", exc) from None

    @staticmethod
    def _non_sse_answer(raw: bytes) -> UpstreamError:
        """A 2xx that is not an event stream: an error object, or a server that ignored stream=true."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return UpstreamError(
                "malformed",
                "expected an event stream, got a non-JSON body",
                body=raw[:2000].decode("utf-8", "replace"),
            )
        if isinstance(data, dict) and "error" in data:
            return _error_from_object(data, raw)
        return UpstreamError("malformed", "expected an event stream, got a JSON body", body=data)


def _error_from_object(obj: Mapping[str, Any], raw: bytes) -> UpstreamError:
    """An error object inside a 200 answer or an SSE event (vLLM/SGLang send these mid-stream).

    Its status comes from the object (vLLM puts ``"code": 400``); without one, a recognisable
    context-window or content-policy message is kept as such, anything else is a server error.
    """
    err = obj.get("error")
    if isinstance(err, dict):
        for key in ("code", "status", "status_code"):
            v = err.get(key)
            if isinstance(v, int) and 400 <= v <= 599:
                return error_from_status(v, raw)
    kind = classify_client_error(400, raw.decode("utf-8", "replace"))
    return error_from_status(400 if kind in ("context_window", "content_policy") else 500, raw)
