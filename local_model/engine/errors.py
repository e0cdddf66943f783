"""Errors the engine raises to its callers; the server and the gateway backend map them to HTTP/OpenAI."""

from __future__ import annotations


class EngineError(Exception):
    """Base class."""


class EngineOverloaded(EngineError):
    """The bounded queue is full: retry later (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromptTooLong(EngineError):
    """The prompt cannot fit the model's context or the KV memory (HTTP 400 context_length_exceeded)."""


class InvalidRequest(EngineError):
    """Bad sampling parameters or prompt (HTTP 400). ``param`` names the request field at fault (OpenAI's
    error ``param``), or is None when no single field is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class EngineClosed(EngineError):
    """The engine has been shut down (HTTP 503)."""


class RequestCancelled(EngineError):
    """Delivered to a consumer still waiting on a request that was cancelled."""
