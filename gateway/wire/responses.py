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

from backends.base import UpstreamError
from gateway.errors import APIError, bad_request
from gateway.wire.context_errors import parse_context_overflow

# Request fields passed on to the chat body unchanged (same name, same meaning in chat completions).
_SAME = ("temperature", "top_p", "user", "metadata", "seed", "service_tier", "safety_identifier",
         "prompt_cache_key")
# Request fields that only shape the Responses object or the gateway's storage, or are translated into
# another chat field; never sent upstream as they are.
_LOCAL = {
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "max_output_tokens",
    "reasoning",
    "stream",
    "store",
    "previous_response_id",
    "truncation",
    "include",
    "top_logprobs",
    "background",
    "model",
    "stream_options",
    "max_tool_calls",
    "conversation",
    "prompt",
    "moderation",
    "context_management",
    "n",
}
# `include` value that asks for the answer's token logprobs on its output_text parts
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Fields whose state lives at the upstream (OpenAI's Conversations API, stored prompt templates): only a
# deployment that passes the Responses API through can honour them; the chat translation has neither.
UPSTREAM_STATE = ("conversation", "prompt")
# Fields asking for work the upstream's Responses API does itself (OpenAI's moderation of the input and
# output, server-side compaction of the context): likewise only a pass-through deployment can honour them,
# and the chat translation cannot do them (a chat upstream would get unknown fields, or none, and the
# answer would silently lack what was asked for).
UPSTREAM_WORK = ("moderation", "context_management")


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


def wants_logprobs(body: dict[str, Any]) -> bool:
    """Whether the request asks for the answer's token logprobs (`include`; `top_logprobs` only sizes
    each token's alternatives, as in OpenAI's API)."""
    include = body.get("include")
    return isinstance(include, list) and LOGPROBS_INCLUDE in include


def upstream_state(body: dict[str, Any]) -> list[str]:
    """The request's fields (of `UPSTREAM_STATE`) whose state only an upstream speaking the Responses API
    has."""
    return [k for k in UPSTREAM_STATE if body.get(k) is not None]


def native_fields(body: dict[str, Any]) -> list[str]:
    """The request's fields (of `UPSTREAM_STATE` and `UPSTREAM_WORK`) that only an upstream speaking the
    Responses API can honour; null asks for nothing."""
    return upstream_state(body) + [k for k in UPSTREAM_WORK if body.get(k) is not None]


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
    n = body.get("n")
    if n is not None and not (type(n) is int and n == 1):
        # A response has one output; forwarded, `n` would have the upstream make (and bill) answers nobody sees.
        raise bad_request(
            "Unsupported parameter: 'n'. A response has one answer; send one request per answer.",
            param="n",
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
        if not upstream_state(body):
            raise bad_request(
                "Missing required parameter: 'input' (there is no conversation to answer).",
                param="input",
                code="missing_required_parameter",
            )
        # The conversation (or the prompt template) is the upstream's: such a request is only ever passed
        # through (`ResponsesWire.native_only`), and this chat body only routes it.
        messages.append({"role": "user", "content": ""})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for k in _SAME:
        if body.get(k) is not None:
            chat[k] = body[k]
    if wants_logprobs(body):
        # Also what routes the request to a deployment with the `logprobs` capability (`needed_capabilities`).
        chat["logprobs"] = True
        if body.get("top_logprobs") is not None:
            chat["top_logprobs"] = body["top_logprobs"]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if (tools := _tools(body.get("tools"))) is not None:
        chat["tools"] = tools
        # chat completions refuses parallel_tool_calls without tools; the Responses API takes it either way
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if (choice := _tool_choice(body.get("tool_choice"))) is not None and tools:
        chat["tool_choice"] = choice
    text = body.get("text")
    if (fmt := _response_format(text)) is not None:
        chat["response_format"] = fmt
    if isinstance(text, dict) and text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
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


# a chat request's parameter -> the Responses parameter it was translated from (by prefix); errors raised on
# the translated chat request name what the caller sent
_CALLER_PARAM = (
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
    ("verbosity", "text.verbosity"),
    ("reasoning_effort", "reasoning.effort"),
    ("logprobs", "include"),
    ("messages", "input"),
)


def caller_error(err: APIError) -> APIError:
    """``err`` with its parameter (and the message's quoted mention of it) under the Responses name:
    ``max_tokens`` -> ``max_output_tokens``, ``tools[i].function.name`` -> ``tools[i].name``, a message
    path -> ``input`` (instructions and history shift the indices), ``response_format`` -> ``text.format``;
    a context-length error restated as the Responses API words it (`_context_error`)."""
    if err.code == "context_length_exceeded":
        return _context_error(err)
    param = err.param
    if not param:
        return err
    new = param
    if param.startswith("tools[") and ".function." in param:
        new = param.replace(".function.", ".", 1)
    else:
        for chat, caller in _CALLER_PARAM:
            if param == chat or param.startswith((chat + ".", chat + "[")):
                new = caller
                break
    if new == param:
        return err
    out = APIError(err.status, err.message.replace(f"'{param}'", f"'{new}'"), type=err.type, param=new,
                   code=err.code, headers=err.headers)
    out.details = err.details
    return out


def _context_error(err: APIError) -> APIError:
    """A context-length error in the Responses API's words, naming ``input``, or ``max_output_tokens`` when
    the input fits and the output limit is what overflows the window (chat's wording speaks of messages and
    a completion, which this caller never sent)."""
    found = parse_context_overflow(err.message)
    if found is not None and found.output_tips_it:
        message = (f"Your input ({found.prompt} tokens) and max_output_tokens ({found.completion}) exceed the "
                   f"context window of this model ({found.window} tokens). Please reduce max_output_tokens or "
                   "your input and try again.")
        param = "max_output_tokens"
    else:
        size = f" ({found.requested} tokens > {found.window})" if found and found.requested is not None else ""
        message = (f"Your input exceeds the context window of this model{size}. Please adjust your input and "
                   "try again.")
        param = "input"
    out = APIError(err.status, message, type=err.type, param=param, code=err.code, headers=err.headers)
    out.details = err.details
    return out


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


def _or(value: Any, default: Any) -> Any:
    """The request's value, or OpenAI's default when absent or null (the object never echoes null)."""
    return default if value is None else value


def echo(body: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as the response object repeats them: computed once per request and
    shared by every snapshot of its response (a stream sends three)."""
    get = body.get
    reasoning = get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    text = get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    verbosity = text.get("verbosity") if isinstance(text, dict) else None
    tools = get("tools")
    out = {
        "instructions": get("instructions"),
        "max_output_tokens": get("max_output_tokens"),
        "max_tool_calls": get("max_tool_calls"),
        "parallel_tool_calls": _or(get("parallel_tool_calls"), True),
        "previous_response_id": get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",  # the tier that served it, where the upstream says (`served_tier`)
        "store": _or(get("store"), True),
        "temperature": _or(get("temperature"), 1.0),
        "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"}, "verbosity": _or(verbosity, "medium")},
        "tool_choice": get("tool_choice") or "auto",
        "tools": [
            {
                "type": "function",
                "name": t.get("name"),
                "description": t.get("description"),
                "parameters": t.get("parameters"),
                "strict": t.get("strict", True),
            }
            for t in tools
            if isinstance(t, dict)
        ]
        if tools
        else [],
        "top_logprobs": _or(get("top_logprobs"), 0),
        "top_p": _or(get("top_p"), 1.0),
        "truncation": get("truncation") or "disabled",
        "metadata": get("metadata") or {},
    }
    for k in ("user", "safety_identifier", "prompt_cache_key"):
        if isinstance(get(k), str):  # a string or no field, never null
            out[k] = body[k]
    return out


def response_object(
    settings: dict[str, Any],
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
    """The Responses `response` object; `settings` is the request's `echo`."""
    out = {
        "id": rid,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "model": model,
        "output": output,
        **settings,
    }
    if usage is not None:  # absent until the answer is complete (the spec allows no null)
        out["usage"] = usage
    return out


# The codes a failed response's `error.code` may take (the API reference's `ResponseErrorCode`).
RESPONSE_ERROR_CODES = frozenset({
    "server_error", "rate_limit_exceeded", "invalid_prompt", "data_residency_mismatch", "bio_policy",
    "vector_store_timeout", "invalid_image", "invalid_image_format", "invalid_base64_image", "invalid_image_url",
    "image_too_large", "image_too_small", "image_parse_error", "image_content_policy_violation",
    "invalid_image_mode", "image_file_too_large", "unsupported_image_media_type", "empty_image_file",
    "failed_to_download_image", "image_file_not_found",
})


def upstream_response_code(err: UpstreamError | None) -> str | None:
    """The code a Responses upstream gave its own failure, when it is one the reference enumerates: the
    `response.error.code` of its `response.failed` event, or the code of its `error` event (flat, or
    nested under `error`), which the backend keeps as the failure's body (under `error` when the event
    cut a stream that had begun)."""
    if err is None or not isinstance(err.body, dict):
        return None
    event = err.body.get("error") if err.kind == "stream_cut" else err.body
    if not isinstance(event, dict):
        return None
    report: Any = None
    if event.get("type") == "response.failed":
        response = event.get("response")
        report = response.get("error") if isinstance(response, dict) else None
    elif event.get("type") == "error":
        report = event.get("error") if isinstance(event.get("error"), dict) else event
    code = report.get("code") if isinstance(report, dict) else None
    return code if isinstance(code, str) and code in RESPONSE_ERROR_CODES else None


def response_error(err: APIError) -> dict[str, Any]:
    """The `error` of a failed response object. Its `code` is one of those the API reference enumerates
    (clients and SDKs type it so): a Responses upstream's own code for its failure where it is one of
    them (`upstream_response_code`), else `rate_limit_exceeded` for a rate limit and `server_error` for
    any other failure; the gateway's own code goes in the `error` event before it (`failure_events`)."""
    code = upstream_response_code(err.upstream) or ("rate_limit_exceeded" if err.status == 429 else "server_error")
    return {"code": code, "message": err.message}


def failure_events(err: APIError, seq: int, failed: dict[str, Any]) -> list[dict[str, Any]]:
    """How a stream that has begun ends when the answer fails: an `error` event, then `response.failed`
    with the ``failed`` response object. The `error` event has the reference's flat fields (`code`,
    `message`, `param`) and the same nested under `error`, as the live API sends it: the official SDKs
    raise their API error on the nested form, so the caller's `for event in stream` fails there instead
    of ending quietly."""
    nested = {"type": err.type, "code": err.code, "message": err.message, "param": err.param}
    return [
        {"type": "error", "sequence_number": seq, "code": err.code or err.type, "message": err.message,
         "param": err.param, "error": nested},
        {"type": "response.failed", "sequence_number": seq + 1, "response": failed},
    ]


class ItemIds:
    """Output item ids derived from the response's own id (unique per response, no random draw per
    item): `msg_<hex>`, then `msg_<hex>_1`, … per prefix."""

    __slots__ = ("hex", "counts")

    def __init__(self, rid: str) -> None:
        self.hex = rid.partition("_")[2] or rid
        self.counts: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        n = self.counts.get(prefix, 0)
        self.counts[prefix] = n + 1
        return f"{prefix}_{self.hex}" if n == 0 else f"{prefix}_{self.hex}_{n}"


def _message_item(
    item_id: str, text: str, status: str = "completed", logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}],
    }


def _token_bytes(entry: dict[str, Any]) -> list[int]:
    """A chat logprob entry's UTF-8 bytes (chat allows null; the Responses API requires the list)."""
    raw = entry.get("bytes")
    if isinstance(raw, list):
        return raw
    return list(str(entry.get("token") or "").encode())


def logprobs_from_chat(chat_logprobs: Any, top: int) -> list[dict[str, Any]]:
    """A chat choice's (or chunk delta's) `logprobs.content` as the Responses API's `LogProb` list: each
    token with its `bytes` and at most ``top`` alternatives (the request's `top_logprobs`; an upstream
    may return more, as vLLM returns the chosen token for 0)."""
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    out: list[dict[str, Any]] = []
    for entry in content or ():
        if not isinstance(entry, dict):
            continue
        alternatives = entry.get("top_logprobs") or ()
        out.append({
            "token": str(entry.get("token") or ""),
            "logprob": entry.get("logprob"),
            "bytes": _token_bytes(entry),
            "top_logprobs": [
                {"token": str(t.get("token") or ""), "logprob": t.get("logprob"), "bytes": _token_bytes(t)}
                for t in list(alternatives)[:top]
                if isinstance(t, dict)
            ],
        })
    return out


def _top(body: dict[str, Any]) -> int:
    """How many alternatives each logprob carries: the request's `top_logprobs` (OpenAI's default 0)."""
    n = body.get("top_logprobs")
    return n if type(n) is int else 0


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


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_from_chat(body: dict[str, Any], chat: dict[str, Any], rid: str, model: str) -> dict[str, Any]:
    """A whole chat completion as the Responses object (first choice: Responses has no `n`)."""
    choices = chat.get("choices")
    choice = choices[0] if choices else {}
    msg = choice.get("message") or {}
    ids = ItemIds(rid)
    output: list[dict[str, Any]] = []
    if msg.get("content"):
        lp = logprobs_from_chat(choice.get("logprobs"), _top(body)) if wants_logprobs(body) else None
        output.append(_message_item(ids("msg"), msg["content"], logprobs=lp))
    elif msg.get("refusal"):
        output.append(
            {
                "type": "message",
                "id": ids("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": msg["refusal"]}],
            }
        )
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        output.append(
            _call_item(ids("fc"), tc.get("id") or ids("call"), fn.get("name") or "", fn.get("arguments") or "")
        )
    reason = _INCOMPLETE.get(choice.get("finish_reason") or "")
    response = response_object(
        echo(body),
        rid,
        model,
        status="incomplete" if reason else "completed",
        output=output,
        usage=usage_from_chat(chat.get("usage")),
        incomplete=reason,
        created_at=chat.get("created"),
    )
    served_tier(response, chat)
    return response


