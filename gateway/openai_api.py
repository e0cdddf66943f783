"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

One request = one `requests` log row (whatever happens: success, error, client cancel) plus
one `attempts` row per upstream try. The row is built here and handed to the sink in a
`finally`, so no path can skip or duplicate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from backends.base import UpstreamCall, UpstreamError
from common.types import DeploymentConfig
from gateway import sse
from gateway.coalesce import ready_batches
from gateway.edge import authenticate, read_json, validate
from gateway.errors import APIError, from_refusal, from_upstream, internal_error, model_not_found
from gateway.keys import ApiKey
from gateway.messages_api import MessagesWire, anthropic_error, count_tokens
from gateway.responses_api import ResponsesWire
from gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    prompt_text,
    request_features,
)
from gateway.services import Services
from gateway.wire.adapter import WireAdapter
from requestlog.rows import RequestRow
from requestlog.stored_responses import ResponseStore
from service.cascade import Asked, MakeCall
from service.errors import Refused
from service.executor import Execution
from service.routing import Route

_JSON = "application/json"
# a request for this model is served by the configured `default_model` (a model or policy name), if any
DEFAULT_MODEL_ALIAS = "default"
log = logging.getLogger("hybridgate")
# the log row's endpoint -> what a model that cannot serve it does not support (a wire format names its own)
_WHAT = {"chat": "chat completions", "completion": "text completions", "embedding": "embeddings",
         "responses": "the Responses API", "messages": "the Messages API"}


class _Ctx:
    """Per-request state threaded through one handler; becomes the log row at the end."""

    __slots__ = ("rid", "t0", "row", "key", "body", "route", "ex", "finished", "wire")

    def __init__(self, endpoint: str, wire: WireAdapter | None = None) -> None:
        self.rid = uuid.uuid4().hex
        self.t0 = time.perf_counter()
        self.row = RequestRow(id=self.rid, created_at=datetime.now(UTC), endpoint=endpoint)
        self.key: ApiKey | None = None
        self.body: dict[str, Any] | None = None
        self.route: Route | None = None
        self.ex: Execution | None = None
        self.finished = False
        self.wire = wire  # another wire format (Responses, Messages) over the chat pipeline

    def headers(self) -> dict[str, str]:
        h = {"x-request-id": self.rid}
        r = self.route
        if r is not None:
            if self.ex is not None and self.ex.served is not None:
                h["x-hybridgate-model"] = self.ex.served.deployment.model
                h["x-hybridgate-deployment"] = self.ex.served.deployment.name
            if r.policy:
                h["x-hybridgate-policy"] = f"{r.policy}@{r.policy_version}"
                h["x-hybridgate-propensity"] = f"{r.propensity:.6g}"
            h["x-hybridgate-route-reason"] = _header_safe(r.reason)
        return h


