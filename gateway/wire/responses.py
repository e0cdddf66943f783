"""OpenAI's Responses API as a wire format over chat completions.

The gateway routes one internal request shape (a chat completion body); this module translates a
`POST /v1/responses` body into it and the chat answer back: `to_chat` (request), `response_from_chat`
(a whole answer) and `ResponseStream` (chat chunks in, Responses events with `sequence_number` out).
Pure functions of their inputs: no I/O, so they are tested without a gateway.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import APIError, bad_request

# Request fields passed on to the chat body unchanged (same name, same meaning).
_SAME = ("temperature", "top_p", "parallel_tool_calls", "user", "metadata", "top_logprobs", "seed")
# Request fields that only shape the Responses object or the gateway's storage; never sent upstream.
_LOCAL = {
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "max_output_tokens",
    "reasoning",
    "stream",
    "store",
    "previous_response_id",
    "truncation",
    "include",
    "background",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "model",
    "stream_options",
    "max_tool_calls",
    "conversation",
    "prompt",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- request: Responses -> chat ------------------------------------------------------------------


def _content_parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A Responses message content (string or input/output parts) as chat content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(
            f"Invalid value for '{where}': expected a string or a list of content parts.",
            param=where,
            code="invalid_value",
        )
    parts: list[dict[str, Any]] = []
    for i, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(p.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(p.get("refusal") or "")})
        elif kind == "input_image":
            url = p.get("image_url") or p.get("file_id")
            if not isinstance(url, str):
                raise bad_request(f"'{where}[{i}]' needs an image_url.", param=f"{where}[{i}].image_url")
            parts.append(
                {"type": "image_url", "image_url": {"url": url, "detail": p.get("detail") or "auto"}}
            )
        else:
            raise bad_request(
                f"Invalid value for '{where}[{i}].type': unsupported content type {kind!r}.",
                param=f"{where}[{i}].type",
                code="invalid_value",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def input_messages(inp: Any) -> list[dict[str, Any]]:
    """The `input` of a Responses request (a string or a list of items) as chat messages.

    Consecutive function calls (and the assistant text before them) become one assistant message
    with `tool_calls`, as chat completions expects; `function_call_output` becomes a tool message;
    reasoning items have no chat form and are dropped.
    """
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if not isinstance(inp, list):
        raise bad_request(
            "Invalid value for 'input': expected a string or a list of input items.",
            param="input",
            code="invalid_value",
        )
    out: list[dict[str, Any]] = []
    for i, item in enumerate(inp):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(
                f"Invalid value for '{where}': expected an object.", param=where, code="invalid_value"
            )
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(
                    f"Invalid value for '{where}.role': {role!r}.",
                    param=f"{where}.role",
                    code="invalid_value",
                )
            out.append({"role": role, "content": _content_parts(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise bad_request(f"'{where}' needs call_id and name.", param=where, code="invalid_value")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": str(item.get("arguments") or "")},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise bad_request(
                    f"Missing required parameter: '{where}.call_id'.",
                    param=f"{where}.call_id",
                    code="missing_required_parameter",
                )
            text = output if isinstance(output, str) else _flatten_text(output)
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise bad_request(
                f"Invalid value for '{where}.type': item type {kind!r} is not supported.",
                param=f"{where}.type",
                code="invalid_value",
            )
    return out


def _flatten_text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(p.get("text") or "") for p in value if isinstance(p, dict))
    return "" if value is None else str(value)


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_request(
            "Invalid value for 'tools': expected an array.", param="tools", code="invalid_value"
        )
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise bad_request(
                f"Invalid value for 'tools[{i}].type': only function tools are supported, not {kind!r}.",
                param=f"tools[{i}].type",
                code="invalid_value",
            )
        fn: dict[str, Any] = {"name": t.get("name")}
        for k in ("description", "parameters", "strict"):
            if t.get(k) is not None:
                fn[k] = t[k]
        out.append({"type": "function", "function": fn})
    return out or None


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request(
        "Invalid value for 'tool_choice': only 'auto', 'none', 'required' or a function.",
        param="tool_choice",
        code="invalid_value",
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise bad_request(
                "Missing required parameter: 'text.format.schema'.",
                param="text.format.schema",
                code="missing_required_parameter",
            )
        js = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        for k in ("strict", "description"):
            if fmt.get(k) is not None:
                js[k] = fmt[k]
        return {"type": "json_schema", "json_schema": js}
    raise bad_request(
        f"Invalid value for 'text.format.type': {kind!r}.", param="text.format.type", code="invalid_value"
    )


def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The chat completion body that answers a Responses request.

    `history` is the stored conversation of `previous_response_id` (chat messages, without that
    response's instructions, which OpenAI does not carry over).
    """
    if body.get("background"):
        raise bad_request(
            "Background responses are not supported by this gateway.",
            param="background",
            code="unsupported_parameter",
        )
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request(
                "Invalid value for 'instructions': expected a string.",
                param="instructions",
                code="invalid_value",
            )
        messages.append({"role": "system", "content": instructions})
    messages += history or []
    messages += input_messages(body.get("input", []))
    if not any(m["role"] != "system" for m in messages):
        raise bad_request(
            "Missing required parameter: 'input' (there is no conversation to answer).",
            param="input",
            code="missing_required_parameter",
        )
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for k in _SAME:
        if body.get(k) is not None:
            chat[k] = body[k]
    if body.get("top_logprobs") is not None:
        chat["logprobs"] = True
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if (tools := _tools(body.get("tools"))) is not None:
        chat["tools"] = tools
    if (choice := _tool_choice(body.get("tool_choice"))) is not None and tools:
        chat["tool_choice"] = choice
    if (fmt := _response_format(body.get("text"))) is not None:
        chat["response_format"] = fmt
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    # Anything else is a provider extension: passed on like chat completions passes unknown fields.
    for k, v in body.items():
        if k not in _LOCAL and k not in chat and k not in _SAME:
            chat[k] = v
    return chat


