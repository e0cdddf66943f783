"""The OpenAI endpoints: chat completions, legacy completions, embeddings, models.

``POST /v1/chat/completions`` (stream / non-stream; n, max_tokens / max_completion_tokens →
finish_reason "length", stop (with ``vllm_stop_reason``, each choice's ``stop_reason`` names the stop
string that ended it, as vLLM's do), tools/tool_choice → tool_calls, response_format json_object /
json_schema → valid JSON text, logprobs/top_logprobs, seed, stream_options.include_usage),
``POST /v1/completions`` (stream / non-stream, echo, logprobs), ``POST /v1/embeddings``
(deterministic unit vectors from a hash of the input; float/base64, dimensions),
``GET /v1/models`` and ``GET /v1/models/{id}``; plus the stream event builders. Streams are
built as a list of SSE events, one content token per chunk (a legacy completion's echoed prompt comes
with its first token, as vLLM sends it), so a fault can cut them anywhere.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from backends.fake_provider.config import count_tokens, tokenize
from backends.fake_provider.core import ProviderCore, endpoint
from backends.fake_provider.errors import Reject, error_response
from backends.fake_provider.faults import Fault
from backends.fake_provider.replies import (
    Choice,
    answer_entries,
    chat_logprobs_entry,
    completion_logprobs,
    embed,
    last_user_text,
    plan_choices,
    prompt_entries,
    text_of,
)
from backends.fake_provider.wire import FINGERPRINT, JSON, SSE_DONE, sse


class OpenAIHandlers(ProviderCore):
    """The OpenAI-protocol handlers of `FakeProvider`."""

    # -- OpenAI chat ----------------------------------------------------------------------------

    @endpoint("openai")
    async def _chat(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, fault: Fault
    ) -> web.StreamResponse:
        prompt_tokens = _chat_prompt_tokens(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        self._check_context(model, prompt_tokens, max_tokens, fault, "openai")
        n = int(body.get("n") or 1)
        tools = body.get("tools")
        tool_choice = body.get("tool_choice")
        tool = None
        # Like a model: after a tool's result it answers in text, unless a call is forced.
        answered = _last_role(body.get("messages")) == "tool" and tool_choice in (None, "auto")
        if tools and tool_choice != "none" and not answered:
            tool = _pick_openai_tool(tools, tool_choice)
        rf = body.get("response_format") or {}
        json_schema = None
        if rf.get("type") == "json_schema":
            json_schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
        plans = plan_choices(
            self.config,
            last_user_text(body.get("messages")),
            n=n,
            max_tokens=max_tokens,
            stop=body.get("stop"),
            seed=body.get("seed"),
            fault=fault,
            tool=tool,
            json_schema=json_schema,
            json_mode=rf.get("type") == "json_object",
        )
        completion_tokens = sum(p.n_tokens for p in plans)
        usage = _usage(prompt_tokens, completion_tokens)
        top = int(body.get("top_logprobs") or 0)
        want_lp = bool(body.get("logprobs"))
        cid = f"chatcmpl-fake{next(self._ids):012d}"
        created = int(time.time())
        if body.get("stream"):
            self._streams += 1
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _chat_stream_events(
                cid,
                created,
                model,
                plans,
                usage if include_usage else None,
                want_lp,
                max(top, 1) if want_lp else 0,
                self.config.logprob_shift,
                self.config.vllm_stop_reason,
            )
            return await self._send_stream(request, events, fault)
        choices = []
        for i, p in enumerate(plans):
            if p.tool is not None:
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": p.tool[0],
                            "type": "function",
                            "function": {"name": p.tool[1], "arguments": p.tool[2]},
                        }
                    ],
                }
            else:
                message = {"role": "assistant", "content": p.text, "refusal": None}
            lp = None
            if want_lp and p.tool is None:
                lp = {
                    "content": [chat_logprobs_entry(t, j, max(top, 1), self.config.logprob_shift) for j, t in enumerate(p.tokens)],
                    "refusal": None,
                }
            choice = {"index": i, "message": message, "logprobs": lp, "finish_reason": p.finish}
            if self.config.vllm_stop_reason:
                choice["stop_reason"] = p.stop_hit
            choices.append(choice)
        resp = {**_envelope(cid, "chat.completion", created, model), "choices": choices, "usage": usage}
        return await self._send_body(request, orjson.dumps(resp), fault)

    # -- OpenAI completions ---------------------------------------------------------------------

    @endpoint("openai")
    async def _completions(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, fault: Fault
    ) -> web.StreamResponse:
        prompts = _completion_prompts(body.get("prompt", ""))
        prompt_tokens = sum(c for _, c, _ in prompts)
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = 16  # the legacy endpoint's documented default
        self._check_context(
            model, max(c for _, c, _ in prompts) if prompts else 0, max_tokens, fault, "openai"
        )
        n = int(body.get("n") or 1)
        echo = bool(body.get("echo"))
        lp_top = body.get("logprobs")
        cid = f"cmpl-fake{next(self._ids):012d}"
        created = int(time.time())
        all_plans: list[tuple[int, list[str], Choice]] = []
        for pi, (ptext, _, ptoks) in enumerate(prompts):
            for j, plan in enumerate(
                plan_choices(
                    self.config,
                    ptext,
                    n=n,
                    max_tokens=max_tokens,
                    stop=body.get("stop"),
                    seed=body.get("seed"),
                    fault=fault,
                )
            ):
                all_plans.append((pi * n + j, ptoks if echo else [], plan))
        completion_tokens = sum(p.n_tokens for _, _, p in all_plans)
        usage = _usage(prompt_tokens, completion_tokens)
        if body.get("stream"):
            self._streams += 1
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _completion_stream_events(
                cid, created, model, all_plans, usage if include_usage else None, lp_top
            )
            return await self._send_stream(request, events, fault)
        choices = []
        for idx, echoed, p in all_plans:
            text = "".join(echoed) + p.text
            entries = prompt_entries(echoed) + answer_entries(p.tokens)
            lp = completion_logprobs(entries, int(lp_top), 0) if lp_top is not None else None
            choices.append({"text": text, "index": idx, "logprobs": lp, "finish_reason": p.finish})
        resp = {**_envelope(cid, "text_completion", created, model), "choices": choices, "usage": usage}
        return await self._send_body(request, orjson.dumps(resp), fault)

    # -- OpenAI embeddings ----------------------------------------------------------------------

    @endpoint("openai")
    async def _embeddings(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, fault: Fault
    ) -> web.StreamResponse:
        items = _embedding_inputs(body.get("input"))
        dim = int(body.get("dimensions") or self.config.embedding_dim)
        b64 = body.get("encoding_format") == "base64"
        prompt_tokens = 0
        data = []
        window = self.config.models.get(model, self.config.default_context_window)
        for i, (key, ntok) in enumerate(items):
            if ntok > window or fault.context_length:
                self._check_context(model, ntok, None, fault, "openai")
            prompt_tokens += ntok
            vec = embed(key, dim)
            emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        resp = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return await self._send_body(request, orjson.dumps(resp), fault)

    # -- OpenAI models --------------------------------------------------------------------------

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=self._models_body, content_type=JSON)

    def _model_one(self, model: str) -> web.Response:
        if model not in self.config.models and self.config.strict_models:
            return error_response(
                "openai",
                Reject(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    code="model_not_found",
                ),
            )
        return web.Response(
            body=orjson.dumps({"id": model, "object": "model", "created": 0, "owned_by": "fake-provider"}),
            content_type=JSON,
        )


def _envelope(cid: str, obj: str, created: int, model: str) -> dict[str, Any]:
    """The fields a chat or legacy completion, body or stream chunk, opens with, in OpenAI's key order.

    A fresh dict each call: callers extend it (``choices``, ``usage``) or, for streams, reuse it as the
    base of every chunk.
    """
    return {"id": cid, "object": obj, "created": created, "model": model, "system_fingerprint": FINGERPRINT}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's completion usage block, the same for chat and legacy completions."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_prompt_tokens(body: Mapping[str, Any]) -> int:
    """OpenAI-style accounting: 3 per message + its text + 3 priming, plus the tools' JSON."""
    total = 3
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                total += 3 + count_tokens(text_of(msg.get("content")))
                if msg.get("tool_calls"):
                    total += count_tokens(orjson.dumps(msg["tool_calls"]).decode())
    if body.get("tools"):
        total += count_tokens(orjson.dumps(body["tools"]).decode())
    return total


