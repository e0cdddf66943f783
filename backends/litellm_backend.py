"""Backend for any provider litellm supports (Anthropic, Bedrock, Azure, Gemini, …) through its SDK.

litellm is imported lazily, when the first litellm deployment is *built* (`import_litellm`): the
import takes seconds and 100+ MB, and a gateway whose deployments are all OpenAI-compatible must
not pay that. ``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set before the import so litellm never
fetches its cost map over the network. litellm never retries (``num_retries=0`` and
``max_retries=0`` for the provider SDK under it): retries and fallbacks are the gateway's.

Answers and chunks are litellm pydantic objects; they are converted to plain OpenAI-shaped dicts
and stripped of litellm's extras (``provider_specific_fields`` but for a choice's ``stop_reason``,
``citations``, None-valued delta keys), and litellm's usage chunk (a choice with an empty delta plus
``usage``) is rewritten into OpenAI's shape (``choices: []``), so callers see what the direct backend
yields.

Timeouts are enforced here as well as passed to litellm, so they are classified like the direct
backend's: ``call.timeout_s`` for the whole call (non-stream) or the first chunk (stream), and
``call.stream_idle_timeout_s`` between chunks. Any failure after the first chunk is "stream_cut".
A stream that ends without any choice finishing is also "stream_cut": litellm drops a missing
``[DONE]`` silently.

`DeploymentConfig` mapping: ``upstream_model`` is the litellm model string (``openai/gpt-4o``,
``anthropic/claude-3-5-haiku-20241022``); ``api_base`` as litellm wants it — for
``anthropic/…`` that is the server root (litellm appends ``/v1/messages``), for ``openai/…`` the
OpenAI base including ``/v1``; the key comes from the env var named by ``api_key_env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from backends.base import (
    RESPONSES_END,
    RESPONSES_FAILED,
    UpstreamCall,
    UpstreamError,
    UpstreamResponse,
    idle_cut,
    redacted,
    redacted_stream,
    secret_values,
    stream_cut,
    timeout_error,
    transport_reason,
)
from backends.openai_compatible import (
    classify_client_error,
    parse_retry_after,
    responses_event_error,
    usage_of,
)
from backends.sse import with_stream_usage
from common.types import DeploymentConfig

__all__ = ["LiteLLMBackend", "import_litellm", "map_litellm_error", "to_openai_dict"]

# A choice's `stop_reason` from an OpenAI-compatible upstream (vLLM, SGLang: the stop string that ended
# it) reaches litellm's non-streamed answers as `provider_specific_fields.stop_reason`; it is put back on
# the choice as the direct backend passes it. litellm's streamed chunks and its Anthropic translation
# (whose `stop_sequence` it maps to finish_reason "stop") drop it.
_STOP_REASON = "stop_reason"
# keys litellm adds to OpenAI objects that no OpenAI client expects
_EXTRA_KEYS = frozenset(
    {"provider_specific_fields", "citations", "moderation", "_hidden_params", "_response_ms"}
)
_GRACE_S = 0.5  # litellm's own timeout is set this much later than ours, so ours classifies first


def import_litellm() -> ModuleType:
    """Import litellm offline and quiet. Seconds on first call; cached by Python's import system after."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _clean(obj: Any) -> Any:
    """Drop litellm-only keys and None-valued keys from a dict (one level)."""
    return {k: v for k, v in obj.items() if v is not None and k not in _EXTRA_KEYS}


def _clean_usage(u: Any) -> dict[str, Any] | None:
    if not isinstance(u, dict):
        return None
    out: dict[str, Any] = {
        "prompt_tokens": int(u.get("prompt_tokens") or 0),
        "completion_tokens": int(u.get("completion_tokens") or 0),
        "total_tokens": int(u.get("total_tokens") or 0)
        or int(u.get("prompt_tokens") or 0) + int(u.get("completion_tokens") or 0),
    }
    for key in ("prompt_tokens_details", "completion_tokens_details"):
        det = u.get(key)
        if isinstance(det, dict):
            det = {k: v for k, v in det.items() if v is not None}
            if det:
                out[key] = det
    return out