class _SettledStream(StreamingResponse):
    """A stream whose request is finished even when its body never runs (the client left before
    the first write): ``on_close`` runs after the response, and `_finish` happens once."""

    def __init__(self, on_close: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _header_safe(text: str) -> str:
    """Header values are latin-1 on the wire: keep reasons readable in plain ASCII."""
    text = text.replace("→", "->").replace("≤", "<=").replace("≥", ">=")
    return text.encode("ascii", "replace").translate(None, bytes(range(32)) + b"\x7f").decode()[:512]  # no CR, LF, NUL


def _served_name(ctx: _Ctx) -> str:
    if ctx.ex is not None and ctx.ex.served is not None:
        return ctx.ex.served.deployment.model
    return ctx.route.public_model if ctx.route else ""


def _asked(req: ChatCompletionRequest | CompletionRequest, kind: str) -> Asked:
    """What a cascade judging this request's first answer must know of the request."""
    if isinstance(req, CompletionRequest):
        return Asked.completion(prompt_text(req), req.prompt, req.logprobs, req.echo, req.max_tokens)
    return Asked(prompt_text(req), kind, bool(req.logprobs))


class OpenAIHandlers:
    def __init__(self, services: Services) -> None:
        self.s = services
        self._tasks: set[asyncio.Task[None]] = set()  # settling work (budget commits) in flight
        self.responses_store = ResponseStore(services.engine)

    # ---- shared steps -------------------------------------------------------------------------

    async def _begin(self, request: Request, ctx: _Ctx, schema: type) -> Any:
        s = self.s
        ctx.key = await authenticate(request, s.keys, s.settings.keys_required)
        if ctx.key is not None:
            ctx.row.api_key_id, ctx.row.user, ctx.row.team = ctx.key.id, ctx.key.user, ctx.key.team
        ctx.body = await read_json(request, s.settings.max_body_bytes)
        if ctx.wire is not None:
            ctx.body = await ctx.wire.prepare(ctx.body, ctx.key)
        model_name = ctx.body.get("model")
        if isinstance(model_name, str):
            ctx.row.requested_model = model_name[:256]  # as long as a valid name; longer ones are refused
        req = validate(schema, ctx.body)
        if req.model == DEFAULT_MODEL_ALIAS and s.settings.default_model:
            # the alias is resolved before anything reads the model (key restrictions, routing); the log row
            # keeps what was asked for
            req.model = s.settings.default_model
        if getattr(req, "user", None) and not (ctx.key is not None and ctx.key.user):
            ctx.row.user = req.user  # a key's bound user is the one its spend is logged (and budgeted) under
        meta = getattr(req, "metadata", None)
        if meta:
            ctx.row.metadata = dict(meta)
        if ctx.key is not None and ctx.key.allowed_models and req.model not in ctx.key.allowed_models:
            raise APIError(403, f"This API key may not use the model `{req.model}`.", type="permission_error",
                           param="model", code="model_not_allowed")
        self._log_body(ctx, req)
        return req

    def _log_body(self, ctx: _Ctx, req: Any) -> None:
        mode = self.s.settings.log.bodies
        if mode == "none" or ctx.body is None:
            return
        raw = orjson.dumps(ctx.wire.original if ctx.wire is not None else ctx.body)
        ctx.row.prompt_hash = hashlib.sha256(raw).hexdigest()
        if mode == "full":
            ctx.row.request_body = raw.decode()
            if isinstance(req, ChatCompletionRequest | CompletionRequest):
                ctx.row.prompt_text = prompt_text(req)

    async def _route(self, ctx: _Ctx, req: Any, endpoint: str, request: Request) -> Route:
        features = request_features(req, endpoint, ctx.key, request.headers.get("x-hybridgate-tags"))
        try:
            route = await self.s.router.route(req.model, features, ctx.key)
        except Refused as refused:
            raise from_refusal(refused) from None
        ctx.route = route  # from here on, what it holds is settled by `_finish` whatever happens
        ctx.ex = Execution(ctx.rid, prompt_estimate=features.prompt_tokens)
        if route is None or not route.targets:
            if route is not None and req.model in self.s.router.catalog.by_model:
                what = _WHAT.get(ctx.row.endpoint, ctx.row.endpoint)
                raise APIError(400, f"The model `{req.model}` does not support {what}.",
                               param="model", code="model_not_supported")
            raise model_not_found(req.model)
        r = ctx.row
        r.policy, r.policy_version, r.route_reason, r.propensity = (
            route.policy, route.policy_version, route.reason, route.propensity)
        chosen = route.chosen
        if chosen is not None:  # the action `propensity` belongs to, even when a fallback answers
            r.chosen_model, r.chosen_deployment = chosen.model, chosen.name
        return route

    def _finish(self, ctx: _Ctx, status: int, error: APIError | None = None, cancelled: bool = False) -> None:
        """Fill the log row from what happened, record metrics, hand the row to the sink, and settle
        what the route holds (budget, lease): once, whichever path gets here first."""
        if ctx.finished:
            return
        ctx.finished = True
        try:
            self._record(ctx, status, error, cancelled)
        finally:
            settle = self.s.router.finish(ctx.route, ctx.row)
            if settle is not None:
                task = asyncio.get_running_loop().create_task(settle)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _record(self, ctx: _Ctx, status: int, error: APIError | None, cancelled: bool) -> None:
        r = ctx.row
        if ctx.route is not None:
            r.route_reason = ctx.route.reason  # may have grown after routing (escalation)
        r.latency_ms = (time.perf_counter() - ctx.t0) * 1000
        r.http_status = status
        ex = ctx.ex
        attempts = ex.attempts if ex is not None else []
        r.attempts_count = len(attempts)
        provider = "none"
        if ex is not None:
            if ex.served is not None:
                d = ex.served.deployment
                r.served_model, r.deployment, r.provider = d.model, d.name, d.provider
                provider = d.provider
            r.prompt_tokens = ex.usage.prompt_tokens if ex.served else None
            r.completion_tokens = ex.usage.completion_tokens if ex.served else None
            r.cost_usd = sum(a.cost_usd or 0.0 for a in attempts)
            r.ttft_ms = ex.ttft_s * 1000 if ex.ttft_s is not None else None
        if cancelled:
            r.status, r.error_type = "cancelled", "client_cancelled"
        elif error is not None:
            r.status, r.error_type, r.error_message = "error", error.type, error.message[:1000]
        m = self.s.metrics
        model = r.served_model or r.requested_model or ""
        m.requests.labels(r.endpoint, model, provider, r.status).inc()
        m.latency.labels(r.endpoint, model).observe(r.latency_ms / 1000)
        if r.ttft_ms is not None:
            m.ttft.labels(model).observe(r.ttft_ms / 1000)
        if r.prompt_tokens:
            m.tokens.labels(model, provider, "prompt").inc(r.prompt_tokens)
        if r.completion_tokens:
            m.tokens.labels(model, provider, "completion").inc(r.completion_tokens)
        if r.cost_usd:
            m.cost.labels(model, provider).inc(r.cost_usd)
        if error is not None or cancelled:
            m.errors.labels(r.error_type or "error", provider).inc()
        for a in attempts:
            m.attempts.labels(a.deployment, a.provider, a.status).inc()
        self.s.sink.record(r, attempts)

    def _call_factory(self, ctx: _Ctx, kind: str, stream: bool, extra: dict[str, Any] | None = None,
                      native: bool = False):  # noqa: ANN202 - closure type
        """Per deployment, the upstream call. `native`: a deployment that speaks the client's wire format
        (Responses) gets the client's request instead of the chat one (not under a cascade, which reads
        the chat answer)."""
        body = ctx.body or {}
        wire = ctx.wire if native else None

        def make(d: DeploymentConfig, timeout_s: float) -> UpstreamCall:
            if wire is not None and (passed := wire.native(d, stream)) is not None:
                return UpstreamCall(kind=passed[0], body=passed[1], timeout_s=timeout_s,
                                    stream_idle_timeout_s=d.stream_idle_timeout_s)
            b = dict(body)
            if extra and "logprobs" in d.capabilities:
                b.update(extra)
            b["model"] = d.upstream_model
            if stream:
                b["stream"] = True
            else:  # answered whole: ask the upstream for one body
                b.pop("stream", None)
                b.pop("stream_options", None)
            return UpstreamCall(kind=kind, body=b, timeout_s=timeout_s,  # type: ignore[arg-type]
                                stream_idle_timeout_s=d.stream_idle_timeout_s)

        return make

    def _calls(self, ctx: _Ctx, kind: str) -> MakeCall:
        """Call factories for the cascade: (stream, extra body fields) -> factory."""
        return lambda stream, extra: self._call_factory(ctx, kind, stream, dict(extra) if extra else None)

    # ---- endpoints ----------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, "chat", ChatCompletionRequest,
                                 lambda ctx, req, route: self._generate(ctx, req, route, "chatcmpl-", "chat.completion"))

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completion", CompletionRequest,
                                 lambda ctx, req, route: self._generate(ctx, req, route, "cmpl-", "text_completion"))

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, "embedding", EmbeddingRequest, self._embed)

    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API: the chat pipeline under the Responses wire format."""
        return await self._serve(request, "chat", ChatCompletionRequest,
                                 lambda ctx, req, route: self._generate(ctx, req, route, "chatcmpl-", "chat.completion"),
                                 wire=lambda rid: ResponsesWire(self.responses_store, rid))

    async def messages(self, request: Request) -> Response:
        """Anthropic's Messages API: the chat pipeline under the Messages wire format."""
        return await self._serve(request, "chat", ChatCompletionRequest,
                                 lambda ctx, req, route: self._generate(ctx, req, route, "chatcmpl-", "chat.completion"),
                                 wire=MessagesWire)

    async def count_tokens(self, request: Request) -> Response:
        try:
            key = await authenticate(request, self.s.keys, self.s.settings.keys_required)
        except APIError as err:
            return anthropic_error(err)

        def known(model: str) -> bool:
            """Whether this caller may use `model` (the `default` alias resolved), as GET /v1/models lists."""
            if model == DEFAULT_MODEL_ALIAS and self.s.settings.default_model:
                model = self.s.settings.default_model
            return any(card["id"] == model for card in self._cards_for(key))

        return await count_tokens(request, self.s.settings.max_body_bytes, known)

    async def _serve(self, request: Request, endpoint: str, schema: type,
                     answer: Callable[[_Ctx, Any, Route], Awaitable[Response]],
                     wire: Callable[[str], WireAdapter] | None = None) -> Response:
        """The one place where a request's failures become errors in the client's shape, each with
        its log row. `endpoint` is the internal request kind; a wire format names its own log endpoint."""
        ctx = _Ctx(endpoint)
        hang_up: _HangUp | None = None
        if wire is not None:
            ctx.wire = wire(ctx.rid)
            ctx.row.endpoint = ctx.wire.endpoint
        try:
            req = await self._begin(request, ctx, schema)
            route = await self._route(ctx, req, endpoint, request)
            hang_up = _HangUp(request)
            try:
                resp = await answer(ctx, req, route)
            finally:
                hang_up.close()
        except APIError as err:
            self._finish(ctx, err.status, err)
            resp = self._error(ctx, err)
        except UpstreamError as uerr:
            err = from_upstream(uerr)
            self._finish(ctx, err.status, err)
            resp = self._error(ctx, err)
        except asyncio.CancelledError:
            self._finish(ctx, 499, cancelled=True)
            task = asyncio.current_task()
            if hang_up is not None and hang_up.gone and task is not None and task.uncancel() == 0:
                return Response(status_code=499)  # the client left while its answer was being made
            raise
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            self._finish(ctx, 499, cancelled=True)
            return Response(status_code=499)
        except Exception:
            # A bug or an input nothing above foresaw (e.g. a body too deeply nested to forward): the
            # request still gets its OpenAI-shaped 500, its log row, and frees what it holds.
            log.exception("request %s failed", ctx.rid)
            err = internal_error()
            self._finish(ctx, 500, err)
            resp = self._error(ctx, err)
        if not isinstance(resp, StreamingResponse):
            await self.s.sink.durable()  # log.durability: always: the row is on disk before the answer
        return resp

    @staticmethod
    def _error(ctx: _Ctx, err: APIError) -> Response:
        return ctx.wire.error(err, ctx.headers()) if ctx.wire is not None else err.response(ctx.headers())

    async def _generate(self, ctx: _Ctx, req: Any, route: Route, id_prefix: str, obj: str) -> Response:
        assert ctx.ex is not None
        kind = "chat" if ctx.wire is not None else ctx.row.endpoint
        esc = route.decision.escalation if route.decision is not None else None
        if ctx.wire is not None:
            self._native_only(ctx.wire, route, esc is not None)
        include_usage = False
        if req.stream:
            ctx.row.streamed = True
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            if esc is None:
                return await self._stream(ctx, kind, route, id_prefix, include_usage)
            streamed = await self.s.cascades.stream(ctx.ex, route, esc, self._calls(ctx, kind), _asked(req, kind),
                                                    ctx.t0)
            return self._sse(ctx, id_prefix, include_usage, streamed.head, streamed.rest, streamed.source,
                             streamed.strip_logprobs)
        asked = _asked(req, kind)
        extra = self.s.cascades.logprobs_extra(esc, asked) if esc is not None else None
        resp = await self.s.executor.complete(ctx.ex, route.plan,
                                              self._call_factory(ctx, kind, False, extra, native=esc is None))
        if esc is not None:
            resp = await self.s.cascades.complete(ctx.ex, route, esc, resp, self._calls(ctx, kind), asked)
            if not asked.logprobs:
                for c in resp.body.get("choices") or ():
                    c["logprobs"] = None  # asked for the cascade's sake, not by the client
        body = resp.body
        body["id"] = id_prefix + ctx.rid
        body["model"] = _served_name(ctx)
        body.setdefault("object", obj)
        out = await ctx.wire.whole(body, body["model"]) if ctx.wire is not None else orjson.dumps(body)
        if self.s.settings.log.bodies == "full":  # the internal (chat) form whatever the wire format: one shape to learn from
            ctx.row.response_body = (orjson.dumps(body) if ctx.wire is not None else out).decode()
        self._finish(ctx, 200)
        return Response(out, media_type=_JSON, headers=ctx.headers())

    @staticmethod
    def _native_only(wire: WireAdapter, route: Route, cascade: bool) -> None:
        """A request only an upstream speaking the client's wire format can answer (`native_only`) goes
        only to the route's deployments that speak it; with none (or under a cascade, which translates
        to read the chat answer) it is the wire's 400, before any upstream call."""
        err = wire.native_only()
        if err is None:
            return
        speaking = [] if cascade else [t for t in route.plan.targets if wire.native(t.deployment, False) is not None]
        if not speaking:
            raise err
        route.plan.targets = speaking

    async def _embed(self, ctx: _Ctx, req: Any, route: Route) -> Response:
        assert ctx.ex is not None
        resp = await self.s.executor.complete(ctx.ex, route.plan, self._call_factory(ctx, "embedding", False))
        body = resp.body
        body["model"] = _served_name(ctx)
        self._finish(ctx, 200)
        return Response(orjson.dumps(body), media_type=_JSON, headers=ctx.headers())

    async def _stream(self, ctx: _Ctx, kind: str, route: Route, id_prefix: str, include_usage: bool) -> Response:
        """Start the stream before answering, so a failure before the first chunk is still a plain
        HTTP error (or an invisible fallback), and headers can name the model that answers."""
        assert ctx.ex is not None
        chunks = self.s.executor.stream(ctx.ex, route.plan, self._call_factory(ctx, kind, True, native=True))
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            raise UpstreamError("stream_cut", "empty stream") from None
        return self._sse(ctx, id_prefix, include_usage, [first], chunks, chunks)

    def _sse(self, ctx: _Ctx, id_prefix: str, include_usage: bool, head: list[dict[str, Any]],
             rest: AsyncIterator[dict[str, Any]] | None, source: Any, strip_logprobs: bool = False) -> Response:
        """The stream response: ``head`` (chunks already read), then ``rest`` as it arrives, batched
        by readiness; ``source`` (the executor's stream) is closed at the end whatever happens."""
        cid = id_prefix + ctx.rid
        served = _served_name(ctx)
        body_log: list[bytes] | None = [] if self.s.settings.log.bodies == "full" else None

        def encode(chunk: dict[str, Any]) -> bytes | None:
            if not include_usage:
                if not chunk.get("choices") and chunk.get("usage") is not None:
                    return None  # the usage chunk we asked for upstream, not wanted by this client
                chunk.pop("usage", None)
            if strip_logprobs:
                for c in chunk.get("choices") or ():
                    c["logprobs"] = None  # asked for the cascade's sake, not by the client
            chunk["id"] = cid
            chunk["model"] = served
            data = sse.event(chunk)
            if body_log is not None:
                body_log.append(data)
            return data

        async def wire_body(w: WireAdapter) -> AsyncIterator[bytes]:
            """The same stream in another wire format: the adapter encodes chunks as its events."""
            status, error, cancelled = 200, None, False
            last = b""
            try:
                opening = w.start(served, ctx.ex.prompt_estimate if ctx.ex is not None else 0) + b"".join(
                    map(w.feed, head))
                if body_log is not None:
                    body_log.append(opening)
                yield opening
                if rest is not None:
                    # aclosing: a chunk `feed` cannot translate stops the pump (and its pending read of
                    # `source`) here, so `source.aclose()` below does not meet a generator still running
                    async with contextlib.aclosing(ready_batches(rest)) as batches:
                        async for batch in batches:
                            data = b"".join(map(w.feed, batch))
                            if data:
                                if body_log is not None:
                                    body_log.append(data)
                                yield data
                last = await w.finish()
            except UpstreamError as uerr:
                error = from_upstream(uerr)
                last = w.fail(error)
            except (asyncio.CancelledError, GeneratorExit):
                cancelled = True
                status = 499
                raise
            except Exception:
                # A bug, or an upstream event nothing above foresaw: the stream still ends in the wire
                # format's failure events and the row says error, instead of a connection cut logged ok.
                log.exception("stream of request %s failed", ctx.rid)
                error = internal_error()
                last = w.fail(error)
            finally:
                await source.aclose()
                if body_log is not None:
                    # the closing events as well (none when the client left): the log holds what was sent
                    ctx.row.response_body = b"".join([*body_log, last]).decode()
                self._finish(ctx, status, error, cancelled)
            # The stream's last event goes out once its row is logged (durably with `always`).
            await self.s.sink.durable()
            yield last

        async def body() -> AsyncIterator[bytes]:
            status, error, cancelled = 200, None, False
            try:
                data = b"".join(filter(None, map(encode, head)))
                if data:
                    yield data
                if rest is not None:
                    async with contextlib.aclosing(ready_batches(rest)) as batches:  # as in `wire_body`
                        async for batch in batches:
                            data = b"".join(filter(None, map(encode, batch)))
                            if data:
                                yield data
            except UpstreamError as uerr:
                error = from_upstream(uerr)
            except (asyncio.CancelledError, GeneratorExit):
                cancelled = True
                status = 499
                raise
            except Exception:
                # as in `wire_body`: the stream ends with an error event and the row says error
                log.exception("stream of request %s failed", ctx.rid)
                error = internal_error()
            finally:
                await source.aclose()
                last = sse.DONE if error is None else sse.error_event(error.message, error.type, error.code)
                if body_log is not None:
                    # with the closing event, unless the client left before it could be sent
                    ctx.row.response_body = b"".join(body_log if cancelled else [*body_log, last]).decode()
                self._finish(ctx, status, error, cancelled)
            # The stream's last event goes out once its row is logged (durably with `always`).
            await self.s.sink.durable()
            yield last

        stream = wire_body(ctx.wire) if ctx.wire is not None else body()
        return _SettledStream(lambda: self._finish(ctx, 499, cancelled=True), stream,
                              media_type="text/event-stream", headers=ctx.headers() | {"cache-control": "no-cache"})

    async def _model_cards(self, request: Request) -> list[dict[str, Any]]:
        """The models this caller may use: a key restricted to some models sees only those."""
        return self._cards_for(await authenticate(request, self.s.keys, self.s.settings.keys_required))

    def _cards_for(self, key: ApiKey | None) -> list[dict[str, Any]]:
        cards = self.s.router.model_cards()
        if key is not None and key.allowed_models:
            cards = [c for c in cards if c["id"] in key.allowed_models]
        return cards

    async def models(self, request: Request) -> Response:
        return Response(orjson.dumps({"object": "list", "data": await self._model_cards(request)}), media_type=_JSON)

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        for card in await self._model_cards(request):
            if card["id"] == name:
                return Response(orjson.dumps(card), media_type=_JSON)
        raise model_not_found(name)


class _HangUp:
    """Cancels the task serving a request once its client hangs up while the answer is being made: an
    answer nobody waits for is not generated (the local engine frees the sequence, a provider call is
    dropped). A watcher task reads the client's next ASGI message, which after the body is the disconnect;
    it starts only once the answer has taken WATCH_AFTER_S (a watcher on every request cost ~0.1 ms of
    gateway CPU a request in `bench/gateway_overhead.py`, and a quick answer has little to save). `close`
    ends the watch as soon as the answer is made, synchronously, so the cancel can only land inside the
    answer; a stream's answer is made at once, and its `StreamingResponse` watches for the hang-up itself."""

    WATCH_AFTER_S = 0.5

    def __init__(self, request: Request) -> None:
        self.gone = False
        self._task = asyncio.current_task()
        self._watch: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(self.WATCH_AFTER_S, self._start, request)

    def _start(self, request: Request) -> None:
        self._watch = asyncio.ensure_future(self._run(request))

    async def _run(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()