# ---- answer: chat -> Responses -------------------------------------------------------------------


def usage_from_chat(usage: dict[str, Any] | None) -> dict[str, Any]:
    u = usage or {}
    pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cached = int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    reasoning = int(((u.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0)
    return {
        "input_tokens": pt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": ct,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(u.get("total_tokens") or pt + ct),
    }


def _text_format(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    return {"format": fmt if isinstance(fmt, dict) else {"type": "text"}}


def _tools_echo(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in body.get("tools") or ():
        if isinstance(t, dict):
            out.append(
                {
                    "type": "function",
                    "name": t.get("name"),
                    "description": t.get("description"),
                    "parameters": t.get("parameters"),
                    "strict": t.get("strict", True),
                }
            )
    return out


def _given(body: dict[str, Any], key: str, default: Any) -> Any:
    """The request's value, or OpenAI's default when absent or null (the object never echoes null)."""
    value = body.get(key)
    return default if value is None else value


def response_object(
    body: dict[str, Any],
    rid: str,
    model: str,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: str | None = None,
    created_at: int | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Responses `response` object, echoing the request's settings as OpenAI does."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    out = {
        "id": rid,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": _given(body, "parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",
        "store": _given(body, "store", True),
        "temperature": _given(body, "temperature", 1.0),
        "text": _text_format(body),
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": _tools_echo(body),
        "top_logprobs": _given(body, "top_logprobs", 0),
        "top_p": _given(body, "top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "metadata": body.get("metadata") or {},
    }
    if usage is not None:  # absent until the answer is complete (the spec allows no null)
        out["usage"] = usage
    if isinstance(body.get("user"), str):  # the spec allows a string or no field, never null
        out["user"] = body["user"]
    return out


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _incomplete(finish: str | None) -> str | None:
    return {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish or "")


def response_from_chat(body: dict[str, Any], chat: dict[str, Any], rid: str, model: str) -> dict[str, Any]:
    """A whole chat completion as the Responses object (first choice: Responses has no `n`)."""
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if msg.get("content"):
        output.append(_message_item(new_id("msg"), msg["content"]))
    elif msg.get("refusal"):
        output.append(
            {
                "type": "message",
                "id": new_id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": msg["refusal"]}],
            }
        )
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        output.append(
            _call_item(
                new_id("fc"), tc.get("id") or new_id("call"), fn.get("name") or "", fn.get("arguments") or ""
            )
        )
    reason = _incomplete(choice.get("finish_reason"))
    return response_object(
        body,
        rid,
        model,
        status="incomplete" if reason else "completed",
        output=output,
        usage=usage_from_chat(chat.get("usage")),
        incomplete=reason,
        created_at=chat.get("created"),
    )


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as chat messages, to continue the conversation from."""
    return input_messages([item for item in output if item.get("type") in ("message", "function_call")])


def output_text(output: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text") or ""
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    )


# ---- streaming: chat chunks -> Responses events ----------------------------------------------------


def sse(event: dict[str, Any]) -> bytes:
    """One Responses event in SSE framing (`event:` names its type; no `[DONE]` closes the stream)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


@dataclass
class _Call:
    item_id: str
    call_id: str
    name: str
    output_index: int
    arguments: list[str] = field(default_factory=list)


class ResponseStream:
    """Turns chat completion chunks (choice 0) into the Responses event sequence.

    `start()` gives `response.created` and `response.in_progress`; `feed(chunk)` the events a chunk
    carries (an output item is opened on its first delta); `finish()` closes the open items and ends
    with `response.completed` (or `response.incomplete`); `fail()` ends a stream cut by the upstream.
    Every event has a `sequence_number` counting from 0.
    """

    def __init__(self, body: dict[str, Any], rid: str, model: str) -> None:
        self.body, self.rid, self.model = body, rid, model
        self.created_at = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._text: list[str] | None = None
        self._msg_id = ""
        self._msg_index = -1
        self._calls: dict[int, _Call] = {}
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.final: dict[str, Any] | None = None

    def _ev(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def _snapshot(self, status: str, **kw: Any) -> dict[str, Any]:
        return response_object(
            self.body,
            self.rid,
            self.model,
            status=status,
            output=list(self.output),
            created_at=self.created_at,
            **kw,
        )

    def start(self) -> list[dict[str, Any]]:
        snap = self._snapshot("in_progress", usage=None)
        return [self._ev("response.created", response=snap), self._ev("response.in_progress", response=snap)]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            if c.get("index", 0) != 0:
                continue
            delta = c.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._text is None:
                    out += self._open_message()
                assert self._text is not None
                self._text.append(text)
                out.append(
                    self._ev(
                        "response.output_text.delta",
                        item_id=self._msg_id,
                        output_index=self._msg_index,
                        content_index=0,
                        delta=text,
                        logprobs=[],
                    )
                )
            for tc in delta.get("tool_calls") or ():
                out += self._call_delta(tc)
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]
        return out

    def _open_message(self) -> list[dict[str, Any]]:
        self._text, self._msg_id, self._msg_index = [], new_id("msg"), len(self.output)
        item = _message_item(self._msg_id, "", status="in_progress")
        item["content"] = []
        self.output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._ev("response.output_item.added", output_index=self._msg_index, item=item),
            self._ev(
                "response.content_part.added",
                item_id=self._msg_id,
                output_index=self._msg_index,
                content_index=0,
                part=part,
            ),
        ]

    def _close_message(self) -> list[dict[str, Any]]:
        if self._text is None:
            return []
        text = "".join(self._text)
        self._text = None
        item = _message_item(self._msg_id, text)
        self.output[self._msg_index] = item
        part = item["content"][0]
        return [
            self._ev(
                "response.output_text.done",
                item_id=self._msg_id,
                output_index=self._msg_index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self._ev(
                "response.content_part.done",
                item_id=self._msg_id,
                output_index=self._msg_index,
                content_index=0,
                part=part,
            ),
            self._ev("response.output_item.done", output_index=self._msg_index, item=item),
        ]

    def _call_delta(self, tc: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        index = int(tc.get("index", len(self._calls)))
        fn = tc.get("function") or {}
        call = self._calls.get(index)
        if call is None:
            out += self._close_message()
            call = _Call(new_id("fc"), tc.get("id") or new_id("call"), fn.get("name") or "", len(self.output))
            self._calls[index] = call
            item = _call_item(call.item_id, call.call_id, call.name, "", status="in_progress")
            self.output.append(item)
            out.append(self._ev("response.output_item.added", output_index=call.output_index, item=item))
        elif fn.get("name") and not call.name:
            call.name = fn["name"]
        args = fn.get("arguments")
        if args:
            call.arguments.append(args)
            out.append(
                self._ev(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=args,
                )
            )
        return out

    def finish(self) -> list[dict[str, Any]]:
        out = self._close_message()
        for call in self._calls.values():
            args = "".join(call.arguments)
            item = _call_item(call.item_id, call.call_id, call.name, args)
            self.output[call.output_index] = item
            out.append(
                self._ev(
                    "response.function_call_arguments.done",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    name=call.name,
                    arguments=args,
                )
            )
            out.append(self._ev("response.output_item.done", output_index=call.output_index, item=item))
        self._calls = {}
        reason = _incomplete(self.finish_reason)
        self.final = self._snapshot(
            "incomplete" if reason else "completed", usage=usage_from_chat(self.usage), incomplete=reason
        )
        out.append(self._ev("response.incomplete" if reason else "response.completed", response=self.final))
        return out

    def fail(self, error: APIError) -> list[dict[str, Any]]:
        """The upstream failed after the stream began: a `response.failed` with the error, no more output."""
        self.final = self._snapshot(
            "failed",
            usage=usage_from_chat(self.usage),
            error={"code": error.code or "server_error", "message": error.message},
        )
        return [self._ev("response.failed", response=self.final)]