def _last_role(messages: Any) -> str | None:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("role")
    return None


def _pick_openai_tool(tools: Any, tool_choice: Any) -> tuple[str, dict[str, Any]] | None:
    funcs = [t.get("function") or {} for t in tools if isinstance(t, dict)]
    if not funcs:
        return None
    chosen = funcs[0]
    if isinstance(tool_choice, dict):
        want = (tool_choice.get("function") or {}).get("name")
        chosen = next((f for f in funcs if f.get("name") == want), chosen)
    return chosen.get("name", "tool"), chosen.get("parameters") or {}


def _completion_prompts(prompt: Any) -> list[tuple[str, int, list[str]]]:
    """(text, token count, the tokens an echo repeats) per prompt; token-id prompts count their ids and have no
    text to answer, but echo as text (`_id_token`), one token per id."""
    if isinstance(prompt, str):
        return [_text_prompt(prompt)]
    if isinstance(prompt, list):
        if prompt and all(isinstance(x, int) for x in prompt):
            return [("", len(prompt), [_id_token(x) for x in prompt])]
        out = []
        for p in prompt:
            if isinstance(p, str):
                out.append(_text_prompt(p))
            elif isinstance(p, list):
                out.append(("", len(p), [_id_token(x) for x in p]))
        return out or [("", 0, [])]
    return [("", 0, [])]


