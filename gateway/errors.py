"""OpenAI-shaped errors.

Clients use the official SDK, which picks its exception class from the HTTP status and reads
`error.message/type/param/code` from the body; so every failure, ours or upstream's, leaves the
gateway as exactly that JSON with the matching status.
"""

from __future__ import annotations

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


def invalid_api_key() -> APIError:
    return APIError(401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key")


# Upstream failure kind -> (status, type, code) the client sees once every attempt has failed.
_UPSTREAM_MAP: dict[str, tuple[int, str, str | None]] = {
    "timeout": (504, "timeout", "upstream_timeout"),
    "rate_limit": (429, "rate_limit_error", "rate_limit_exceeded"),
    "server_error": (502, "upstream_error", "upstream_server_error"),
    "connection": (502, "upstream_error", "upstream_connection_error"),
    "stream_cut": (502, "upstream_error", "upstream_stream_cut"),
    "malformed": (502, "upstream_error", "upstream_malformed_response"),
    "context_window": (400, "invalid_request_error", "context_length_exceeded"),
    "content_policy": (400, "invalid_request_error", "content_filter"),
    "bad_request": (400, "invalid_request_error", None),
    "auth": (502, "upstream_error", "upstream_auth_error"),
    "not_found": (404, "invalid_request_error", "model_not_found"),
}


def from_upstream(err: UpstreamError) -> APIError:
    """Translate the last upstream failure into the client's error."""
    status, type_, code = _UPSTREAM_MAP.get(err.kind, (502, "upstream_error", None))
    headers: dict[str, str] = {}
    if err.kind == "rate_limit" and err.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after_s)))
    return APIError(status, f"upstream {err.kind}: {err.message}", type=type_, code=code, headers=headers)


# Service refusal code -> (status, type) in OpenAI's shape.
_REFUSAL_MAP: dict[str, tuple[int, str]] = {
    "rate_limit_exceeded": (429, "rate_limit_error"),
    "concurrency_limit_exceeded": (429, "rate_limit_error"),
    "budget_exceeded": (429, "insufficient_quota"),
    "no_candidates": (503, "server_error"),
}


def from_refusal(r: Refused) -> APIError:
    """The client's error for a request the service refused (limits, budgets, no deployment)."""
    status, type_ = _REFUSAL_MAP.get(r.code, (503, "server_error"))
    headers = {"retry-after": str(max(1, round(r.retry_after_s + 0.5)))} if r.retry_after_s is not None else {}
    return APIError(status, r.message, type=type_, code=r.code, headers=headers)
