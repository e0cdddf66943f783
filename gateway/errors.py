"""OpenAI-shaped errors.

Clients use the official SDK, which picks its exception class from the HTTP status and reads
`error.message/type/param/code` from the body; so every failure, ours or upstream's, leaves the
gateway as exactly that JSON with the matching status.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response

from backends.base import UpstreamError
from service.errors import Refused


class APIError(Exception):
    """An error to send to the client as OpenAI error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    details: list[dict[str, Any]] | None = None  # e.g. every validation error of a policy
    # the upstream failure this error restates (`from_upstream`), for a wire format that can repeat the
    # upstream's own report of it (a Responses upstream's error code)
    upstream: UpstreamError | None = None

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.details:
            err["details"] = self.details
        return {"error": err}

    def response(self, extra_headers: dict[str, str] | None = None) -> Response:
        headers = dict(self.headers)
        if extra_headers:
            headers.update(extra_headers)
        return Response(orjson.dumps(self.body()), status_code=self.status, media_type="application/json",
                        headers=headers)


def store_unavailable(what: str, exc: BaseException) -> APIError:
    """A database the request needs is away: 503 with Retry-After, so the client retries later
    instead of the write being dropped."""
    return APIError(503, f"{what} unavailable, retry later ({type(exc).__name__}).", type="server_error",
                    code="store_unavailable", headers={"retry-after": "5"})


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def internal_error() -> APIError:
    """The client's error for a failure of the gateway itself (a bug, an input nothing foresaw): 500
    in OpenAI's words, never the exception's text; the caller logs the exception."""
    return APIError(500, "The server had an error while processing your request.", type="server_error")


def invalid_api_key() -> APIError:
    return APIError(401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key")


def expired_api_key(expires_at: datetime) -> APIError:
    """A key past its expiry: refused as an invalid key is (401, same shape), with its own code and a
    message that says so, so the caller asks for a new key or an extension instead of checking the key."""
    when = expires_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return APIError(401, f"The API key provided expired at {when}. Ask the gateway's administrator to extend "
                    "it or issue a new one.", type="invalid_request_error", code="expired_api_key")


# Upstream failure kind -> (status, type, code, message) the client sees once every attempt has failed.
# Messages are written for the client; only a client-caused failure's carries the upstream's own words.
_UPSTREAM_MAP: dict[str, tuple[int, str, str | None, str]] = {
    "timeout": (504, "timeout", "upstream_timeout", "The model did not answer in time. Please retry."),
    "rate_limit": (429, "rate_limit_error", "rate_limit_exceeded",
                   "The model's provider is rate limiting requests. Please retry after a short wait."),
    # the self-hosted model's queue is full: busy, as the local server itself answers (503, Retry-After)
    "overloaded": (503, "server_error", "model_overloaded",
                   "The model is busy with other requests. Please retry after a short wait."),
    "server_error": (502, "upstream_error", "upstream_server_error",
                     "The model's provider had an error while processing your request."),
    "connection": (502, "upstream_error", "upstream_connection_error",
                   "The model's provider could not be reached. Please retry."),
    "stream_cut": (502, "upstream_error", "upstream_stream_cut", "The model's answer was cut off."),
    "malformed": (502, "upstream_error", "upstream_malformed_response",
                  "The model's provider sent an answer that could not be read."),
    "context_window": (400, "invalid_request_error", "context_length_exceeded",
                       "This model's maximum context length was exceeded by your request."),
    "content_policy": (400, "invalid_request_error", "content_filter",
                       "Your request was rejected by the model provider's content policy."),
    "bad_request": (400, "invalid_request_error", "invalid_request", "The model rejected your request."),
    "auth": (502, "upstream_error", "upstream_auth_error",
             "The gateway's credentials for the model's provider were refused (a gateway configuration "
             "problem, not your API key)."),
    "not_found": (404, "invalid_request_error", "model_not_found",
                  "The model's provider does not serve the requested model."),
    # no attempt was made: every deployment's circuit breaker is open (service/executor.py)
    "no_deployment": (503, "server_error", "no_candidates",
                      "No deployment can serve this model right now. Please retry after a short wait."),
}
# failure kinds whose client error carries Retry-After (when the failure says how long)
_RETRY_AFTER_KINDS = frozenset({"rate_limit", "overloaded", "no_deployment"})


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds, rounded up: a client that waits what it says is never early."""
    return str(max(1, math.ceil(seconds - 1e-9)))


def _upstream_detail(err: UpstreamError) -> tuple[str | None, str | None]:
    """The upstream's `param` and `code`, when its error body is OpenAI-shaped."""
    body = err.body.get("error", err.body) if isinstance(err.body, dict) else None
    if not isinstance(body, dict):
        return None, None
    param, code = body.get("param"), body.get("code")
    return (param if isinstance(param, str) else None), (code if isinstance(code, str) else None)


def from_upstream(err: UpstreamError) -> APIError:
    """Translate the last upstream failure into the client's error: a client-caused failure keeps the
    upstream's own message, param and code (they describe the client's request); any other says what
    failed in the gateway's fixed words, with the gateway-authored ``reason`` where the failure has one
    ("upstream 'eu-vllm' unreachable: connection refused"), never the upstream's or the HTTP library's
    message: those name the provider's account (a masked key, an organization id), its proxies' error
    pages, the library's classes, socket addresses and errno. The whole message stays in the attempt's
    row of the request log (`service.executor`), for the operator."""
    status, type_, code, message = _UPSTREAM_MAP.get(
        err.kind, (502, "upstream_error", None, "The model's provider failed."))
    headers: dict[str, str] = {}
    if err.kind in _RETRY_AFTER_KINDS and err.retry_after_s is not None:
        headers["retry-after"] = retry_after_header(err.retry_after_s)
    param = None
    if err.client_caused:
        param, upstream_code = _upstream_detail(err)
        code = upstream_code or code
        if err.message and err.kind != "not_found":
            message = err.message
    elif err.kind == "connection":
        detail = err.reason or "connection failed"
        message = f"{message} ({f'upstream {err.deployment!r} unreachable: ' if err.deployment else ''}{detail})"
    elif err.reason:
        message = f"{message} ({err.reason})"
    out = APIError(status, message, type=type_, param=param, code=code, headers=headers)
    out.upstream = err
    return out


# Service refusal code -> (status, type) in OpenAI's shape.
_REFUSAL_MAP: dict[str, tuple[int, str]] = {
    "rate_limit_exceeded": (429, "rate_limit_error"),
    "concurrency_limit_exceeded": (429, "rate_limit_error"),
    "budget_exceeded": (429, "insufficient_quota"),
    "no_candidates": (503, "server_error"),
    "output_too_long": (400, "invalid_request_error"),
    "unsupported_request": (400, "invalid_request_error"),
}


def from_refusal(r: Refused) -> APIError:
    """The client's error for a request the service refused (limits, budgets, no deployment)."""
    status, type_ = _REFUSAL_MAP.get(r.code, (503, "server_error"))
    headers = {"retry-after": retry_after_header(r.retry_after_s)} if r.retry_after_s is not None else {}
    code = "invalid_value" if r.code == "output_too_long" else r.code
    return APIError(status, r.message, type=type_, param=r.param, code=code, headers=headers)