def to_openai_dict(obj: Any, *, chunk: bool = False) -> dict[str, Any]:
    """A litellm response / chunk / embedding object as a plain OpenAI-shaped dict."""
    d: dict[str, Any] = obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in _EXTRA_KEYS or (v is None and k not in ("usage", "system_fingerprint")):
            continue
        out[k] = v
    if "usage" in out:
        if out["usage"] is None and not chunk:
            del out["usage"]
        elif out["usage"] is not None:
            out["usage"] = _clean_usage(out["usage"])
    choices = out.get("choices")
    if isinstance(choices, list):
        cleaned = []
        for c in choices:
            if not isinstance(c, dict):
                continue
            extra = c.get("provider_specific_fields")
            c = {k: v for k, v in c.items() if k not in _EXTRA_KEYS}
            if isinstance(extra, dict) and isinstance(extra.get(_STOP_REASON), str):
                c[_STOP_REASON] = extra[_STOP_REASON]
            for key in ("message", "delta"):
                m = c.get(key)
                if isinstance(m, dict):
                    keep_content = key == "message"  # content: null is meaningful next to tool_calls
                    c[key] = {
                        k: v
                        for k, v in m.items()
                        if k not in _EXTRA_KEYS and (v is not None or (keep_content and k == "content"))
                    }
            c.setdefault("logprobs", None)
            c.setdefault("finish_reason", None)
            if c.get("reasoning_content") is None:
                c.pop("reasoning_content", None)
            cleaned.append(c)
        out["choices"] = cleaned
        if chunk and out.get("usage") is not None and all(_empty_choice(c) for c in cleaned):
            out["choices"] = []  # litellm's usage chunk → OpenAI's shape
    return out


def responses_dict(obj: Any) -> dict[str, Any]:
    """A litellm Responses API object or stream event as the plain dict OpenAI sends."""
    d: dict[str, Any] = obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)
    return {k: v for k, v in d.items() if k not in _EXTRA_KEYS}


def _empty_choice(c: Mapping[str, Any]) -> bool:
    if c.get("finish_reason") is not None:
        return False
    delta = c.get("delta")
    if delta is None:  # text_completion chunks
        return not c.get("text")
    return not any(delta.get(k) for k in ("content", "tool_calls", "function_call", "role", "refusal"))


