"""The Anthropic endpoint: ``POST /v1/messages`` and its stream events.

Stream / non-stream, with the exact event sequence message_start, content_block_start, ping,
content_block_delta…, content_block_stop, message_delta (with usage), message_stop;
tools → tool_use blocks; stop_sequences.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from backends.fake_provider.config import count_tokens, tokenize
from backends.fake_provider.core import ProviderCore, endpoint
from backends.fake_provider.errors import Reject
from backends.fake_provider.faults import Fault
from backends.fake_provider.replies import Choice, last_user_text, plan_choices, text_of
from backends.fake_provider.wire import anthropic_event


class AnthropicHandlers(ProviderCore):
    """The Anthropic-protocol handler of `FakeProvider`."""

    # -- Anthropic messages ---------------------------------------------------------------------

    @endpoint("anthropic")
    async def _messages(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, fault: Fault
    ) -> web.StreamResponse:
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise Reject(400, "max_tokens: Field required")
        prompt_tokens = _anthropic_prompt_tokens(body)
        self._check_context(model, prompt_tokens, None, fault, "anthropic")
        tools = body.get("tools")
        tc = body.get("tool_choice") or {}
        tool = None
        if tools and tc.get("type") != "none":
            chosen = (
                next((t for t in tools if t.get("name") == tc.get("name")), tools[0])
                if tc.get("type") == "tool"
                else tools[0]
            )
            tool = (chosen.get("name", "tool"), chosen.get("input_schema") or {})
        plan = plan_choices(
            self.config,
            last_user_text(body.get("messages")),
            n=1,
            max_tokens=max_tokens,
            stop=body.get("stop_sequences"),
            seed=None,
            fault=fault,
            tool=tool,
            id_prefix="toolu_",
        )[0]
        stop_reason = {
            "stop": "stop_sequence" if plan.stop_hit else "end_turn",
            "length": "max_tokens",
            "tool_calls": "tool_use",
        }[plan.finish]
        mid = f"msg_fake{next(self._ids):012d}"
        usage = {
            "input_tokens": prompt_tokens,
            "output_tokens": plan.n_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if body.get("stream"):
            self._streams += 1
            events = _anthropic_stream_events(mid, model, plan, stop_reason, usage)
            return await self._send_stream(request, events, fault, "anthropic")
        if plan.tool is not None:
            content = [
                {
                    "type": "tool_use",
                    "id": plan.tool[0],
                    "name": plan.tool[1],
                    "input": orjson.loads(plan.tool[2]),
                }
            ]
        else:
            content = [{"type": "text", "text": plan.text}]
        resp = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": plan.stop_hit,
            "usage": usage,
        }
        return await self._send_body(request, orjson.dumps(resp), fault)


def _anthropic_prompt_tokens(body: Mapping[str, Any]) -> int:
    total = count_tokens(text_of(body.get("system")))
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                total += 3 + count_tokens(text_of(msg.get("content")))
    if body.get("tools"):
        total += count_tokens(orjson.dumps(body["tools"]).decode())
    return max(total, 1)


def _anthropic_stream_events(
    mid: str, model: str, plan: Choice, stop_reason: str, usage: dict[str, int]
) -> list[bytes]:
    start_usage = {**usage, "output_tokens": 1}
    out = [
        anthropic_event(
            {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            }
        )
    ]
    if plan.tool is not None:
        tid, name, args = plan.tool
        out.append(
            anthropic_event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}},
                }
            )
        )
        out.append(anthropic_event({"type": "ping"}))
        for piece in tokenize(args):
            out.append(
                anthropic_event(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    }
                )
            )
    else:
        out.append(
            anthropic_event(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            )
        )
        out.append(anthropic_event({"type": "ping"}))
        for tok in plan.tokens:
            out.append(
                anthropic_event(
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tok}}
                )
            )
    out.append(anthropic_event({"type": "content_block_stop", "index": 0}))
    out.append(
        anthropic_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": plan.stop_hit},
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        )
    )
    out.append(anthropic_event({"type": "message_stop"}))
    return out
