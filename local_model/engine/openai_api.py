"""OpenAI request parsing and response shapes for the local engine (shared by the HTTP server and the
gateway's in-process backend, so both speak byte-for-byte the same dialect).

`parse_chat` / `parse_completion` turn a request body into prompt token ids + `SamplingParams` (raising
`InvalidRequest` with the offending parameter). `complete` runs a request to the end and returns the
``chat.completion`` / ``text_completion`` body; `stream` yields the chunk dicts of a streamed answer,
ending with a usage chunk when asked. Extensions accepted beyond OpenAI's fields (vLLM's names):
``top_k``, ``stop_token_ids``, ``ignore_eos``, ``include_stop_str_in_output``; every choice also carries
vLLM's ``stop_reason`` (the matched stop string, or the stop token id; null for EOS and length), in the
response and on a stream's finishing chunk. ``presence_penalty``, ``frequency_penalty`` and
``logit_bias`` apply as OpenAI defines them (see `sampler.adjust_logits`); the ``developer`` role is the
``system`` role for a chat template that does not name it.

Legacy completions with ``echo`` and ``logprobs: N`` return logprobs for the echoed prompt's tokens too
(the first one's null), as OpenAI and vLLM do: what lm-evaluation-harness scores loglikelihoods with.
Streamed, the echoed prompt and its logprobs come in each choice's first chunk. With ``echo``,
``max_tokens`` may be 0: the prompt is scored and nothing is generated.

Unsupported here (the model has no tool or JSON-mode training, and makes text only): ``tools``/``tool_choice``
other than "none" (and the legacy ``functions``), ``response_format`` other than text, ``modalities``
other than text and ``audio``, ``web_search_options``, ``suffix``, ``best_of > n``: each a 400 naming it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from .engine import Engine, RequestStream
from .errors import InvalidRequest, PromptTooLong
from .sampler import SamplingParams, TokenLogprob
from .sequence import Delta, TokenizerLike, Usage

Kind = Literal["chat", "completion"]


def prompt_field(kind: Kind | str) -> str:
    """The request field that holds the prompt of a ``kind`` call: what an error about it names."""
    return "messages" if kind == "chat" else "prompt"

# Used when a checkpoint's tokenizer has no chat template: plain role-tagged turns.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# OpenAI's bound on logit_bias entries (the gateway's schema bounds it the same way), and its keys' form.
MAX_LOGIT_BIAS = 300
_TOKEN_ID = re.compile(r"-?[0-9]+")


class BadParam(InvalidRequest):
    """A request field the parser refuses (``param`` names it)."""


@dataclass
class ParsedRequest:
    kind: Kind
    model: str
    prompts: list[list[int]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo_texts: list[str] | None = None  # completions with echo=true: prompt text to prepend


# ============================================================================ parsing


def _num(
    body: dict[str, Any],
    name: str,
    kind: type,
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadParam(f"'{name}' must be an integer", name)
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise BadParam(f"'{name}' must be a number", name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f"at least {lo}" if lo is not None else f"at most {hi}"
        )
        raise BadParam(f"'{name}' must be {bounds}, got {value}", name)
    return kind(value)


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise BadParam("'stop' must be a non-empty string or a list of up to 4 non-empty strings", "stop")
    return stop


def _logit_bias(body: dict[str, Any]) -> dict[int, float]:
    """``logit_bias`` as token id -> bias: JSON object keys are token ids written as decimal strings, values
    numbers in [-100, 100]. Ids outside the model's vocabulary are refused by the engine, which knows it."""
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_LOGIT_BIAS:
        raise BadParam(
            f"'logit_bias' must be an object of at most {MAX_LOGIT_BIAS} token ids (as strings) to numbers",
            "logit_bias",
        )
    out: dict[int, float] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _TOKEN_ID.fullmatch(key):
            raise BadParam(f"'logit_bias' keys must be token ids, got {key!r}", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
            raise BadParam(f"'logit_bias' values must be numbers between -100 and 100, got {value!r}", "logit_bias")
        out[int(key)] = float(value)
    return out


def _common_params(
    body: dict[str, Any], prompt_len: int, max_model_len: int, max_tokens_key: str, least_tokens: int = 1
) -> SamplingParams:
    """The sampling fields; an output limit below ``least_tokens`` is refused (0 is allowed for legacy
    completions with echo: the prompt is scored, nothing generated)."""
    room = max(1, max_model_len - prompt_len)
    asked = _num(body, max_tokens_key, int, None, least_tokens)
    if asked is None:
        asked = _num(body, "max_tokens", int, None, least_tokens)
    if asked is not None and prompt_len < max_model_len and prompt_len + asked > max_model_len:
        # an explicit output limit past the context is refused (as OpenAI and vLLM do), not cut short
        raise PromptTooLong(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + asked} tokens ({prompt_len} in the prompt, {asked} in the completion). Please "
            "reduce the length of the prompt or of the completion."
        )
    max_tokens = room if asked is None else asked
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(i, int) for i in stop_ids):
        raise BadParam("'stop_token_ids' must be a list of integers", "stop_token_ids")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadParam("'seed' must be an integer", "seed")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", float, 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", float, 1.0, 0.0, 1.0) or 1e-9,
        top_k=max(0, _num(body, "top_k", int, 0, -1)),
        seed=seed,
        n=_num(body, "n", int, 1, 1, 128),
        stop=_stop(body),
        stop_token_ids=list(stop_ids),
        ignore_eos=bool(body.get("ignore_eos", False)),
        include_stop_str_in_output=bool(body.get("include_stop_str_in_output", False)),
        presence_penalty=_num(body, "presence_penalty", float, 0.0, -2.0, 2.0),
        frequency_penalty=_num(body, "frequency_penalty", float, 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body),
    )


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(body.get("stream", False))
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadParam("'stream_options' must be an object", "stream_options")
    return stream, bool(opts.get("include_usage", False)) and stream