def map_litellm_error(exc: BaseException, litellm: ModuleType | None = None) -> UpstreamError:
    """Map a litellm exception (or anything the provider SDK under it raised) to an `UpstreamError`."""
    le = (litellm or import_litellm()).exceptions
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    message = str(getattr(exc, "message", None) or exc)
    body = getattr(exc, "body", None)
    if isinstance(exc, le.MidStreamFallbackError) and exc.original_exception is not None:
        return map_litellm_error(exc.original_exception, litellm)
    if isinstance(exc, le.ContextWindowExceededError):
        return UpstreamError("context_window", message, status=status or 400, body=body)
    if isinstance(exc, le.ContentPolicyViolationError):
        return UpstreamError("content_policy", message, status=status or 400, body=body)
    if isinstance(exc, le.RateLimitError):
        return UpstreamError("rate_limit", message, status=429, retry_after_s=_retry_after(exc), body=body)
    if isinstance(exc, le.Timeout):
        return UpstreamError("timeout", message, body={"phase": "litellm"}, reason="timed out")
    if isinstance(exc, le.APIConnectionError):
        return UpstreamError("connection", message, status=status if status and status >= 400 else None,
                             reason=transport_reason(exc))
    if _missing_credentials(exc):  # litellm reports the SDK's refusal to start without a key as a 500
        return UpstreamError("auth", message, status=401, body=body)
    transport = _transport_cause(exc)
    if transport is not None:  # litellm reports refused/reset connections as InternalServerError (500)
        return UpstreamError(
            transport, message, body={"phase": "litellm"} if transport == "timeout" else None,
            reason="timed out" if transport == "timeout" else transport_reason(exc),
        )
    if isinstance(exc, (le.ServiceUnavailableError, le.InternalServerError, le.BadGatewayError)):
        return UpstreamError(
            "server_error", message, status=status or 500, retry_after_s=_retry_after(exc), body=body
        )
    if isinstance(exc, (le.AuthenticationError, le.PermissionDeniedError)):
        return UpstreamError("auth", message, status=status or 401, body=body)
    if isinstance(exc, le.NotFoundError):
        return UpstreamError("not_found", message, status=404, body=body)
    if isinstance(exc, (le.BadRequestError, le.UnprocessableEntityError)):
        return UpstreamError(
            classify_client_error(status or 400, message), message, status=status or 400, body=body
        )
    if status is not None:
        if status == 429:
            return UpstreamError(
                "rate_limit", message, status=status, retry_after_s=_retry_after(exc), body=body
            )
        if status >= 500:
            return UpstreamError("server_error", message, status=status, body=body)
        if status >= 400:
            return UpstreamError(classify_client_error(status, message), message, status=status, body=body)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return UpstreamError("timeout", message or "timeout", reason="timed out")
    if isinstance(exc, (ConnectionError, OSError)):
        return UpstreamError("connection", message, reason=transport_reason(exc))
    return UpstreamError("server_error", f"{type(exc).__name__}: {message}")


def _missing_credentials(exc: BaseException) -> bool:
    """Whether the provider SDK under litellm refused to make a client for want of a key (``api_key_env``
    names an unset or empty variable, or none is named and the provider's own variable is unset).

    That refusal is the SDK's bare ``OpenAIError`` (no HTTP status: raised before any request) somewhere in
    the cause chain, which litellm maps to InternalServerError unless its text is the one litellm knows:
    a configuration fault ("auth"), not an outage to retry or fall back from."""
    import openai

    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 12:
        if type(cur) is openai.OpenAIError:
            text = str(cur).lower()
            return "credentials" in text or "api_key" in text
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _transport_cause(exc: BaseException) -> str | None:
    """ "timeout" / "connection" when a transport failure is somewhere in the exception's cause chain."""
    import aiohttp
    import httpx

    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 12:
        if isinstance(cur, (TimeoutError, httpx.TimeoutException)):
            return "timeout"
        if isinstance(cur, (ConnectionError, httpx.TransportError, aiohttp.ClientConnectionError)):
            return "connection"
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        return parse_retry_after(headers)
    except Exception:  # exotic header containers; a missing hint is fine
        return None


