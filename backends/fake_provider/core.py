"""The request pipeline every model endpoint shares, and where faults are applied.

`ProviderCore` reads and parses the body, counts and records it, checks the API key, works out
the fault (server-wide state, the ``x-fake-fault`` header, ``[[fault:…]]`` in the body), applies
the faults that act before any answer, checks the context window, and writes the answer: a body
or a whole stream, cut, stalled, malformed or truncated as the fault asks. The endpoint mixins
(`OpenAIHandlers`, `AnthropicHandlers`, `ControlHandlers`) build on it; `FakeProvider` sets the
state declared here. Everything stays a plain method so the hot path has no extra indirection.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from backends.fake_provider.config import FakeProviderConfig, RecordedRequest
from backends.fake_provider.errors import ANTHROPIC_MESSAGES, OPENAI_ERRORS, Reject, error_response
from backends.fake_provider.faults import MAGIC_RE, Fault, FaultSpecError, FaultState, parse_fault
from backends.fake_provider.wire import JSON, SSE_HEADERS, anthropic_event, sse

_NOOP = Fault()

_Core = TypeVar("_Core", bound="ProviderCore")
# what an endpoint's body is given once the request is read: (self, request, body, model, fault)
Answer = Callable[[_Core, web.BaseRequest, dict[str, Any], str, Fault], Awaitable[web.StreamResponse]]
# what the routing table calls: (self, request)
Endpoint = Callable[[_Core, web.BaseRequest], Awaitable[web.StreamResponse]]


def endpoint(dialect: str) -> Callable[[Answer[_Core]], Endpoint[_Core]]:
    """Wrap a model endpoint of `dialect` in what every one of them does around its answer.

    Count the request in flight for its whole life (``max_in_flight`` in the stats), read it through
    `ProviderCore._begin` (auth, faults, model check), and turn any `Reject`, raised there or by the
    answer itself, into an error body shaped for `dialect` ("openai" or "anthropic"). One place, so
    the endpoints of both protocols cannot drift apart on status codes or on the in-flight count.
    """

    def wrap(answer: Answer[_Core]) -> Endpoint[_Core]:
        @functools.wraps(answer)
        async def handler(self: _Core, request: web.BaseRequest) -> web.StreamResponse:
            self._enter()
            try:
                body, model, fault = await self._begin(request, dialect)
                assert model is not None  # _begin rejects a request without one
                return await answer(self, request, body, model, fault)
            except Reject as rej:
                return error_response(dialect, rej)
            finally:
                self._in_flight -= 1

        return handler

    return wrap


class ProviderCore:
    """Per-request machinery shared by the endpoint mixins; the state is set by `FakeProvider`."""

    config: FakeProviderConfig
    _faults: FaultState
    _ids: itertools.count[int]
    _recent: collections.deque[RecordedRequest]
    _closing: asyncio.Event | None
    _models_body: bytes
    # counters (see `ControlHandlers.reset_stats`)
    _total: int
    _streams: int
    _faults_injected: int
    _in_flight: int
    _max_in_flight: int
    _by_path: dict[str, int]
    _by_model: dict[str, int]
    _by_path_model: dict[str, dict[str, int]]

    # -- reading a request, faults before the answer --------------------------------------------

    async def _begin(
        self, request: web.BaseRequest, dialect: str
    ) -> tuple[dict[str, Any], str | None, Fault]:
        """Read + parse the body, count it, check auth, work out the fault. Raises Reject."""
        raw = await request.content.read()
        path = request.path
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._count(path, None)
            raise Reject(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            self._count(path, None)
            raise Reject(400, "Request body must be a JSON object")
        model = body.get("model")
        model = model if isinstance(model, str) else None
        self._count(path, model)
        self._recent.append(RecordedRequest(request.method, path, model, body, request.headers))
        key = self.config.api_key
        if key is not None:
            hdrs = request.headers
            if hdrs.get("Authorization") != f"Bearer {key}" and hdrs.get("x-api-key") != key:
                raise Reject(
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
            raise Reject(400, f"fake provider: bad fault spec: {exc}") from None
        if not fault.is_noop():
            await self._pre_faults(fault, dialect)
        if model is None:
            raise Reject(400, "you must provide a model parameter", param="model")
        if self.config.strict_models and model not in self.config.models:
            raise Reject(
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
            raise Reject(503, "fake provider shutting down")
        if fault.status is not None:
            self._faults_injected += 1
            headers: dict[str, str] = {}
            if fault.status == 429 or fault.retry_after_s is not None:
                ra = fault.retry_after_s if fault.retry_after_s is not None else 1.0
                headers["Retry-After"] = str(int(ra)) if ra == int(ra) else str(ra)
                headers["retry-after-ms"] = str(int(ra * 1000))
            if dialect == "anthropic":
                raise Reject(
                    fault.status,
                    ANTHROPIC_MESSAGES.get(fault.status, f"Error {fault.status} (fake provider)"),
                    headers=headers,
                )
            _, _, msg = OPENAI_ERRORS.get(fault.status, ("", None, f"Error {fault.status} (fake provider)."))
            raise Reject(fault.status, msg, headers=headers)
        if fault.content_filter:
            self._faults_injected += 1
            if dialect == "anthropic":
                raise Reject(400, "Output blocked by content filtering policy")
            raise Reject(
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
            raise Reject(400, f"prompt is too long: {requested} tokens > {window} maximum")
        raise Reject(
            400,
            f"This model's maximum context length is {window} tokens. However, you requested {requested} tokens "
            f"({prompt_tokens} in the messages, {max_tokens or 0} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )

    # -- writing answers ------------------------------------------------------------------------

    def _enter(self) -> None:
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight

    async def _send_body(self, request: web.BaseRequest, payload: bytes, fault: Fault) -> web.StreamResponse:
        if fault.is_noop():
            return web.Response(body=payload, content_type=JSON)
        if fault.malformed:
            self._faults_injected += 1
            return web.Response(body=payload[: max(1, len(payload) // 2)], content_type=JSON)
        if fault.cut_after is not None or fault.stall_after is not None:
            self._faults_injected += 1
            resp = web.StreamResponse(headers={"Content-Type": JSON})
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            if fault.stall_after is not None:
                await self._wait_forever()
            return abort(request, resp)
        return web.Response(body=payload, content_type=JSON)

    async def _send_stream(
        self, request: web.BaseRequest, events: list[bytes], fault: Fault, dialect: str = "openai"
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
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
                return abort(request, resp)
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
                err = anthropic_event(
                    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                )
            else:
                err = sse(
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


def abort(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection without finishing the body: what a crashing upstream looks like."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    resp.force_close()
    return resp