def _message_text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadParam("the local model accepts text content parts only", f"messages[{i}].content")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise BadParam("message content must be a string or a list of parts", f"messages[{i}].content")


def _developer_as_system(tokenizer: Any) -> bool:
    """Whether ``developer`` messages reach the template as ``system``: OpenAI's newer name for the system
    role, which most checkpoints' templates (and `FALLBACK_CHAT_TEMPLATE`) do not know. A template that
    names the developer role gets it as is."""
    template = getattr(tokenizer, "chat_template", None)
    return not (isinstance(template, str) and "developer" in template)


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Prompt ids from the checkpoint's chat template (or `FALLBACK_CHAT_TEMPLATE`)."""
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    text = (
        ImmutableSandboxedEnvironment()
        .from_string(FALLBACK_CHAT_TEMPLATE)
        .render(messages=messages, add_generation_prompt=True)
    )
    return tokenizer.encode(text, add_special_tokens=False)


def _refuse_what_it_cannot_give(body: dict[str, Any]) -> None:
    """Chat fields asking for output this text-only model cannot make: refused naming the field, since an
    answer without them (a text reply where audio, a function call or a web search was asked for) would
    look like success. Fields that only tune how an answer is made (``prediction``, ``reasoning_effort``)
    are not refused: the answer is the same without them."""
    if body.get("functions") and body.get("function_call", "auto") != "none":
        raise BadParam("the local model does not support function calling", "functions")
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise BadParam("the local model answers with text only: 'modalities' may only be [\"text\"]", "modalities")
    if body.get("audio") is not None:
        raise BadParam("the local model does not produce audio", "audio")
    if body.get("web_search_options") is not None:
        raise BadParam("the local model cannot search the web", "web_search_options")


