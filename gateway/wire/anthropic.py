"""Anthropic's Messages API as a wire format over chat completions.

`translate` (and `to_chat`) turns a `POST /v1/messages` body into the gateway's internal chat request;
`message_from_chat` and `MessageStream` translate the answer back (whole, or as Anthropic's event
sequence: message_start, content_block_start/delta/stop, message_delta with usage, message_stop);
`caller_error` restates an error found in the chat request in terms of the Anthropic request, and
`error_body` gives Anthropic's error shape. Pure: no I/O.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.errors import APIError, bad_request
from gateway.schemas import TOOL_CHOICE_WITHOUT_TOOLS, unknown_tool
from gateway.wire.context_errors import parse_context_overflow

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# HTTP status -> Anthropic's error type (its errors reference: a 504 is `timeout_error`).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
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


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one chat message of the translation came from in the Anthropic request: ``path`` is
    ``system``, ``messages[i]``, or the ``messages[i].content[j]`` of a tool_result; for a message made
    of content blocks, ``parts`` and ``calls`` hold the block index of each chat content part and tool
    call (thinking blocks are dropped and tool results move out, so the indices differ)."""

    path: str
    kind: Literal["system", "message", "tool_result"]
    blocks: bool = False  # the content was a list of blocks (else a string)
    parts: tuple[int, ...] = ()
    calls: tuple[int, ...] = ()


