"""Server-sent-events helpers for upstream streams: an incremental decoder and usage-chunk rules.

Upstream SSE arrives in arbitrary TCP-sized pieces; `SSEDecoder` turns them into whole events
without re-scanning the buffer (only complete lines are split off, the tail is kept). It is
deliberately small: OpenAI-compatible servers send ``data: {json}\\n\\n`` events ending with
``data: [DONE]``; Anthropic adds ``event:`` lines. Comments (``: keep-alive``) are skipped.

Usage-chunk convention (shared with the gateway): streaming backends always ask the upstream
for ``stream_options.include_usage = true`` so cost and token accounting work, and yield the
final usage chunk (``choices == []`` and ``usage`` set) unchanged. Whether the *client* asked
for it is ``client_wants_usage(call.body)``; if not, the gateway drops chunks for which
``is_usage_chunk(chunk)`` holds (and strips ``usage: null`` from the others).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SSEDecoder", "SSEEvent", "client_wants_usage", "is_usage_chunk", "with_stream_usage", "DONE"]

#: payload of OpenAI's terminal event
DONE = b"[DONE]"

#: (event name or None, data payload bytes; multi-line data joined with b"\n")
SSEEvent = tuple[str | None, bytes]


class SSEDecoder:
    """Incremental SSE parser: `feed` bytes as they arrive, get the events they complete.

    Handles ``\\n`` and ``\\r\\n`` line endings (a ``\\r`` split from its ``\\n`` across two feeds
    included). Bare-``\\r`` line endings, legal but unused by any LLM server, are not supported.
    """

    __slots__ = ("_buf", "_event", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        out: list[SSEEvent] = []
        data = self._data
        for line in buf[:end].split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    out.append((self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                    data = self._data = []
                self._event = None
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # ":" comments, "id:", "retry:" and unknown fields are ignored
        return out

    def flush(self) -> list[SSEEvent]:
        """Events left when the stream ends without a final blank line (lenient servers)."""
        out = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf = b""
        return out


def client_wants_usage(body: Mapping[str, Any]) -> bool:
    """Did the client itself ask for the final usage chunk (``stream_options.include_usage``)?"""
    so = body.get("stream_options")
    return bool(isinstance(so, Mapping) and so.get("include_usage"))


def is_usage_chunk(chunk: Mapping[str, Any]) -> bool:
    """The final usage-only chunk: no choices, usage set."""
    return not chunk.get("choices") and chunk.get("usage") is not None


def with_stream_usage(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `body` set to stream with usage reported (the caller's dict is never mutated)."""
    out = dict(body)
    out["stream"] = True
    so = body.get("stream_options")
    if not (isinstance(so, Mapping) and so.get("include_usage")):
        out["stream_options"] = {**(so if isinstance(so, Mapping) else {}), "include_usage": True}
    return out
