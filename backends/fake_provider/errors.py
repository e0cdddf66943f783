"""Error answers: the `Reject` exception handlers raise, and OpenAI/Anthropic-shaped error bodies."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import orjson
from aiohttp import web

from backends.fake_provider.wire import JSON


class Reject(Exception):
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


OPENAI_ERRORS: Mapping[int, tuple[str, str | None, str]] = MappingProxyType(
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
ANTHROPIC_ERROR_TYPES: Mapping[int, str] = MappingProxyType(
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
ANTHROPIC_MESSAGES: Mapping[int, str] = MappingProxyType(
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


def error_response(dialect: str, rej: Reject) -> web.Response:
    """The error response for `rej` in the dialect of the endpoint that raised it."""
    if dialect == "anthropic":
        etype = (
            rej.etype
            if rej.etype and rej.etype.endswith("_error")
            else ANTHROPIC_ERROR_TYPES.get(
                rej.status, "api_error" if rej.status >= 500 else "invalid_request_error"
            )
        )
        body = {"type": "error", "error": {"type": etype, "message": rej.message}}
    else:
        default_type, default_code, _ = OPENAI_ERRORS.get(
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
    return web.Response(status=rej.status, body=orjson.dumps(body), content_type=JSON, headers=rej.headers)
