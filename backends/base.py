"""The one protocol every upstream implements, and the errors it raises.

The gateway speaks OpenAI shapes to clients; every backend receives an OpenAI-shaped request
body (already rewritten to the deployment's own model name) and returns OpenAI-shaped
responses or chunk dicts. Keeping one normalised shape means the router, the retry loop and
the request log never care which provider is behind a deployment.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

Kind = Literal["chat", "completion", "embedding", "responses"]
# The events that end a Responses API stream (it has no `[DONE]`), and those that end it failed.
RESPONSES_END = frozenset({"response.completed", "response.incomplete"})
RESPONSES_FAILED = frozenset({"response.failed", "error"})

_T = TypeVar("_T")


@dataclass(slots=True)
class UpstreamCall:
    """One attempt against one deployment."""

    kind: Kind
    # OpenAI-shaped request body; body["model"] is the upstream model name. Kind "responses": a Responses
    # API body, passed through to an upstream that speaks it; the answer is a Responses object and
    # the stream yields its events (the last one response.completed / response.incomplete).
    body: dict[str, Any]
    timeout_s: float  # per-attempt deadline for the whole call (non-stream) or to first byte (stream)
    stream_idle_timeout_s: float = 60.0  # max silence between two stream chunks
    headers: dict[str, str] = field(default_factory=dict)  # extra headers to forward


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_fields(u: Mapping[str, Any]) -> Usage:
    """A usage object's token counts: chat's names, else the Responses API's."""
    return Usage(
        int(u.get("prompt_tokens") or u.get("input_tokens") or 0),
        int(u.get("completion_tokens") or u.get("output_tokens") or 0),
    )


@dataclass(slots=True)
class UpstreamResponse:
    """A complete (non-streamed) answer: the OpenAI-shaped JSON body and its usage."""

    body: dict[str, Any]
    usage: Usage
    status: int = 200


# Failures caused by the client's own request (upstream 400/404/413/422, context length, content
# policy): they say nothing about the upstream's health, so they never count against its breaker.
CLIENT_CAUSED = frozenset({"bad_request", "not_found", "context_window", "content_policy"})

# A self-hosted engine whose queue is full ("overloaded") is busy, not broken: counted against its
# breaker, a burst would shut the deployment off for the whole cooldown (every request a 503, even
# once the queue has drained, and even where it is the only deployment). It never counts, as a
# client-caused failure never does; unlike one, it is worth a retry later or a fallback elsewhere.
HEALTH_NEUTRAL = CLIENT_CAUSED | {"overloaded"}


class UpstreamError(Exception):
    """An upstream attempt failed. `kind` drives retries, fallbacks and the client's error.

    kinds: "timeout", "rate_limit", "overloaded", "server_error", "connection", "context_window",
    "content_policy", "bad_request", "auth", "not_found", "stream_cut", "malformed". "rate_limit" is a
    provider's 429; "overloaded" is the local model's full queue (busy, not broken: `HEALTH_NEUTRAL`).

    ``message`` is the whole story, for the request log (the attempt row's error_message): the URL, the
    HTTP library's own words. ``reason``, set for a transport failure, is what the client may see in
    its place: a short phrase that does not change with the library or its version (`transport_reason`).
    ``deployment`` is the deployment that failed; the executor fills it in.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        body: Any = None,
        reason: str | None = None,
        deployment: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.body = body
        self.reason = reason
        self.deployment = deployment

    @property
    def retryable(self) -> bool:
        return self.kind in {"timeout", "rate_limit", "overloaded", "server_error", "connection", "stream_cut",
                             "malformed"}

    @property
    def client_caused(self) -> bool:
        return self.kind in CLIENT_CAUSED

    def __repr__(self) -> str:
        return f"UpstreamError({self.kind!r}, {self.message!r}, status={self.status})"


REDACTED = "[redacted]"
MIN_SECRET_CHARS = 6  # shorter "keys" (a local server's "EMPTY") are placeholders: replacing them would garble text


def secret_values(candidates: Iterable[str | None]) -> tuple[str, ...]:
    """The secrets worth redacting among ``candidates``: long enough to be one, longest first (so a key
    that contains another is replaced whole)."""
    return tuple(sorted({c for c in candidates if c and len(c) >= MIN_SECRET_CHARS}, key=len, reverse=True))


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (from `secret_values`) replaced by ``[redacted]``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"), secrets)
    if isinstance(value, Mapping):
        return {_redact_value(k, secrets): _redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, secrets) for v in value]
    return value


def redact_error(err: UpstreamError, secrets: tuple[str, ...]) -> UpstreamError:
    """``err`` (changed in place) without the backend's own secrets: an upstream may echo the key it was
    sent (a 401 naming the Authorization header, a proxy's error page), and an error's message and body
    reach the request log, the client's error and the console."""
    if secrets:
        err.message = redact_text(err.message, secrets)
        err.args = (err.message,)
        err.body = _redact_value(err.body, secrets)
        if err.reason is not None:
            err.reason = redact_text(err.reason, secrets)
    return err


async def redacted(call: Awaitable[_T], secrets: tuple[str, ...]) -> _T:
    """The result of ``call`` (a backend's own request), with `redact_error` applied to the error it raises."""
    try:
        return await call
    except UpstreamError as err:
        redact_error(err, secrets)
        raise


async def redacted_stream(
    chunks: AsyncGenerator[dict[str, Any], None], secrets: tuple[str, ...]
) -> AsyncGenerator[dict[str, Any], None]:
    """``chunks`` (a backend's own stream) with `redact_error` applied to the error that ends it; closes
    ``chunks`` as soon as this stream ends or is closed, not when it is collected (that releases the
    upstream connection)."""
    try:
        async for chunk in chunks:
            yield chunk
    except UpstreamError as err:
        redact_error(err, secrets)
        raise
    finally:
        await chunks.aclose()


_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
}


