"""Anthropic's Messages API as a wire format over chat completions.

`to_chat` translates a `POST /v1/messages` body into the gateway's internal chat request;
`message_from_chat` and `MessageStream` translate the answer back (whole, or as Anthropic's event
sequence: message_start, content_block_start/delta/stop, message_delta with usage, message_stop);
`error_body` gives Anthropic's error shape. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from gateway.errors import APIError, bad_request

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# HTTP status -> Anthropic's error type.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, b in enumerate(content):
            if not isinstance(b, dict) or b.get("type") != "text":
                raise bad_request(
                    f"Invalid value for '{where}[{i}]': expected a text block.", param=f"{where}[{i}]"
                )
            out.append(str(b.get("text") or ""))
        return "".join(out)
    raise bad_request(f"Invalid value for '{where}': expected a string or text blocks.", param=where)


def _image_url(block: dict[str, Any], where: str) -> str:
    src = block.get("source")
    if isinstance(src, dict):
        if src.get("type") == "base64" and isinstance(src.get("media_type"), str) and isinstance(src.get("data"), str):
            return f"data:{src['media_type']};base64,{src['data']}"
        if src.get("type") == "url" and isinstance(src.get("url"), str):
            return src["url"]
    raise bad_request(
        f"Invalid value for '{where}.source': expected a base64 or url image source.", param=f"{where}.source"
    )


def _message(msg: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages (tool results become tool messages, in order)."""
    where = f"messages[{i}]"
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        raise bad_request(
            f"Invalid value for '{where}.role': expected 'user' or 'assistant'.", param=f"{where}.role"
        )
    role, content = msg["role"], msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if content is None:
        raise bad_request(f"Missing required parameter: '{where}.content'.", param=f"{where}.content")
    if not isinstance(content, list):
        raise bad_request(
            f"Invalid value for '{where}.content': expected a string or a list of content blocks.",
            param=f"{where}.content",
        )
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        bw = f"{where}.content[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(b.get("text") or "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(b, bw)}})
        elif kind == "tool_use" and role == "assistant":
            calls.append(
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {
                        "name": b.get("name"),
                        "arguments": orjson.dumps(b.get("input") or {}).decode(),
                    },
                }
            )
        elif kind == "tool_result" and role == "user":
            c = b.get("content")
            text = c if isinstance(c, str) else _text(c or [], f"{bw}.content")
            if b.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(
                f"Invalid value for '{bw}.type': {kind!r} is not supported here.", param=f"{bw}.type"
            )
    out = list(results)
    if parts or calls:
        body: str | list[dict[str, Any]] | None
        if not parts:
            body = None
        elif all(p["type"] == "text" for p in parts):
            body = "".join(p["text"] for p in parts)
        else:
            body = parts
        m: dict[str, Any] = {"role": role, "content": body}
        if calls:
            m["tool_calls"] = calls
        out.append(m)
    return out


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion body that answers an Anthropic Messages request."""
    for required in ("model", "max_tokens", "messages"):
        if required not in body:
            raise bad_request(
                f"{required}: Field required", param=required, code="missing_required_parameter"
            )
    msgs = body["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages: at least one message is required", param="messages")
    messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        messages.append({"role": "system", "content": _text(body["system"], "system")})
    for i, m in enumerate(msgs):
        messages += _message(m, i)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for k in ("temperature", "top_p"):
        if body.get(k) is not None:
            chat[k] = body[k]
    if body.get("stop_sequences"):
        if len(body["stop_sequences"]) > 4:
            raise bad_request(
                "stop_sequences: this gateway supports at most 4 stop sequences", param="stop_sequences"
            )
        chat["stop"] = body["stop_sequences"]
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        chat["user"] = meta["user_id"]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise bad_request("tools: expected an array", param="tools")
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description"),
                    "parameters": t.get("input_schema") or {"type": "object"},
                },
            }
            for t in tools
            if isinstance(t, dict)
        ]
        choice = body.get("tool_choice")
        if choice is not None and not isinstance(choice, dict):
            raise bad_request("Invalid value for 'tool_choice': expected an object.", param="tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind not in ("auto", "any", "tool", "none"):
                raise bad_request(
                    "Invalid value for 'tool_choice.type': expected 'auto', 'any', 'tool' or 'none'.",
                    param="tool_choice.type",
                )
            if kind == "tool" and not isinstance(choice.get("name"), str):
                raise bad_request(
                    "Missing required parameter: 'tool_choice.name' (a string naming one of the tools).",
                    param="tool_choice.name",
                )
            chat["tool_choice"] = (
                {"type": "function", "function": {"name": choice.get("name")}}
                if kind == "tool"
                else {"any": "required", "none": "none"}.get(kind, "auto")
            )
            if choice.get("disable_parallel_tool_use"):
                chat["parallel_tool_calls"] = False
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    u = usage or {}
    return {
        "input_tokens": int(u.get("prompt_tokens") or 0),
        "output_tokens": int(u.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _tool_input(arguments: str | None) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def message_from_chat(chat: dict[str, Any], model: str, mid: str) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tc.get("id") or f"toolu_{uuid.uuid4().hex}",
                "name": fn.get("name"),
                "input": _tool_input(fn.get("arguments")),
            }
        )
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": _usage(chat.get("usage")),
    }


def error_body(err: APIError) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(err.status, "api_error"), "message": err.message},
    }


def sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class MessageStream:
    """Chat completion chunks (choice 0) in, Anthropic stream events out.

    A text block is opened on the first text delta; each tool call gets its own `tool_use` block
    whose arguments arrive as `input_json_delta`s. `finish()` closes the open block and sends
    `message_delta` (stop reason, output usage) and `message_stop`.
    """

    def __init__(self, model: str, mid: str) -> None:
        self.model, self.mid = model, mid
        self._index = -1
        self._open: str | None = None  # "text" or the chat index of the open tool call, as "tool:<i>"
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def start(self) -> list[dict[str, Any]]:
        msg = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(None),
        }
        return [{"type": "message_start", "message": msg}]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            if c.get("index", 0) != 0:
                continue
            delta = c.get("delta") or {}
            if delta.get("content"):
                if self._open != "text":
                    out += self._close()
                    self._index += 1
                    self._open = "text"
                    out.append(
                        {
                            "type": "content_block_start",
                            "index": self._index,
                            "content_block": {"type": "text", "text": ""},
                        }
                    )
                out.append(
                    {
                        "type": "content_block_delta",
                        "index": self._index,
                        "delta": {"type": "text_delta", "text": delta["content"]},
                    }
                )
            for tc in delta.get("tool_calls") or ():
                key = f"tool:{tc.get('index', 0)}"
                fn = tc.get("function") or {}
                if self._open != key:
                    out += self._close()
                    self._index += 1
                    self._open = key
                    out.append(
                        {
                            "type": "content_block_start",
                            "index": self._index,
                            "content_block": {
                                "type": "tool_use",
                                "id": tc.get("id") or f"toolu_{uuid.uuid4().hex}",
                                "name": fn.get("name") or "",
                                "input": {},
                            },
                        }
                    )
                if fn.get("arguments"):
                    out.append(
                        {
                            "type": "content_block_delta",
                            "index": self._index,
                            "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]},
                        }
                    )
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]
        return out

    def finish(self) -> list[dict[str, Any]]:
        usage = _usage(self.usage)
        return [
            *self._close(),
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": _STOP.get(self.finish_reason or "stop", "end_turn"),
                    "stop_sequence": None,
                },
                "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]},
            },
            {"type": "message_stop"},
        ]

    def fail(self, err: APIError) -> list[dict[str, Any]]:
        return [error_body(err)]
