"""Anthropic's Messages API as a wire format over chat completions.

`translate` (and `to_chat`) turns a `POST /v1/messages` body into the gateway's internal chat request;
`message_from_chat` and `MessageStream` translate the answer back (whole, or as Anthropic's event
sequence: message_start, content_block_start/delta/stop, message_delta with usage, message_stop);
`caller_error` restates an error found in the chat request in terms of the Anthropic request, and
`error_body` gives Anthropic's error shape. Pure: no I/O.

Prompt caching: `cache_control` (the request's, and that of its system blocks, content blocks and tools)
marks where the upstream may cache the prompt; it never changes the answer. The translation keeps each
marker where litellm reads it in a chat request (the request; a content part, a tool call, a tool
message, a tool) and carries it to Anthropic's API, so a deployment reached through litellm caches as
asked (litellm drops the markers for providers that have none). Every other upstream (OpenAI-compatible
servers, the local engine) gets the chat request without them (`without_cache_control`): some such
servers refuse keys they do not know, and none of them caches on a marker.
"""

from __future__ import annotations

import contextlib
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
            parts.append(_cached(b, {"type": "text", "text": str(b.get("text") or "")}))
            part_blocks.append(j)
        elif kind == "image":
            parts.append(_cached(b, {"type": "image_url", "image_url": {"url": _image_url(b, bw)}}))
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
                _cached(b, {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {
                        "name": b.get("name"),
                        "arguments": orjson.dumps(b.get("input") or {}).decode(),
                    },
                })
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
                (_cached(b, {"role": "tool", "tool_call_id": b["tool_use_id"], "content": text}),
                 Origin(bw, "tool_result"))
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(
                f"Invalid value for '{bw}.type': {kind!r} is not supported here.", param=f"{bw}.type"
            )
    if parts or calls:
        m: dict[str, Any] = {"role": role, "content": _collapsed(parts) if parts else None}
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
    _refuse_anthropic_only(body)
    msgs = body["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages: at least one message is required", param="messages")
    messages: list[dict[str, Any]] = []
    origins: list[Origin] = []
    if body.get("system") is not None:
        messages.append({"role": "system", "content": _system(body["system"])})
        origins.append(Origin("system", "system"))
    for i, m in enumerate(msgs):
        for message, origin in _message(m, i):
            messages.append(message)
            origins.append(origin)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for k in ("temperature", "top_p"):
        if body.get(k) is not None:
            chat[k] = body[k]
    # top_k is no chat completions parameter, but vLLM, SGLang and the local engine take it in the chat
    # body, where the chat endpoint forwards it too: each backend passes it on as it passes any field
    # beyond OpenAI's (the direct backend as is; litellm natively to providers that have it, such as
    # Anthropic, and in `extra_body` to OpenAI-compatible ones). An upstream that does not know it
    # (OpenAI's own API) refuses the request with a 400 that names `top_k`, as it would refuse a chat
    # request carrying it, rather than the gateway sampling differently than asked without a word.
    # top_k 0 is no cut-off, the same as none (and vLLM refuses 0), so it is not sent.
    if isinstance(body.get("top_k"), int) and body["top_k"] > 0:
        chat["top_k"] = body["top_k"]
    if body.get("stop_sequences"):
        if len(body["stop_sequences"]) > 4:
            raise bad_request(
                "stop_sequences: this gateway supports at most 4 stop sequences", param="stop_sequences"
            )
        chat["stop"] = body["stop_sequences"]
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        chat["user"] = meta["user_id"]
    if (fmt := _output_format(body)) is not None:
        chat["response_format"] = fmt
    _cached(body, chat)  # the request's own marker: litellm has Anthropic put it on the last cacheable block
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise bad_request("tools: expected an array", param="tools")
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise bad_request(f"Invalid value for 'tools[{i}]': expected an object.", param=f"tools[{i}]")
            # A typed tool other than "custom" is one Anthropic defines: run on its servers (web_search,
            # code_execution…) or with a schema only its models know (bash, text_editor…). There is no
            # input_schema to give a chat upstream, whose model would then 'call' a tool nobody runs.
            kind = t.get("type")
            if kind is not None and kind != "custom":
                raise bad_request(
                    f"Invalid value for 'tools[{i}].type': only custom tools (with an input_schema) are "
                    f"supported, not {kind!r}.",
                    param=f"tools[{i}].type",
                )
        chat["tools"] = [_tool(t) for t in tools]
    _tool_choice(body.get("tool_choice"), tools or [], chat)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, origins


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    """A custom tool as a chat function; `strict` (the call's input follows the schema exactly) is chat's
    structured tool calling, the function's own `strict`."""
    fn: dict[str, Any] = {
        "name": t.get("name"),
        "description": t.get("description"),
        "parameters": t.get("input_schema") or {"type": "object"},
    }
    if t.get("strict") is not None:
        fn["strict"] = t["strict"]
    return _cached(t, {"type": "function", "function": fn})