def parse_chat(body: dict[str, Any], tokenizer: Any, max_model_len: int) -> ParsedRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadParam("'messages' must be a non-empty list", "messages")
    if body.get("tools") and body.get("tool_choice", "auto") != "none":
        raise BadParam("the local model does not support tools", "tools")
    _refuse_what_it_cannot_give(body)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        raise BadParam("the local model supports response_format 'text' only", "response_format")
    msgs = []
    developer_as_system = _developer_as_system(tokenizer)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadParam("each message needs a 'role'", f"messages[{i}]")
        role = "system" if m["role"] == "developer" and developer_as_system else m["role"]
        msgs.append({"role": role, "content": _message_text(m.get("content"), i)})
    try:
        prompt = render_chat(tokenizer, msgs)
    except Exception as exc:  # template errors (e.g. raise_exception for unsupported roles)
        raise BadParam(f"chat template failed: {exc}", "messages") from exc
    params = _common_params(body, len(prompt), max_model_len, "max_completion_tokens")
    if body.get("logprobs"):
        params.logprobs = True
        params.top_logprobs = _num(body, "top_logprobs", int, 0, 0, 20)
    elif body.get("top_logprobs") is not None:
        raise BadParam("top_logprobs requires logprobs=true", "top_logprobs")
    stream, include_usage = _stream_flags(body)
    return ParsedRequest("chat", str(body.get("model", "")), [prompt], params, stream, include_usage)


def parse_completion(body: dict[str, Any], tokenizer: Any, max_model_len: int) -> ParsedRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        raw: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        raw = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        raw = prompt
    else:
        raise BadParam("'prompt' must be a string, a list of strings, or token ids", "prompt")
    if body.get("suffix"):
        raise BadParam("the local model does not support 'suffix'", "suffix")
    prompts: list[list[int]] = []
    for p in raw:
        if isinstance(p, str):
            prompts.append(tokenizer.encode(p))
        elif all(isinstance(t, int) for t in p):
            prompts.append(list(p))
        else:
            raise BadParam("'prompt' token lists must contain integers", "prompt")
    echoed = bool(body.get("echo"))
    params = _common_params(
        body, max(len(p) for p in prompts), max_model_len, "max_tokens", least_tokens=0 if echoed else 1
    )
    best_of = body.get("best_of")
    if best_of is not None and best_of != params.n:
        raise BadParam("the local model does not support best_of != n", "best_of")
    lp = body.get("logprobs")
    if lp is not None:
        params.logprobs = True
        params.top_logprobs = _num(body, "logprobs", int, 0, 0, 5)
        if echoed:  # the echoed prompt's tokens get logprobs too (OpenAI, vLLM)
            params.prompt_logprobs = params.top_logprobs
    stream, include_usage = _stream_flags(body)
    echo = None
    if echoed:
        echo = [p if isinstance(p, str) else tokenizer.decode(p) for p in raw]
    return ParsedRequest(
        "completion", str(body.get("model", "")), prompts, params, stream, include_usage, echo
    )


def parse(kind: Kind, body: dict[str, Any], tokenizer: Any, max_model_len: int) -> ParsedRequest:
    if not isinstance(body, dict):
        raise BadParam("the request body must be a JSON object")
    return (parse_chat if kind == "chat" else parse_completion)(body, tokenizer, max_model_len)


# ============================================================================ response shapes


def usage_dict(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _sum_usage(usages: list[Usage]) -> Usage:
    return Usage(
        sum(u.prompt_tokens for u in usages),
        sum(u.completion_tokens for u in usages),
        sum(u.cached_tokens for u in usages),
    )


def _token_str(tokenizer: TokenizerLike | None, token_id: int) -> str:
    if tokenizer is None:
        return ""
    return tokenizer.decode([token_id], skip_special_tokens=False)


def chat_logprobs(tokenizer: TokenizerLike | None, lps: list[TokenLogprob]) -> dict[str, Any]:
    def entry(tid: int, lp: float) -> dict[str, Any]:
        s = _token_str(tokenizer, tid)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, v) for i, v in t.top]} for t in lps
        ],
        "refusal": None,
    }