def served_tier(response: dict[str, Any], chat: dict[str, Any]) -> None:
    """The service tier that served the answer, where the chat upstream reports it (OpenAI does): the
    Responses object names the tier used, which may differ from the one asked for."""
    tier = chat.get("service_tier")
    if isinstance(tier, str) and tier:
        response["service_tier"] = tier


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


# ---- passthrough: a Responses request to an upstream that speaks it -------------------------------


def _chat_parts_as_input(content: Any) -> Any:
    """Chat message content as Responses content (a string stays a string)."""
    if not isinstance(content, list):
        return "" if content is None else content
    parts = []
    for p in content:
        if p.get("type") == "image_url":
            img = p.get("image_url") or {}
            parts.append({"type": "input_image", "image_url": img.get("url"), "detail": img.get("detail") or "auto"})
        else:
            parts.append({"type": "input_text", "text": str(p.get("text") or "")})
    return parts


def history_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stored conversation (chat messages) as Responses input items: the inverse of `input_messages`."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            out.append({"type": "function_call_output", "call_id": m.get("tool_call_id"), "output": m.get("content") or ""})
            continue
        if m.get("content") is not None or role != "assistant":
            out.append({"type": "message", "role": role, "content": _chat_parts_as_input(m.get("content"))})
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {}
            out.append({"type": "function_call", "call_id": tc.get("id"), "name": fn.get("name"),
                        "arguments": fn.get("arguments") or ""})
    return out


