"""OpenAI-compatible HTTP server for the local hybrid model (Starlette, run by uvicorn).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE when ``stream: true``), ``GET
/v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text). Request shapes and responses come from
`local_model.engine.openai_api`, shared with the gateway's in-process backend.

The engine runs on its own thread; handlers only submit and await deltas, so the event loop stays free
while the model computes. A client that disconnects (streamed or not) cancels its request, which frees
its KV blocks and SSM slot at the engine's next step. A full queue answers 503 with ``Retry-After``.

    app = create_app(Engine.from_checkpoint(path, EngineConfig(...)))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine, EngineConfig
from .engine import openai_api as oa
from .engine.errors import EngineClosed, EngineOverloaded, InvalidRequest, PromptTooLong


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return _json(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status, headers
    )


def engine_error_response(exc: Exception, kind: oa.Kind = "chat") -> Response:
    """Map engine errors to OpenAI-shaped HTTP errors; a prompt too long for the context names the field
    that holds the prompt in a ``kind`` request (``messages``, or ``prompt`` for legacy completions)."""
    if isinstance(exc, EngineOverloaded):
        # code "overloaded": the gateway reads it as busy, not broken (no breaker failure; its backends)
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return error_response(
            503, str(exc), type_="server_error", code="overloaded", headers={"Retry-After": retry}
        )
    if isinstance(exc, EngineClosed):
        return error_response(
            503, str(exc), type_="server_error", code="unavailable", headers={"Retry-After": "5"}
        )
    if isinstance(exc, PromptTooLong):
        return error_response(400, str(exc), param=oa.prompt_field(kind), code="context_length_exceeded")
    if isinstance(exc, InvalidRequest):
        return error_response(400, str(exc), param=getattr(exc, "param", None))
    return error_response(500, f"internal error: {exc}", type_="server_error")


# ============================================================================ metrics


class EngineCollector:
    """Reads the engine's counters at scrape time (nothing is updated on the hot path)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        e = self.engine
        sig = e.load_signals()
        st, pc = e.stats, e.scheduler.prefix

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"local_model_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"local_model_{name}", doc, value=value)

        yield gauge("queue_depth", "Requests waiting for admission", sig.queue_depth)
        yield gauge("running_sequences", "Sequences holding an SSM slot", sig.running)
        yield gauge("kv_blocks_free", "KV blocks free or evictable", sig.free_kv_blocks)
        yield gauge("kv_blocks_total", "KV blocks in the pool", sig.total_kv_blocks)
        yield gauge("ssm_slots_free", "Free Mamba-state slots", sig.free_ssm_slots)
        yield gauge("ssm_slots_total", "Mamba-state slots in the pool", sig.total_ssm_slots)
        yield gauge(
            "prefix_cache_cached_blocks", "KV blocks published in the prefix cache", e.allocator.num_cached
        )
        yield gauge("prefix_cache_snapshots", "Mamba snapshots held by the prefix cache", len(e.snapshots))
        yield counter("prefix_cache_queries", "Admissions that looked up the prefix cache", pc.queries)
        yield counter("prefix_cache_hits", "Admissions that reused a cached prefix", pc.hits)
        yield counter(
            "prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache", pc.query_tokens
        )
        yield counter(
            "prefix_cache_hit_tokens", "Prompt tokens whose prefill the prefix cache skipped", pc.hit_tokens
        )
        yield gauge(
            "prefix_cache_hit_rate", "hit_tokens / query_tokens", pc.hit_tokens / max(1, pc.query_tokens)
        )
        yield counter("prompt_tokens", "Prompt tokens of submitted requests", st.prompt_tokens)
        yield counter("prefill_tokens", "Tokens run through prefill (after prefix hits)", st.prefill_tokens)
        yield counter("generation_tokens", "Generated tokens", st.generated_tokens)
        yield gauge("tokens_per_second", "Generated tokens per second over the last 10 s", sig.tokens_per_s)
        yield counter("requests_finished", "Requests completed", st.requests_finished)
        yield counter(
            "requests_cancelled", "Requests cancelled (client gone or explicit)", st.requests_cancelled
        )
        yield counter(
            "preemptions", "Sequences preempted for memory (recomputed later)", e.scheduler.num_preemptions
        )
        yield counter("engine_steps", "Engine steps run", st.steps)
        yield counter("engine_step_seconds", "Time spent in engine steps", st.step_seconds)


# ============================================================================ app


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for c in chunks:
            yield b"data: " + orjson.dumps(c) + b"\n\n"
    except Exception as exc:  # after the first byte an error can only be reported in-band
        err = {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
        yield b"data: " + orjson.dumps(err) + b"\n\n"
    yield b"data: [DONE]\n\n"


def create_app(engine: Engine, *, model_name: str | None = None, owns_engine: bool = True) -> Starlette:
    """The Starlette app serving ``engine`` as ``model_name`` (default: the engine's name).

    The engine thread is started at startup; with ``owns_engine`` it is shut down at shutdown.
    ``app.state.engine`` is the engine and `load_signals(app)` its load for a router."""
    name = model_name or engine.model_name
    created = int(time.time())
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine))  # type: ignore[arg-type]

    async def generate(request: Request, kind: oa.Kind) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error_response(400, "the request body is not valid JSON")
        if isinstance(body, dict) and body.get("model") not in (None, name):
            return error_response(
                404, f"The model `{body.get('model')}` does not exist.", param="model", code="model_not_found"
            )
        if engine.tokenizer is None:
            return error_response(500, "the checkpoint has no tokenizer", type_="server_error")
        try:
            req = oa.parse(kind, body, engine.tokenizer, engine.plan.max_model_len)
            rid = oa.new_id(kind)
            streams = oa.submit_all(engine, req, rid)
        except Exception as exc:
            return engine_error_response(exc, kind)
        if req.stream:
            return StreamingResponse(
                _sse(oa.stream(engine, req, name, rid, streams)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        # Non-streamed: race the answer against the client going away (which cancels the request).
        work = asyncio.ensure_future(_finish(engine, req, name, rid, streams))
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                for s in streams:
                    s.cancel()
        if work.cancelled():
            return Response(status_code=499)
        try:
            return _json(work.result())
        except Exception as exc:
            return engine_error_response(exc, kind)

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    async def models(request: Request) -> Response:
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": created,
                        "owned_by": "hybridgate",
                        "max_model_len": engine.plan.max_model_len,
                    },
                ],
            }
        )

    async def health(request: Request) -> Response:
        sig = engine.load_signals()
        ok = engine.running
        return _json(
            {"status": "ok" if ok else "unavailable", "model": name, **sig.__dict__}, 200 if ok else 503
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            if owns_engine:
                await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.model_name = name
    app.state.registry = registry
    return app


async def _finish(
    engine: Engine, req: oa.ParsedRequest, name: str, rid: str, streams: list
) -> dict[str, Any]:
    return await oa.complete(engine, req, name, rid, streams=streams)


def load_signals(app: Starlette) -> dict[str, Any]:
    """Queue depth, running sequences, free SSM slots / KV blocks, tokens/s of the app's engine."""
    return dict(app.state.engine.load_signals().__dict__)


def build_app(
    checkpoint: str | Path,
    config: EngineConfig | None = None,
    *,
    device: str = "cpu",
    dtype: Any = None,
    model_name: str | None = None,
) -> Starlette:
    """Load a checkpoint and return its app (the engine starts with the app)."""
    engine = Engine.from_checkpoint(checkpoint, config, device=device, dtype=dtype, model_name=model_name)
    return create_app(engine)
