"""Server-sent events in OpenAI's framing: `data: <json>\\n\\n`, closed by `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(message: str, type_: str, code: str | None = None) -> bytes:
    """The event a client gets when a stream fails after its first token (never a spliced answer)."""
    return event({"error": {"message": message, "type": type_, "param": None, "code": code}})
