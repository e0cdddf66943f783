"""In-process backend for the self-hosted hybrid model: the gateway calls the engine directly, no HTTP hop.

A deployment with ``provider: local`` names its checkpoint in ``upstream_model`` (a directory, or
"shipped"); `build_local_backend` loads it and starts the engine thread. Calls are parsed and answered
by `local_model.engine.openai_api`, the same code the standalone server uses, so the gateway sees the
exact shapes the local server would send. Streams always end with a usage chunk.

Engine errors map to `UpstreamError` kinds the executor understands: a full queue is "overloaded"
(status 503, with ``retry_after_s``: retry later or fall back; busy, so it never counts against the
deployment's breaker), a prompt that cannot fit is
"context_window", a bad parameter "bad_request", a stopped engine "server_error"; an error after the
first chunk is "stream_cut". Timeouts follow `UpstreamCall`: the whole call (non-streamed) or the
first chunk, then ``stream_idle_timeout_s`` between chunks; on timeout the request is cancelled, which
frees its memory in the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backends.base import (
    Backend,
    UpstreamCall,
    UpstreamError,
    UpstreamResponse,
    Usage,
    idle_cut,
    timeout_error,
)
from common.types import DeploymentConfig
from local_model.engine import Engine, EngineConfig
from local_model.engine import openai_api as oa
from local_model.engine.errors import EngineClosed, EngineOverloaded, InvalidRequest, PromptTooLong

__all__ = ["LocalBackend", "build_local_backend", "serves_in_subprocess"]


def _upstream_error(exc: BaseException, kind: str) -> UpstreamError:
    """The engine's exception as an `UpstreamError`; a client's bad request keeps the parameter it names
    (an OpenAI-shaped error body, which `gateway.errors` passes on) for a ``kind`` ("chat"/"completion") call."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, EngineOverloaded):
        return UpstreamError("overloaded", str(exc), status=503, retry_after_s=exc.retry_after_s)
    if isinstance(exc, PromptTooLong):
        return UpstreamError("context_window", str(exc), status=400, body={"error": {"param": oa.prompt_field(kind)}})
    if isinstance(exc, InvalidRequest):
        param = getattr(exc, "param", None)
        return UpstreamError("bad_request", str(exc), status=400, body={"error": {"param": param}})
    if isinstance(exc, EngineClosed):
        return UpstreamError("server_error", str(exc), status=503)
    return UpstreamError("server_error", f"local engine error: {exc}", status=500)


def _usage(body: dict[str, Any] | None) -> Usage:
    u = (body or {}).get("usage") or {}
    return Usage(prompt_tokens=int(u.get("prompt_tokens", 0)), completion_tokens=int(u.get("completion_tokens", 0)))