class LiteLLMBackend:
    """`Backend` over litellm's async SDK for one deployment."""

    def __init__(
        self,
        cfg: DeploymentConfig,
        *,
        api_key: str | None = None,
        drop_params: bool = True,
        extra_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._litellm = import_litellm()
        self._model = cfg.upstream_model
        base: dict[str, Any] = {"num_retries": 0, "max_retries": 0, "drop_params": drop_params}
        if cfg.api_base:
            base["api_base"] = cfg.api_base
        if api_key:
            base["api_key"] = api_key
        base.update(extra_params or {})
        self._base = base
        # what an error must never carry: the key, and a password written into the URL
        self._secrets = secret_values((api_key, urlsplit(cfg.api_base).password if cfg.api_base else None))

    async def aclose(self) -> None:
        """Nothing per deployment: litellm owns (and shares) its HTTP clients."""

    def _kwargs(self, call: UpstreamCall, body: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        kw = {**self._base, **{k: v for k, v in body.items() if k != "model"}}
        kw["model"] = self._model
        kw["timeout"] = timeout_s
        if call.headers:
            kw["extra_headers"] = {**(body.get("extra_headers") or {}), **call.headers}
        if call.kind == "chat" and body.get("tools"):
            # litellm 1.106 routes any call with tools through its MCP bridge, which imports the
            # optional `mcp` package (not installed) and fails; the gateway does no MCP.
            kw["_skip_mcp_handler"] = True
        return kw

    def _fn(self, call: UpstreamCall) -> Any:
        ll = self._litellm
        if call.kind == "chat":
            return ll.acompletion
        if call.kind == "completion":
            return ll.atext_completion
        if call.kind == "embedding":
            return ll.aembedding
        if call.kind == "responses":
            return ll.aresponses
        raise UpstreamError("bad_request", f"{self.name}: unsupported call kind {call.kind!r}")

    async def complete(self, call: UpstreamCall) -> UpstreamResponse:
        return await redacted(self._complete(call), self._secrets)

    async def _complete(self, call: UpstreamCall) -> UpstreamResponse:
        fn = self._fn(call)
        body = {k: v for k, v in call.body.items() if k not in ("stream", "stream_options")}
        kw = self._kwargs(call, body, call.timeout_s + _GRACE_S)
        try:
            async with asyncio.timeout(call.timeout_s):
                resp = await fn(**kw)
        except TimeoutError:
            raise timeout_error("total", call.timeout_s) from None
        except UpstreamError:
            raise
        except Exception as exc:
            raise map_litellm_error(exc, self._litellm) from exc
        data = responses_dict(resp) if call.kind == "responses" else to_openai_dict(resp)
        return UpstreamResponse(data, usage_of(data))

    def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI chunk dicts; usage is always requested (see `backends.sse`)."""
        return redacted_stream(self._stream(call), self._secrets)

    async def _stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        if call.kind == "embedding":
            raise UpstreamError("bad_request", "embeddings cannot be streamed")
        fn = self._fn(call)
        idle_s = call.stream_idle_timeout_s
        responses = call.kind == "responses"
        body = {**call.body, "stream": True} if responses else with_stream_usage(call.body)
        kw = self._kwargs(call, body, max(call.timeout_s, idle_s) + _GRACE_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                wrapper = await fn(**kw)
        except TimeoutError:
            raise timeout_error("first_byte", call.timeout_s) from None
        except Exception as exc:
            raise map_litellm_error(exc, self._litellm) from exc
        it = wrapper.__aiter__()
        n = 0
        finished = False
        try:
            while True:
                try:
                    if n == 0:
                        async with asyncio.timeout_at(deadline):
                            obj = await it.__anext__()
                    else:
                        async with asyncio.timeout(idle_s):
                            obj = await it.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if n == 0:
                        raise timeout_error("first_byte", call.timeout_s) from None
                    raise idle_cut(idle_s, n) from None
                except Exception as exc:
                    err = map_litellm_error(exc, self._litellm)
                    if n == 0:
                        raise err from exc
                    raise stream_cut(err.kind, err.message, n, reason=err.reason) from exc
                if responses:  # Responses events pass as they are; the last one names how it ended
                    chunk = responses_dict(obj)
                    kind = chunk.get("type")
                    if kind in RESPONSES_FAILED:
                        err = responses_event_error(chunk)
                        if n == 0:
                            raise err
                        raise stream_cut(err.kind, err.message, n)
                    finished = finished or kind in RESPONSES_END
                else:
                    chunk = to_openai_dict(obj, chunk=True)
                    if any(c.get("finish_reason") for c in chunk.get("choices") or ()):
                        finished = True
                n += 1
                yield chunk
        finally:
            close = getattr(it, "aclose", None)
            if close is not None and not finished:
                with contextlib.suppress(Exception):  # closing a broken stream must not mask the real error
                    await close()
        if not finished:
            raise stream_cut("stream_cut", "stream ended before any choice finished", n)