# Fields the gateway keeps for itself: the upstream stores nothing and never sees our response ids.
_NOT_FORWARDED = frozenset({"previous_response_id", "store", "stream", "stream_options", "background", "n"})


def passthrough_body(
    body: dict[str, Any], history: list[dict[str, Any]], upstream_model: str, stream: bool
) -> dict[str, Any]:
    """The Responses body sent to an upstream that speaks the Responses API.

    A conversation continued by `previous_response_id` is sent whole (its stored turns as input
    items, then this turn's input), with `store: false`: conversations live in the gateway's
    database, so they continue across deployments and gateway processes alike. A conversation of the
    upstream's own (`conversation`) is the exception: the caller's `store` goes as sent, since the
    upstream keeps that conversation's items.
    """
    out = {k: v for k, v in body.items() if k not in _NOT_FORWARDED}
    out["model"] = upstream_model
    if body.get("conversation") is None:
        out["store"] = False
    elif body.get("store") is not None:
        out["store"] = body["store"]
    if history:
        inp = body.get("input", [])
        turn = [{"type": "message", "role": "user", "content": inp}] if isinstance(inp, str) else list(inp)
        out["input"] = history_items(history) + turn
    if stream:
        out["stream"] = True
    return out


def passthrough_response(
    settings: dict[str, Any], response: dict[str, Any], rid: str, model: str
) -> dict[str, Any]:
    """An upstream's Responses object as the client's: the gateway's id and model name, the
    request's own `previous_response_id` and `store` (the upstream saw neither), and the request's
    settings (`echo`) where the upstream left a field null (litellm's objects do)."""
    response["id"] = rid
    response["model"] = model
    response["previous_response_id"] = settings["previous_response_id"]
    response["store"] = settings["store"]
    for k, v in settings.items():
        if response.get(k) is None:
            response[k] = v
    if response.get("user", "") is None:  # a string or no field, never null
        del response["user"]
    return response