def _cached(block: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """``out`` (the chat form of ``block``) with ``block``'s prompt-caching marker, if it has one."""
    if block.get("cache_control") is not None:
        out["cache_control"] = block["cache_control"]
    return out


def _collapsed(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Chat content for ``parts``: text parts without a caching marker as one string (what every chat
    upstream takes), anything else as the parts."""
    if all(p["type"] == "text" and "cache_control" not in p for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _system(system: Any) -> str | list[dict[str, Any]]:
    """The system prompt as chat content: a string, or its text blocks as text parts where one of them
    has a caching marker."""
    text = _text(system, "system")
    if isinstance(system, str):
        return text
    return _collapsed([_cached(b, {"type": "text", "text": str(b.get("text") or "")}) for b in system])


def without_cache_control(chat: dict[str, Any]) -> dict[str, Any]:
    """``chat`` without prompt-caching markers, each content that then holds only text parts as one
    string: the translation as every upstream but litellm's gets it (see the module's docstring).
    ``chat`` itself is returned where it has no marker."""
    if not _has_marker(chat):
        return chat
    out = {k: v for k, v in chat.items() if k != "cache_control"}
    messages = []
    for m in chat["messages"]:
        m = {k: v for k, v in m.items() if k != "cache_control"}
        if isinstance(m.get("content"), list):
            m["content"] = _collapsed([_plain(p) for p in m["content"]])
        if m.get("tool_calls"):
            m["tool_calls"] = [_plain(c) for c in m["tool_calls"]]
        messages.append(m)
    out["messages"] = messages
    if chat.get("tools"):
        out["tools"] = [_plain(t) for t in chat["tools"]]
    return out


def _has_marker(chat: dict[str, Any]) -> bool:
    def marked(items: Any) -> bool:
        return isinstance(items, list) and any(isinstance(i, dict) and "cache_control" in i for i in items)

    return ("cache_control" in chat or marked(chat["messages"]) or marked(chat.get("tools"))
            or any(marked(m.get("content")) or marked(m.get("tool_calls")) for m in chat["messages"]))


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "cache_control"}


# Request fields whose work happens inside Anthropic's API, which the chat translation cannot do: answered
# without it, the request would get an answer that silently lacks what it asked for.
# field -> (what it is, what to do instead)
_ANTHROPIC_ONLY = {
    "mcp_servers": ("MCP servers (whose tools Anthropic's API calls)",
                    "call the server's tools yourself, given to the model as custom tools"),
    "container": ("containers (the code execution state Anthropic's API keeps between requests)",
                  "send the request without one"),
    "context_management": ("context management (the context editing Anthropic's API does between turns)",
                           "keep the conversation within the model's context window yourself"),
    "speed": ("speed modes (Anthropic's fast inference)", "send the request without one, or 'standard'"),
    "inference_geo": ("choosing where Anthropic's API runs inference",
                      "send the request without one, or 'global'"),
}
# The value of a field above that asks for what every deployment does anyway (beyond null and []): sent
# by clients that spell out the default, it is answered.
_ASKS_NOTHING = {"speed": "standard", "inference_geo": "global"}


def _refuse_anthropic_only(body: dict[str, Any]) -> None:
    for field, (what, instead) in _ANTHROPIC_ONLY.items():
        value = body.get(field)
        if value is not None and value != [] and value != _ASKS_NOTHING.get(field):
            raise bad_request(
                f"{field}: this gateway does not support {what}: its upstreams are reached through chat "
                f"completions, which have no such thing; {instead}",
                param=field,
                code="unsupported_parameter",
            )


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Anthropic's structured output (`output_config.format`, or the beta's top-level `output_format`;
    what the SDK's `messages.parse(output_format=Model)` sends) as chat's `response_format`: a JSON schema
    the answer's text follows, strictly, as Anthropic guarantees it. `output_config.effort` has no chat
    counterpart every upstream takes, and is not sent (as `thinking` is not)."""
    config, where = body.get("output_config"), "output_config.format"
    fmt = None
    if config is not None:
        if not isinstance(config, dict):
            raise bad_request("Invalid value for 'output_config': expected an object.", param="output_config")
        fmt = config.get("format")
    if fmt is None and body.get("output_format") is not None:
        fmt, where = body["output_format"], "output_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad_request(f"Invalid value for '{where}': expected an object.", param=where)
    if fmt.get("type") != "json_schema":
        raise bad_request(f"Invalid value for '{where}.type': expected 'json_schema'.", param=f"{where}.type")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise bad_request(
            f"Missing required parameter: '{where}.schema' (a JSON schema object)."
            if schema is None
            else f"Invalid value for '{where}.schema': expected a JSON schema object.",
            param=f"{where}.schema",
            code="missing_required_parameter" if schema is None else None,
        )
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


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
    "response_format": "output_config.format",
}
_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\](.*)")
_INDEXED = re.compile(r"\[(\d+)\](.*)")
_TOOL_FIELDS = {".function.name": ".name", ".function.description": ".description",
                ".function.parameters": ".input_schema", ".function.strict": ".strict"}
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
    """Chat usage in Anthropic's terms: the prompt tokens read from the upstream's cache
    (`prompt_tokens_details.cached_tokens`) are `cache_read_input_tokens`, the rest `input_tokens`
    (Anthropic's total input is their sum, where chat's `prompt_tokens` counts both)."""
    u = usage or {}
    details = u.get("prompt_tokens_details")
    cached = int((details.get("cached_tokens") if isinstance(details, dict) else 0) or 0)
    return {
        "input_tokens": max(0, int(u.get("prompt_tokens") or 0) - cached),
        "output_tokens": int(u.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
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


@dataclass(slots=True, eq=False)
class _ToolCall:
    """One tool call of the chat stream: its block's id and name, and its argument fragments (`sent`
    of them have gone out as `input_json_delta`s)."""

    id: str
    name: str
    args: list[str]
    sent: int = 0
    closed: bool = False
    complete: bool = False

    def done(self) -> bool:
        """Whether the arguments received form a whole JSON object: nothing valid can follow one, so the
        call's block may be stopped. Parsed only when the last fragment ends in ``}`` (cheap otherwise)."""
        if not self.complete:
            last = next((a for a in reversed(self.args) if a.strip()), "")
            if last.rstrip().endswith("}"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.complete = isinstance(orjson.loads("".join(self.args)), dict)
        return self.complete


_TEXT: Literal["text"] = "text"


class MessageStream:
    """Chat completion chunks (choice 0) in, Anthropic stream events out.

    Anthropic's stream is a sequence of content blocks: each started once, given deltas while it is the
    open block, and stopped, one at a time. A chat stream may interleave the argument fragments of its
    tool calls (call 0, call 1, call 0 again…), so a tool call's block is stopped only once the call is
    known to be complete: its arguments form a whole JSON object (nothing valid can follow one), or the
    answer has ended. While a tool call's block is open and incomplete, fragments of anything else (other
    calls, text) are held, in order of arrival; when the open call completes they go out, each held call
    as its block with all its arguments so far (a call still incomplete then stays open and streams on).
    Every tool call thus gets exactly one `tool_use` block whose `input_json_delta`s concatenate to its
    whole arguments. Fragments for a call whose block was stopped because its arguments were complete can
    only be whitespace in a valid stream, and are dropped. Consecutive text shares one text block; text
    after a tool block opens a new one.

    `message_start` goes out with the first chunk (`start`, see there for its usage). `finish()` stops the
    open block, sends what is still held, then `message_delta` (stop reason and stop sequence as `stop_of`
    finds them, and the usage) and `message_stop`.
    """

    def __init__(
        self, model: str, mid: str, stop_sequences: Sequence[str] = (), prompt_tokens: int | None = None
    ) -> None:
        self.model, self.mid = model, mid
        self.stop_sequences = stop_sequences
        self.prompt_tokens = prompt_tokens  # the gateway's estimate of the prompt's tokens, if any
        self._started = False
        self._index = -1
        self._open: _ToolCall | Literal["text"] | None = None
        self._calls: dict[Any, _ToolCall] = {}  # by the chat tool call's index
        self._held: list[_ToolCall | Literal["text"]] = []  # waiting for the open call to complete
        self._held_text: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.matched: Any = None  # the finishing chunk's `stop_reason` (`stop_of`)

    def start(self, first: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """`message_start`, once (later calls give nothing; `feed` calls it with the first chunk).

        Its `usage.input_tokens` is the prompt's size as far as it is known before the answer: the
        upstream's own count when the first chunk carries usage (vLLM's continuous usage stats), else
        the gateway's estimate of the prompt (``prompt_tokens``: about 4 characters a token, the number
        `/v1/messages/count_tokens` answers and the gateway routes and budgets with), else 0. The estimate
        is reported rather than 0 because clients read this field to track the context they use, and 0
        says the prompt is empty; it is no more than an estimate, and `message_delta` replaces it with
        the upstream's count once the upstream reports one (the SDKs take the delta's counts as final).
        """
        if self._started:
            return []
        self._started = True
        reported = first.get("usage") if first else None
        if isinstance(reported, dict) and reported.get("prompt_tokens"):
            usage = _usage(reported)
        else:
            usage = _usage({"prompt_tokens": self.prompt_tokens or 0})
        msg = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [{"type": "message_start", "message": msg}]

    # ---- content blocks ----

    def _begin(self, block: dict[str, Any]) -> dict[str, Any]:
        self._index += 1
        return {"type": "content_block_start", "index": self._index, "content_block": block}

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        if isinstance(self._open, _ToolCall):
            self._open.closed = True
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _open_item(self, item: _ToolCall | Literal["text"]) -> list[dict[str, Any]]:
        """Start ``item``'s block (the open one must be closed) with everything it holds."""
        self._open = item
        if item == _TEXT:
            text, self._held_text = "".join(self._held_text), []
            return [self._begin({"type": "text", "text": ""}), self._delta({"type": "text_delta", "text": text})]
        assert isinstance(item, _ToolCall)
        out = [self._begin({"type": "tool_use", "id": item.id, "name": item.name, "input": {}})]
        pending = "".join(item.args[item.sent:])
        item.sent = len(item.args)
        if pending:
            out.append(self._delta({"type": "input_json_delta", "partial_json": pending}))
        return out

    def _busy(self) -> bool:
        """Whether the open block is a tool call that may still get arguments (and so must stay open)."""
        return isinstance(self._open, _ToolCall) and not self._open.done()

    def _release(self) -> list[dict[str, Any]]:
        """Unless the open block must stay open, stop it and open the held items in order, each stopped
        in turn until one must stay open (an incomplete call) or none is left (the last stays open)."""
        out: list[dict[str, Any]] = []
        while self._held and not self._busy():
            out += self._close()
            out += self._open_item(self._held.pop(0))
        return out

    def _text(self, text: str) -> list[dict[str, Any]]:
        if self._open == _TEXT:
            return [self._delta({"type": "text_delta", "text": text})]
        self._held_text.append(text)
        if _TEXT not in self._held:
            self._held.append(_TEXT)
        return self._release()

    def _tool(self, tc: dict[str, Any]) -> list[dict[str, Any]]:
        fn = tc.get("function") or {}
        key = tc.get("index", 0)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _ToolCall(tc.get("id") or f"toolu_{uuid.uuid4().hex}", fn.get("name") or "", [])
        if call.closed:
            return []  # after its complete arguments (see the class docstring)
        if fn.get("arguments"):
            call.args.append(fn["arguments"])
        if self._open is call:
            out = []
            if call.sent < len(call.args):
                out.append(self._delta({"type": "input_json_delta", "partial_json": call.args[-1]}))
                call.sent = len(call.args)
            return out + (self._release() if self._held else [])
        if call not in self._held:
            self._held.append(call)
        return self._release()

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            if c.get("index", 0) != 0:
                continue
            delta = c.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for tc in delta.get("tool_calls") or ():
                out += self._tool(tc)
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]
                self.matched = c.get("stop_reason")
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The answer is over: every block is complete. `message_delta`'s usage has the upstream's counts
        where it reported them (`input_tokens` and `cache_read_input_tokens` replace message_start's);
        without them only `output_tokens` (0) is sent, and message_start's input count stands."""
        out = self.start()
        while True:
            out += self._close()
            if not self._held:
                break
            out += self._open_item(self._held.pop(0))
        stop_reason, stop_sequence = stop_of(self.finish_reason, self.matched, self.stop_sequences)
        usage = _usage(self.usage)
        final: dict[str, Any] = {"output_tokens": usage["output_tokens"]}
        if self.usage is not None:
            final = {"input_tokens": usage["input_tokens"], "cache_read_input_tokens": usage["cache_read_input_tokens"],
                     **final}
        return [
            *out,
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": final,
            },
            {"type": "message_stop"},
        ]

    def fail(self, err: APIError) -> list[dict[str, Any]]:
        return [*self.start(), error_body(err)]