def completion_logprobs(
    tokenizer: TokenizerLike | None,
    lps: list[TokenLogprob],
    offset: int,
    prompt: tuple[list[int], list[TokenLogprob | None]] | None = None,
) -> dict[str, Any]:
    """The legacy ``logprobs`` object of generated tokens (``lps``, text offsets from ``offset``), after
    the echoed prompt's when ``prompt`` (its token ids and `Delta.prompt_logprobs`) is given: those offsets
    start at 0, and the first prompt token's logprob and top_logprobs are null (nothing precedes it).

    Each top_logprobs dict holds the token itself, then its top N (OpenAI: "the API will always return the
    logprob of the sampled token, so there may be up to logprobs+1 elements"; vLLM orders them so)."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    if prompt is not None:
        _add_logprobs(out, tokenizer, list(zip(prompt[0], prompt[1], strict=True)), 0)
    _add_logprobs(out, tokenizer, [(t.token_id, t) for t in lps], offset)
    return out


def _add_logprobs(
    out: dict[str, list[Any]],
    tokenizer: TokenizerLike | None,
    entries: list[tuple[int, TokenLogprob | None]],
    offset: int,
) -> None:
    """Append (token id, its logprob or None) entries to a legacy ``logprobs`` object, text offsets
    counted from ``offset``."""
    for tid, lp in entries:
        text = _token_str(tokenizer, tid)
        out["tokens"].append(text)
        out["token_logprobs"].append(None if lp is None else lp.logprob)
        out["top_logprobs"].append(None if lp is None else _top_dict(tokenizer, text, lp))
        out["text_offset"].append(offset)
        offset += len(text)


def _top_dict(tokenizer: TokenizerLike | None, text: str, lp: TokenLogprob) -> dict[str, float]:
    top = {text: lp.logprob}
    for tid, value in lp.top:
        top.setdefault(_token_str(tokenizer, tid), value)
    return top


def _echoed(
    req: ParsedRequest, prompt_index: int, prompt_logprobs: list[TokenLogprob | None] | None
) -> tuple[list[int], list[TokenLogprob | None]] | None:
    """The echoed prompt's (token ids, logprobs) for `completion_logprobs`; None without echo or prompt
    logprobs."""
    if not req.echo_texts or prompt_logprobs is None:
        return None
    return req.prompts[prompt_index], prompt_logprobs


def new_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


# ============================================================================ running requests


def submit_all(engine: Engine, req: ParsedRequest, request_id: str) -> list[RequestStream]:
    """Submit every prompt of the request (all or none: a refusal cancels the ones already queued)."""
    streams: list[RequestStream] = []
    try:
        for i, prompt in enumerate(req.prompts):
            rid = request_id if len(req.prompts) == 1 else f"{request_id}-{i}"
            streams.append(engine.submit(prompt, req.params, rid))
    except BaseException:
        for s in streams:
            s.cancel()
        raise
    return streams


async def merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Delta]]:
    """(prompt index, delta) from several streams as they arrive; cancels them all if abandoned."""
    try:
        if len(streams) == 1:
            async for d in streams[0]:
                yield 0, d
            return
        q: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, s: RequestStream) -> None:
            try:
                async for d in s:
                    q.put_nowait((i, d))
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                q.put_nowait((i, exc))
            finally:
                q.put_nowait((i, None))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
        try:
            remaining = len(streams)
            while remaining:
                i, item = await q.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
    finally:
        for s in streams:
            s.cancel()


async def complete(
    engine: Engine,
    req: ParsedRequest,
    model: str,
    request_id: str | None = None,
    streams: list[RequestStream] | None = None,
) -> dict[str, Any]:
    """Run to the end; the OpenAI response body."""
    rid = request_id or new_id(req.kind)
    streams = streams if streams is not None else submit_all(engine, req, rid)
    n = req.params.n
    texts = [""] * (n * len(streams))
    finish: list[str | None] = [None] * len(texts)
    stop_reason: list[str | int | None] = [None] * len(texts)
    lps: list[list[TokenLogprob]] = [[] for _ in texts]
    prompt_lps: list[list[TokenLogprob | None] | None] = [None] * len(texts)
    async for pi, d in merged(streams):
        idx = pi * n + d.index
        texts[idx] += d.text
        if d.logprobs:
            lps[idx].extend(d.logprobs)
        if d.prompt_logprobs is not None:
            prompt_lps[idx] = d.prompt_logprobs
        if d.finish_reason:
            finish[idx] = d.finish_reason
            stop_reason[idx] = d.stop_reason
    usage = _sum_usage([s.usage for s in streams if s.usage is not None])
    tok = engine.tokenizer
    choices: list[dict[str, Any]] = []
    for idx, text in enumerate(texts):
        logprobs = None
        if req.kind == "chat":
            if req.params.logprobs:
                logprobs = chat_logprobs(tok, lps[idx])
            choices.append(
                {
                    "index": idx,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": finish[idx],
                    "stop_reason": stop_reason[idx],
                }
            )
        else:
            prefix = req.echo_texts[idx // n] if req.echo_texts else ""
            if req.params.logprobs:
                logprobs = completion_logprobs(tok, lps[idx], len(prefix), _echoed(req, idx // n, prompt_lps[idx]))
            choices.append(
                {
                    "index": idx,
                    "text": prefix + text,
                    "logprobs": logprobs,
                    "finish_reason": finish[idx],
                    "stop_reason": stop_reason[idx],
                }
            )
    return {
        "id": rid,
        "object": "chat.completion" if req.kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_dict(usage),
    }


async def stream(
    engine: Engine,
    req: ParsedRequest,
    model: str,
    request_id: str | None = None,
    streams: list[RequestStream] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Chunk dicts of a streamed answer (``chat.completion.chunk`` / ``text_completion``).

    Pass ``streams`` (from `submit_all`) to surface submission errors before the first chunk."""
    rid = request_id or new_id(req.kind)
    streams = streams if streams is not None else submit_all(engine, req, rid)
    created = int(time.time())
    n = req.params.n
    chat = req.kind == "chat"
    obj = "chat.completion.chunk" if chat else "text_completion"
    tok = engine.tokenizer
    offsets = [len(req.echo_texts[i // n]) if req.echo_texts else 0 for i in range(n * len(streams))]
    extra = {"usage": None} if req.include_usage else {}

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [choice],
            **extra,
        }

    if chat:
        for idx in range(n * len(streams)):
            yield chunk(
                {
                    "index": idx,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
    elif req.echo_texts and req.params.prompt_logprobs is None:
        for idx in range(n * len(streams)):
            yield chunk(
                {"index": idx, "text": req.echo_texts[idx // n], "logprobs": None, "finish_reason": None}
            )
    # With prompt logprobs, a choice's echoed prompt waits for them: it is sent with the choice's first
    # delta, in one chunk (as vLLM streams it).
    echo_pending = [req.params.prompt_logprobs is not None and bool(req.echo_texts)] * (n * len(streams))
    async for pi, d in merged(streams):
        idx = pi * n + d.index
        head, prompt = "", None  # the echoed prompt's text and (ids, logprobs), on its first chunk
        if echo_pending[idx] and req.echo_texts:
            echo_pending[idx] = False
            head, prompt = req.echo_texts[pi], _echoed(req, pi, d.prompt_logprobs)
        if head or d.text or (req.params.logprobs and d.logprobs):
            if chat:
                lp = chat_logprobs(tok, d.logprobs) if (req.params.logprobs and d.logprobs) else None
                yield chunk(
                    {"index": idx, "delta": {"content": d.text}, "logprobs": lp, "finish_reason": None}
                )
            else:
                lp = (
                    completion_logprobs(tok, d.logprobs or [], offsets[idx], prompt)
                    if req.params.logprobs and (d.logprobs or prompt)
                    else None
                )
                offsets[idx] += len(d.text)
                yield chunk({"index": idx, "text": head + d.text, "logprobs": lp, "finish_reason": None})
        if d.finish_reason:
            end = {"logprobs": None, "finish_reason": d.finish_reason, "stop_reason": d.stop_reason}
            if chat:
                yield chunk({"index": idx, "delta": {}, **end})
            else:
                yield chunk({"index": idx, "text": "", **end})
    if req.include_usage:
        usage = _sum_usage([s.usage for s in streams if s.usage is not None])
        yield {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage_dict(usage),
        }
