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


def replay_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A finished chat or text completion as the stream chunks that would have carried it.

    Used where an answer must be complete before the client may see it (a cascade judges the cheap
    model's whole answer first): one chunk with each choice's content, one with its finish reason,
    then the usage chunk when the client asked for it, in the order OpenAI streams them.
    """
    chat = body.get("object") != "text_completion"
    base = {"id": body.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": body.get("created"), "model": body.get("model"),
            "system_fingerprint": body.get("system_fingerprint")}
    content: list[dict[str, Any]] = []
    finish: list[dict[str, Any]] = []
    for i, c in enumerate(body.get("choices") or ()):
        index = c.get("index", i)
        if chat:
            msg = c.get("message") or {}
            delta: dict[str, Any] = {"role": msg.get("role", "assistant"), "content": msg.get("content")}
            if msg.get("refusal") is not None:
                delta["refusal"] = msg["refusal"]
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{"index": k, **tc} for k, tc in enumerate(msg["tool_calls"])]
            content.append({"index": index, "delta": delta, "logprobs": c.get("logprobs"), "finish_reason": None})
            finish.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": c.get("finish_reason")})
        else:
            content.append({"index": index, "text": c.get("text", ""), "logprobs": c.get("logprobs"),
                            "finish_reason": None})
            finish.append({"index": index, "text": "", "logprobs": None, "finish_reason": c.get("finish_reason")})
    out = [base | {"choices": content}, base | {"choices": finish}]
    if include_usage and body.get("usage") is not None:
        out.append(base | {"choices": [], "usage": body["usage"]})
    return out