def _text_prompt(text: str) -> tuple[str, int, list[str]]:
    toks = tokenize(text)
    return text, len(toks), toks


def _id_token(token_id: Any) -> str:
    """The fake text of a prompt's token id (what detokenizing it gives)."""
    return f" t{token_id}"


def _embedding_inputs(inp: Any) -> list[tuple[bytes, int]]:
    if isinstance(inp, str):
        return [(inp.encode(), count_tokens(inp))]
    if isinstance(inp, list):
        if inp and all(isinstance(x, int) for x in inp):
            return [(orjson.dumps(inp), len(inp))]
        out = []
        for x in inp:
            if isinstance(x, str):
                out.append((x.encode(), count_tokens(x)))
            elif isinstance(x, list):
                out.append((orjson.dumps(x), len(x)))
        if out:
            return out
    raise Reject(400, "'input' must be a string, a list of strings or a list of token lists", param="input")


def _chat_stream_events(
    cid: str,
    created: int,
    model: str,
    plans: list[Choice],
    usage: dict[str, int] | None,
    want_lp: bool,
    top: int,
    lp_shift: float = 0.0,
    stop_reason: bool = False,
) -> list[bytes]:
    """The chunks of a streamed chat completion; with ``stop_reason`` (vLLM's convention) each choice's
    last chunk names the stop string that ended it."""
    base = _envelope(cid, "chat.completion.chunk", created, model)
    if usage is not None:
        base["usage"] = None

    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None,
              **extra: Any) -> bytes:
        return sse(
            {**base, "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish, **extra}]}
        )

    out = []
    for i, p in enumerate(plans):
        if p.tool is not None:
            cid_, name, args = p.tool
            out.append(
                chunk(
                    i,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": cid_,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ],
                    },
                )
            )
            for piece in tokenize(args):
                out.append(chunk(i, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        else:
            out.append(
                chunk(
                    i,
                    {"role": "assistant", "content": "", "refusal": None},
                    lp={"content": [], "refusal": None} if want_lp else None,
                )
            )
            for j, tok in enumerate(p.tokens):
                lp = {"content": [chat_logprobs_entry(tok, j, top, lp_shift)], "refusal": None} if want_lp else None
                out.append(chunk(i, {"content": tok}, lp=lp))
        out.append(chunk(i, {}, p.finish, **({"stop_reason": p.stop_hit} if stop_reason else {})))
    if usage is not None:
        out.append(sse({**base, "choices": [], "usage": usage}))
    out.append(SSE_DONE)
    return out


def _completion_stream_events(
    cid: str,
    created: int,
    model: str,
    plans: list[tuple[int, list[str], Choice]],
    usage: dict[str, int] | None,
    lp_top: Any,
) -> list[bytes]:
    """The chunks of a streamed legacy completion, as vLLM sends them: one token per chunk, the echoed prompt
    (``plans``' token lists, empty without echo) with the first generated token; logprobs' ``text_offset``
    count in the choice's whole text."""
    base = _envelope(cid, "text_completion", created, model)
    out = []
    for idx, echoed, p in plans:
        entries = prompt_entries(echoed) + answer_entries(p.tokens)
        head = len(echoed) + (1 if p.tokens else 0)
        groups = [entries[:head], *([e] for e in entries[head:])]
        pos = 0
        for group in groups:
            if not group:
                continue
            text = "".join(t for t, _ in group)
            lp = completion_logprobs(group, int(lp_top), pos) if lp_top is not None else None
            pos += len(text)
            out.append(
                sse({**base, "choices": [{"text": text, "index": idx, "logprobs": lp, "finish_reason": None}]})
            )
        out.append(
            sse(
                {**base, "choices": [{"text": "", "index": idx, "logprobs": None, "finish_reason": p.finish}]}
            )
        )
    if usage is not None:
        out.append(sse({**base, "choices": [], "usage": usage}))
    out.append(SSE_DONE)
    return out