def _message(msg: Any, i: int) -> list[tuple[dict[str, Any], Origin]]:
    """One Anthropic message as chat messages (tool results become tool messages, in order), each with
    its origin."""
    where = f"messages[{i}]"
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        raise bad_request(
            f"Invalid value for '{where}.role': expected 'user' or 'assistant'.", param=f"{where}.role"
        )
    role, content = msg["role"], msg.get("content")
    if isinstance(content, str):
        return [({"role": role, "content": content}, Origin(where, "message"))]
    if content is None:
        raise bad_request(f"Missing required parameter: '{where}.content'.", param=f"{where}.content")
    if not isinstance(content, list):
        raise bad_request(
            f"Invalid value for '{where}.content': expected a string or a list of content blocks.",
            param=f"{where}.content",
        )
    parts: list[dict[str, Any]] = []
    part_blocks: list[int] = []
    calls: list[dict[str, Any]] = []
    call_blocks: list[int] = []
    out: list[tuple[dict[str, Any], Origin]] = []
    for j, b in enumerate(content):
        bw = f"{where}.content[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(b.get("text") or "")})
            part_blocks.append(j)
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(b, bw)}})
            part_blocks.append(j)
        elif kind == "tool_use" and role == "assistant":
            for key in ("id", "name"):
                if not isinstance(b.get(key), str) or not b[key]:
                    raise bad_request(
                        f"Missing required parameter: '{bw}.{key}'."
                        if b.get(key) is None
                        else f"Invalid value for '{bw}.{key}': expected a non-empty string.",
                        param=f"{bw}.{key}",
                        code="missing_required_parameter" if b.get(key) is None else None,
                    )
            if b.get("input") is not None and not isinstance(b["input"], dict):
                raise bad_request(f"Invalid value for '{bw}.input': expected an object.", param=f"{bw}.input")
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
            call_blocks.append(j)
        elif kind == "tool_result" and role == "user":
            if not isinstance(b.get("tool_use_id"), str):
                raise bad_request(
                    f"Missing required parameter: '{bw}.tool_use_id'.",
                    param=f"{bw}.tool_use_id",
                    code="missing_required_parameter",
                )
            c = b.get("content")
            text = c if isinstance(c, str) else _text(c or [], f"{bw}.content")
            if b.get("is_error"):
                text = f"Error: {text}"
            out.append(
                ({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text}, Origin(bw, "tool_result"))
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(
                f"Invalid value for '{bw}.type': {kind!r} is not supported here.", param=f"{bw}.type"
            )
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
        out.append((m, Origin(where, "message", True, tuple(part_blocks), tuple(call_blocks))))
    return out


def translate(body: dict[str, Any]) -> tuple[dict[str, Any], list[Origin]]:
    """The chat completion body that answers an Anthropic Messages request, and the origin of each of
    its messages (for `caller_error`)."""
    for required in ("model", "max_tokens", "messages"):
        if required not in body:
            raise bad_request(
                f"{required}: Field required", param=required, code="missing_required_parameter"
            )
    n = body.get("n")
    if n is not None and not (type(n) is int and n == 1):
        # Not a Messages parameter: refused, as Anthropic refuses it, rather than answered once and ignored.
        raise bad_request("n: the Messages API answers with one message per request; send one request per answer",
                          param="n")
    msgs = body["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages: at least one message is required", param="messages")
    messages: list[dict[str, Any]] = []
    origins: list[Origin] = []
    if body.get("system") is not None:
        messages.append({"role": "system", "content": _text(body["system"], "system")})
        origins.append(Origin("system", "system"))
    for i, m in enumerate(msgs):
        for message, origin in _message(m, i):
            messages.append(message)
            origins.append(origin)
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
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise bad_request(f"Invalid value for 'tools[{i}]': expected an object.", param=f"tools[{i}]")
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
        ]
    _tool_choice(body.get("tool_choice"), tools or [], chat)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, origins


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion body that answers an Anthropic Messages request."""
    return translate(body)[0]


def _tool_choice(choice: Any, tools: list[dict[str, Any]], chat: dict[str, Any]) -> None:
    """``tool_choice`` checked against the request's tools and set on ``chat`` in chat's form. A choice
    other than "none" needs tools, and a "tool" choice must name one of them: the 400 says so rather
    than an upstream refusing the translated request, or ignoring the choice."""
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise bad_request("Invalid value for 'tool_choice': expected an object.", param="tool_choice")
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise bad_request(
            "Invalid value for 'tool_choice.type': expected 'auto', 'any', 'tool' or 'none'.",
            param="tool_choice.type",
        )
    name = choice.get("name")
    if kind == "tool" and not isinstance(name, str):
        raise bad_request(
            "Missing required parameter: 'tool_choice.name' (a string naming one of the tools).",
            param="tool_choice.name",
        )
    if kind == "none" and not tools:
        return  # nothing to choose from, nothing to forbid
    if not tools:
        raise bad_request(f"Invalid value for 'tool_choice': {TOOL_CHOICE_WITHOUT_TOOLS}.", param="tool_choice")
    if kind == "tool" and name not in {t.get("name") for t in tools}:
        raise bad_request(f"Invalid value for 'tool_choice': {unknown_tool(str(name))}.", param="tool_choice")
    chat["tool_choice"] = (
        {"type": "function", "function": {"name": name}}
        if kind == "tool"
        else {"any": "required", "none": "none"}.get(kind, "auto")
    )
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


# ---- errors found in the translated request, restated in the caller's terms ---------------------------

# a chat request's top-level parameter -> the Anthropic field it was translated from
_CALLER_FIELD = {
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
    "user": "metadata.user_id",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
    "stream_options": "stream",
    "tool_choice": "tool_choice",
}
_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\](.*)")
_INDEXED = re.compile(r"\[(\d+)\](.*)")
_TOOL_FIELDS = {".function.name": ".name", ".function.description": ".description",
                ".function.parameters": ".input_schema"}
_CALL_FIELDS = {".id": ".id", ".function.name": ".name", ".function.arguments": ".input"}


def _block_field(origin: Origin, rest: str) -> str:
    """The Anthropic path of ``rest`` (what follows ``messages[k]`` in a chat parameter) for the chat
    message that ``origin`` describes."""
    if origin.kind == "system":
        return "system"
    if origin.kind == "tool_result":
        if rest.startswith(".content"):
            return origin.path + ".content"
        return origin.path + (".tool_use_id" if rest.startswith(".tool_call_id") else "")
    for chat_list, blocks in ((".content", origin.parts), (".tool_calls", origin.calls)):
        if not rest.startswith(chat_list):
            continue
        m = _INDEXED.fullmatch(rest[len(chat_list):])
        if m is None or not origin.blocks:
            return origin.path + ".content"
        k, sub = int(m.group(1)), m.group(2)
        if k >= len(blocks):
            return origin.path + ".content"
        block = f"{origin.path}.content[{blocks[k]}]"
        if chat_list == ".tool_calls":
            return block + next((v for f, v in _CALL_FIELDS.items() if sub.startswith(f)), "")
        if sub.startswith(".image_url"):
            return block + ".source"
        return block + (sub if sub in (".text", ".type") else "")
    return origin.path + (".role" if rest.startswith(".role") else "")


def caller_field(param: str, origins: Sequence[Origin]) -> str:
    """The Anthropic request's field that chat parameter ``param`` was translated from: ``tools[i].name``
    for ``tools[i].function.name``, ``messages[i].content[j]…`` for a message path (the system
    message, tool results and thinking blocks shift the indices), ``stop_sequences`` for ``stop``…"""
    m = _MESSAGE_PARAM.fullmatch(param)
    if m is not None:
        k = int(m.group(1))
        return _block_field(origins[k], m.group(2)) if k < len(origins) else "messages"
    if param.startswith("tools["):
        head, dot, _ = param.partition("].")
        if dot:
            sub = param[len(head) + 1:]
            return head + "]" + next((v for f, v in _TOOL_FIELDS.items() if sub.startswith(f)), "")
        return param
    if param.startswith("tool_choice.function"):
        return "tool_choice.name"
    top = re.split(r"[.\[]", param, maxsplit=1)[0]
    return _CALLER_FIELD.get(top, param)


def caller_error(err: APIError, origins: Sequence[Origin]) -> APIError:
    """``err``, found in the chat request that ``origins`` describes, in terms of the Anthropic request:
    the parameter and its quoted mention in the message renamed (`caller_field`), the field named at the
    front (``max_tokens: …``, as Anthropic's messages do) where the message does not mention it, and a
    context-length error from an upstream restated in Anthropic's words (input length and max_tokens
    against the context limit, where the upstream spoke of messages and completion)."""
    message, param = err.message, err.param
    if err.code == "context_length_exceeded":
        message = _context_message(message)
    if param:
        new = caller_field(param, origins)
        message = message.replace(f"'{param}'", f"'{new}'")
        if new not in message:
            message = f"{new}: {message}"
        param = new
    if message == err.message and param == err.param:
        return err
    out = APIError(err.status, message, type=err.type, param=param, code=err.code, headers=err.headers)
    out.details = err.details
    return out


def _context_message(message: str) -> str:
    """A context-length error in Anthropic's words: "prompt is too long: R tokens > W maximum", or, when
    the output limit is what tips it over, "input length and `max_tokens` exceed context limit: P + C > W"."""
    found = parse_context_overflow(message)
    if found is not None and found.output_tips_it:
        return (f"input length and `max_tokens` exceed context limit: {found.prompt} + {found.completion} > "
                f"{found.window}, decrease input length or `max_tokens` and try again")
    if found is not None and found.requested is not None:
        return (f"prompt is too long: {found.requested} tokens > {found.window} maximum "
                "(decrease input length or `max_tokens` and try again)")
    return ("input length and `max_tokens` exceed this model's context limit; decrease input length or "
            "`max_tokens` and try again")


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


def stop_of(finish_reason: str | None, matched: Any, stop_sequences: Sequence[str]) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat choice that finished with
    ``finish_reason``. ``matched`` is the choice's ``stop_reason``, where the upstream names the stop
    string that ended it (vLLM and SGLang do; OpenAI does not): one of the request's ``stop_sequences``
    there makes it "stop_sequence". Without it a stop sequence cannot be told from the model's own end
    of turn, and "end_turn" it is."""
    if finish_reason == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP.get(finish_reason or "stop", "end_turn"), None


def message_from_chat(
    chat: dict[str, Any], model: str, mid: str, stop_sequences: Sequence[str] = ()
) -> dict[str, Any]:
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
    stop_reason, stop_sequence = stop_of(choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences)
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
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
    `message_delta` (stop reason and stop sequence as `stop_of` finds them, output usage) and
    `message_stop`.
    """

    def __init__(self, model: str, mid: str, stop_sequences: Sequence[str] = ()) -> None:
        self.model, self.mid = model, mid
        self.stop_sequences = stop_sequences
        self._index = -1
        self._open: str | None = None  # "text" or the chat index of the open tool call, as "tool:<i>"
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.matched: Any = None  # the finishing chunk's `stop_reason` (`stop_of`)

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
                self.matched = c.get("stop_reason")
        return out

    def finish(self) -> list[dict[str, Any]]:
        usage = _usage(self.usage)
        stop_reason, stop_sequence = stop_of(self.finish_reason, self.matched, self.stop_sequences)
        return [
            *self._close(),
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]},
            },
            {"type": "message_stop"},
        ]

    def fail(self, err: APIError) -> list[dict[str, Any]]:
        return [error_body(err)]
