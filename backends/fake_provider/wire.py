"""Bytes on the wire: content types, the fingerprint, and SSE framing (OpenAI and Anthropic)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import orjson

JSON = "application/json"
SSE_HEADERS = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
FINGERPRINT = "fp_fake"


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def named_event(obj: dict[str, Any]) -> bytes:
    """An SSE event named by its `type` (Anthropic's and OpenAI Responses' framing)."""
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


anthropic_event = named_event


SSE_DONE = b"data: [DONE]\n\n"