class LocalBackend:
    """`Backend` over an in-process `Engine` (see module docstring)."""

    def __init__(self, engine: Engine, *, name: str = "local", owns_engine: bool = True) -> None:
        self.name = name
        self.engine = engine.start()
        self.owns_engine = owns_engine
        # chat templating and tokenisation run here, off the event loop (a multi-MB prompt takes seconds),
        # one request at a time (the tokenizer is shared with the engine thread, not made for many callers)
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-parse")

    async def _parse(self, call: UpstreamCall, stream: bool) -> oa.ParsedRequest:
        if call.kind not in ("chat", "completion"):
            raise UpstreamError("bad_request", f"the local model does not serve {call.kind!r} calls", status=400)
        loop = asyncio.get_running_loop()
        try:
            req = await loop.run_in_executor(
                self._parser, oa.parse, call.kind, call.body, self.engine.tokenizer, self.engine.plan.max_model_len
            )
        except Exception as exc:
            raise _upstream_error(exc, call.kind) from exc
        req.stream = stream
        req.include_usage = stream  # the gateway meters tokens from the final chunk
        return req

    def _model(self, call: UpstreamCall) -> str:
        return str(call.body.get("model") or self.engine.model_name)

    async def complete(self, call: UpstreamCall) -> UpstreamResponse:
        req = await self._parse(call, stream=False)
        rid = oa.new_id(req.kind)
        try:
            streams = oa.submit_all(self.engine, req, rid)
        except Exception as exc:
            raise _upstream_error(exc, call.kind) from exc
        try:
            body = await asyncio.wait_for(oa.complete(self.engine, req, self._model(call), rid, streams), call.timeout_s)
        except TimeoutError as exc:
            raise timeout_error("total", call.timeout_s, f"local model did not answer within {call.timeout_s}s") from exc
        except UpstreamError:
            raise
        except Exception as exc:
            raise _upstream_error(exc, call.kind) from exc
        finally:
            for s in streams:
                s.cancel()
        return UpstreamResponse(body=body, usage=_usage(body))

    async def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        req = await self._parse(call, stream=True)
        rid = oa.new_id(req.kind)
        try:
            streams = oa.submit_all(self.engine, req, rid)
        except Exception as exc:
            raise _upstream_error(exc, call.kind) from exc
        chunks = oa.stream(self.engine, req, self._model(call), rid, streams)
        first = True
        n = 0
        try:
            while True:
                timeout = call.timeout_s if first else call.stream_idle_timeout_s
                try:
                    chunk = await asyncio.wait_for(anext(chunks), timeout)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    message = f"local model stream stalled for {timeout}s"
                    if first:
                        raise timeout_error("first_byte", timeout, message) from exc
                    raise idle_cut(timeout, n, message) from exc
                except UpstreamError:
                    raise
                except Exception as exc:
                    err = _upstream_error(exc, call.kind)
                    if not first:
                        err = UpstreamError("stream_cut", err.message, status=err.status)
                    raise err from exc
                # The role chunk comes before any compute: count the first *content* as "first byte".
                first = first and not _has_output(chunk)
                n += 1
                yield chunk
        finally:
            for s in streams:
                s.cancel()
            await chunks.aclose()

    async def aclose(self) -> None:
        self._parser.shutdown(wait=False, cancel_futures=True)
        if self.owns_engine:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.shutdown)

    def load_signals(self) -> dict[str, Any]:
        """Queue depth, running sequences, free SSM slots / KV blocks, tokens/s (for the router)."""
        sig = dataclasses.asdict(self.engine.load_signals())
        sig["free_slots"] = sig["free_ssm_slots"]  # the name router.signals.LocalLoad uses
        return sig


def _has_output(chunk: dict[str, Any]) -> bool:
    for c in chunk.get("choices") or []:
        if c.get("finish_reason") or c.get("text") or (c.get("delta") or {}).get("content"):
            return True
    return bool(chunk.get("usage"))


def serves_in_subprocess(cfg: DeploymentConfig) -> bool:
    """``local_process``: "auto" runs the engine in its own server process on CUDA (the gateway's event loop
    and the model's step loop then never share a GIL), in the gateway's process on the CPU."""
    if cfg.local_process == "auto":
        return cfg.local_device.startswith("cuda")
    return cfg.local_process == "subprocess"


def build_local_backend(cfg: DeploymentConfig, engine_config: EngineConfig | None = None) -> Backend:
    """The registry factory for ``provider: local``: load ``cfg.upstream_model`` (a checkpoint directory or
    "shipped") and serve it in-process, or in a child server process (`serves_in_subprocess`). ``max_concurrency`` (if set) bounds the running sequences and
    ``context_window`` the model length."""
    from local_model.device import DeviceUnavailableError, device_problem
    from local_model.engine.checkpoint import resolve_checkpoint

    if cfg.api_base is not None:
        raise ValueError(f"deployment {cfg.name!r}: provider 'local' runs in-process; api_base must be unset")
    path = resolve_checkpoint(cfg.upstream_model)
    # before the weights load (or a child server starts): torch's own refusal comes late, as a traceback
    problem = device_problem(cfg.local_device)
    if problem is not None:
        raise DeviceUnavailableError(f"deployment {cfg.name!r}: {cfg.local_device!r} cannot be used: {problem}")
    if serves_in_subprocess(cfg):
        from backends.local_subprocess import LocalServerProcess, SubprocessLocalBackend

        return SubprocessLocalBackend(cfg.name, LocalServerProcess.for_deployment(cfg, path).start())
    ec = engine_config or EngineConfig()
    if engine_config is None:
        if cfg.max_concurrency:
            ec.max_num_seqs = cfg.max_concurrency
        ec.max_model_len = cfg.context_window
    import torch

    engine = Engine.from_checkpoint(
        path,
        ec,
        device=cfg.local_device,
        dtype=getattr(torch, cfg.local_dtype),
        model_name=cfg.upstream_model,
    )
    return LocalBackend(engine, name=cfg.name)