def transport_reason(exc: BaseException) -> str:
    """What went wrong with the connection behind ``exc`` (followed along its causes), in words that
    name no library, class, socket address or errno: "connection refused", "host name not resolved",
    "TLS handshake failed" ... "connection failed" when nothing more is known."""
    cur: BaseException | None = exc
    for _ in range(12):
        if cur is None:
            break
        if isinstance(cur, ssl.SSLCertVerificationError):
            return "TLS certificate not trusted"
        if isinstance(cur, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(cur, socket.gaierror):
            return "host name not resolved"
        if isinstance(cur, OSError) and cur.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[cur.errno]
        if isinstance(cur, TimeoutError):
            return "connection timed out"
        if isinstance(cur, OSError):  # an HTTP library's own (aiohttp's ClientConnectorError) wraps the socket's
            inner = getattr(cur, "os_error", None) or getattr(cur, "certificate_error", None)
            if isinstance(inner, BaseException) and inner is not cur:
                cur = inner
                continue
        cur = cur.__cause__ or cur.__context__
    return "connection failed"


def timeout_error(phase: Literal["connect", "first_byte", "total"], seconds: float, message: str | None = None,
                  **extra: Any) -> UpstreamError:
    """A deadline the gateway set ran out before any answer: kind "timeout", ``body["phase"]`` naming it,
    and a ``reason`` for the client that says which deadline and its configured seconds, in fixed words
    ("first byte timeout after 30s"). ``message`` replaces the request log's text."""
    text = f"{phase.replace('_', ' ')} timeout after {seconds:g}s"
    return UpstreamError("timeout", message or f"upstream {text}", body={"phase": phase, **extra}, reason=text)


def stream_cut(cause: str, message: str, n: int, reason: str | None = None, **extra: Any) -> UpstreamError:
    """A stream that failed after ``n`` chunks (kind "stream_cut"; ``cause`` the underlying kind): the
    client's ``reason`` (when the failure has one) says after how many."""
    return UpstreamError(
        "stream_cut",
        f"stream cut after {n} chunk(s): {message}",
        body={"cause": cause, "chunks_yielded": n, **extra},
        reason=None if reason is None else f"{reason} after {n} chunk(s)",
    )


def idle_cut(idle_s: float, n: int, message: str | None = None) -> UpstreamError:
    """No chunk for the stream's idle deadline (``stream_idle_timeout_s``) after ``n`` chunks."""
    return stream_cut("timeout", message or f"no data for {idle_s:g}s (idle timeout)", n,
                      reason=f"no data for {idle_s:g}s between chunks", phase="idle")


class Backend(Protocol):
    """An upstream deployment client. Implementations: litellm, direct OpenAI-compatible, local model."""

    name: str

    async def complete(self, call: UpstreamCall) -> UpstreamResponse:
        """Non-streamed call. Raises UpstreamError."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        """Streamed call: yields OpenAI chunk dicts (chat.completion.chunk / text_completion, or Responses
        events for kind "responses") in order.

        Raises UpstreamError before the first chunk (the caller may fall back) or during the
        stream (kind "stream_cut"; the caller must not splice another answer in).
        The final chunk carries `usage` when the upstream reports it.
        """
        ...

    async def aclose(self) -> None:
        ...