# ---- streaming: chat chunks -> Responses events ----------------------------------------------------


_SSE_HEAD: dict[str, bytes] = {}  # event type -> its `event:` line and the `data: ` that follows


def sse(event: dict[str, Any]) -> bytes:
    """One Responses event in SSE framing (`event:` names its type; no `[DONE]` closes the stream)."""
    kind = event["type"]
    head = _SSE_HEAD.get(kind)
    if head is None:
        head = _SSE_HEAD[kind] = b"event: " + kind.encode() + b"\ndata: "
    return head + orjson.dumps(event) + b"\n\n"


@dataclass(slots=True)
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
    Every event has a `sequence_number` counting from 0. Events are built as plain dicts, each
    encoded once by `sse`; the request's settings are worked out once (`echo`) for all snapshots.
    """

    def __init__(self, body: dict[str, Any], rid: str, model: str) -> None:
        self.body, self.rid, self.model = body, rid, model
        self.settings = echo(body)
        self.ids = ItemIds(rid)
        self.created_at = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._text: list[str] | None = None
        self._logprobs: list[dict[str, Any]] = []  # the open message's token logprobs so far
        self._want_logprobs, self._top = wants_logprobs(body), _top(body)
        self.tier: str | None = None  # the service tier the upstream reports
        self._msg_id = ""
        self._msg_index = -1
        self._calls: dict[int, _Call] = {}
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.final: dict[str, Any] | None = None

    def _n(self) -> int:
        n = self.seq
        self.seq = n + 1
        return n

    def _snapshot(self, status: str, **kw: Any) -> dict[str, Any]:
        return response_object(
            self.settings, self.rid, self.model, status=status, output=list(self.output),
            created_at=self.created_at, **kw,
        )

    def start(self) -> list[dict[str, Any]]:
        snap = self._snapshot("in_progress", usage=None)
        return [
            {"type": "response.created", "sequence_number": self._n(), "response": snap},
            {"type": "response.in_progress", "sequence_number": self._n(), "response": snap},
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        if chunk.get("service_tier"):
            self.tier = chunk["service_tier"]
        for c in chunk.get("choices") or ():
            if c.get("index", 0) != 0:
                continue
            delta = c.get("delta") or {}
            text = delta.get("content")
            lp = logprobs_from_chat(c.get("logprobs"), self._top) if self._want_logprobs else []
            if text:
                if self._text is None:
                    out += self._open_message()
                assert self._text is not None
                self._text.append(text)
                self._logprobs += lp
                out.append(
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": self._n(),
                        "item_id": self._msg_id,
                        "output_index": self._msg_index,
                        "content_index": 0,
                        "delta": text,
                        "logprobs": lp,
                    }
                )
            elif lp and self._text is not None:  # tokens that decoded to no text yet
                self._logprobs += lp
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                for tc in tool_calls:
                    out += self._call_delta(tc)
            reason = c.get("finish_reason")
            if reason:
                self.finish_reason = reason
        return out

    def _open_message(self) -> list[dict[str, Any]]:
        self._text, self._msg_id, self._msg_index = [], self.ids("msg"), len(self.output)
        self._logprobs = []
        item = _message_item(self._msg_id, "", status="in_progress")
        item["content"] = []
        self.output.append(item)
        return [
            {"type": "response.output_item.added", "sequence_number": self._n(), "output_index": self._msg_index,
             "item": item},
            {
                "type": "response.content_part.added",
                "sequence_number": self._n(),
                "item_id": self._msg_id,
                "output_index": self._msg_index,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            },
        ]

    def _close_message(self) -> list[dict[str, Any]]:
        if self._text is None:
            return []
        text = "".join(self._text)
        self._text = None
        item = _message_item(self._msg_id, text, logprobs=self._logprobs)
        index = self._msg_index
        self.output[index] = item
        return [
            {
                "type": "response.output_text.done",
                "sequence_number": self._n(),
                "item_id": self._msg_id,
                "output_index": index,
                "content_index": 0,
                "text": text,
                "logprobs": self._logprobs,
            },
            {
                "type": "response.content_part.done",
                "sequence_number": self._n(),
                "item_id": self._msg_id,
                "output_index": index,
                "content_index": 0,
                "part": item["content"][0],
            },
            {"type": "response.output_item.done", "sequence_number": self._n(), "output_index": index, "item": item},
        ]

    def _call_delta(self, tc: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        index = int(tc.get("index", len(self._calls)))
        fn = tc.get("function") or {}
        call = self._calls.get(index)
        if call is None:
            out += self._close_message()
            call = _Call(self.ids("fc"), tc.get("id") or self.ids("call"), fn.get("name") or "", len(self.output))
            self._calls[index] = call
            item = _call_item(call.item_id, call.call_id, call.name, "", status="in_progress")
            self.output.append(item)
            out.append({"type": "response.output_item.added", "sequence_number": self._n(),
                        "output_index": call.output_index, "item": item})
        elif fn.get("name") and not call.name:
            call.name = fn["name"]
        args = fn.get("arguments")
        if args:
            call.arguments.append(args)
            out.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "sequence_number": self._n(),
                    "item_id": call.item_id,
                    "output_index": call.output_index,
                    "delta": args,
                }
            )
        return out

    def finish(self) -> list[dict[str, Any]]:
        out = self._close_message()
        for call in self._calls.values():
            args = "".join(call.arguments)
            item = _call_item(call.item_id, call.call_id, call.name, args)
            self.output[call.output_index] = item
            out.append(
                {
                    "type": "response.function_call_arguments.done",
                    "sequence_number": self._n(),
                    "item_id": call.item_id,
                    "output_index": call.output_index,
                    "name": call.name,
                    "arguments": args,
                }
            )
            out.append({"type": "response.output_item.done", "sequence_number": self._n(),
                        "output_index": call.output_index, "item": item})
        self._calls = {}
        reason = _INCOMPLETE.get(self.finish_reason or "")
        self.final = self._snapshot(
            "incomplete" if reason else "completed", usage=usage_from_chat(self.usage), incomplete=reason
        )
        served_tier(self.final, {"service_tier": self.tier})
        out.append({"type": "response.incomplete" if reason else "response.completed",
                    "sequence_number": self._n(), "response": self.final})
        return out

    def fail(self, error: APIError) -> list[dict[str, Any]]:
        """The upstream failed after the stream began: `failure_events`, no more output. The failed
        response's output holds what was streamed (text, a call's arguments so far) as `incomplete`
        items; its usage only where the upstream reported it before failing."""
        if self._text is not None:
            self.output[self._msg_index] = _message_item(
                self._msg_id, "".join(self._text), status="incomplete", logprobs=self._logprobs)
        for call in self._calls.values():
            self.output[call.output_index] = _call_item(
                call.item_id, call.call_id, call.name, "".join(call.arguments), status="incomplete")
        self.final = self._snapshot(
            "failed", usage=usage_from_chat(self.usage) if self.usage else None, error=response_error(error)
        )
        events = failure_events(error, self.seq, self.final)
        self.seq += len(events)
        return events
