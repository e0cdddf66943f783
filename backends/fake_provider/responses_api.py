"""OpenAI's Responses endpoint: ``POST /v1/responses`` (an upstream that speaks it natively).

Stream / non-stream; `input` as a string or items (the reply follows the last user text), function
tools → a `function_call` item, `text.format` json_schema → valid JSON text, `max_output_tokens` →
status "incomplete". Streams send the event sequence (response.created … response.completed, each
with `sequence_number`) and end without `[DONE]`, as OpenAI's do. The request body is recorded like
every other, so tests see what the gateway forwarded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from backends.fake_provider.config import count_tokens, tokenize
from backends.fake_provider.core import ProviderCore, endpoint
from backends.fake_provider.faults import Fault
from backends.fake_provider.replies import Choice, last_user_text, plan_choices, text_of
from backends.fake_provider.wire import named_event


class ResponsesHandlers(ProviderCore):
    """The Responses-protocol handler of `FakeProvider`."""

    @endpoint("openai")
    async def _responses(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, fault: Fault
    ) -> web.StreamResponse:
        inp = body.get("input")
        items = [{"role": "user", "content": inp}] if isinstance(inp, str) else inp
        prompt_tokens = _prompt_tokens(body, items)
        max_tokens = body.get("max_output_tokens")
        self._check_context(model, prompt_tokens, max_tokens, fault, "openai")
        tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
        last = items[-1] if isinstance(items, list) and items and isinstance(items[-1], dict) else {}
        tool = None
        if tools and body.get("tool_choice") != "none" and last.get("type") != "function_call_output":
            tool = (tools[0].get("name", "tool"), tools[0].get("parameters") or {})
        fmt = (body.get("text") or {}).get("format") or {}
        plan = plan_choices(
            self.config,
            last_user_text(items),
            n=1,
            max_tokens=max_tokens,
            stop=None,
            seed=None,
            fault=fault,
            tool=tool,
            json_schema=(fmt.get("schema") or {"type": "object"}) if fmt.get("type") == "json_schema" else None,
        )[0]
        n = next(self._ids)
        rid, mid, fid = f"resp_fake{n:012d}", f"msg_fake{n:012d}", f"fc_fake{n:012d}"
        usage = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": plan.n_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + plan.n_tokens,
        }
        head = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "instructions": body.get("instructions"),
            "max_output_tokens": max_tokens,
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True),
            "tools": body.get("tools") or [],
            "text": {"format": fmt or {"type": "text"}},
        }
        final = {**head, **_outcome(plan), "output": [_item(plan, mid, fid)], "usage": usage}
        if body.get("stream"):
            self._streams += 1
            return await self._send_stream(request, _stream_events(head, final, plan, mid, fid), fault)
        return await self._send_body(request, orjson.dumps(final), fault)


def _prompt_tokens(body: Mapping[str, Any], items: Any) -> int:
    total = 3 + count_tokens(body.get("instructions") or "")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            total += 3 + count_tokens(text_of(item.get("content") or item.get("output") or item.get("arguments")))
    if body.get("tools"):
        total += count_tokens(orjson.dumps(body["tools"]).decode())
    return total


def _outcome(plan: Choice) -> dict[str, Any]:
    if plan.finish == "length":
        return {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    return {"status": "completed", "incomplete_details": None}


def _item(plan: Choice, mid: str, fid: str, status: str = "completed") -> dict[str, Any]:
    if plan.tool is not None:
        call_id, name, args = plan.tool
        return {"type": "function_call", "id": fid, "call_id": call_id, "name": name, "arguments": args,
                "status": status}
    return {"type": "message", "id": mid, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": plan.text, "annotations": []}]}


def _stream_events(
    head: dict[str, Any], final: dict[str, Any], plan: Choice, mid: str, fid: str
) -> list[bytes]:
    events: list[dict[str, Any]] = []

    def ev(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    started = {**head, "status": "in_progress", "incomplete_details": None, "output": [], "usage": None}
    ev("response.created", response=started)
    ev("response.in_progress", response=started)
    done = final["output"][0]
    if plan.tool is not None:
        ev("response.output_item.added", output_index=0, item={**done, "arguments": "", "status": "in_progress"})
        for piece in tokenize(done["arguments"]):
            ev("response.function_call_arguments.delta", item_id=fid, output_index=0, delta=piece)
        ev("response.function_call_arguments.done", item_id=fid, output_index=0, arguments=done["arguments"])
    else:
        ev("response.output_item.added", output_index=0, item={**done, "content": [], "status": "in_progress"})
        part = {"type": "output_text", "text": "", "annotations": []}
        ev("response.content_part.added", item_id=mid, output_index=0, content_index=0, part=part)
        for tok in plan.tokens:
            ev("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=tok)
        ev("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=plan.text)
        ev("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=done["content"][0])
    ev("response.output_item.done", output_index=0, item=done)
    ev("response.incomplete" if final["status"] == "incomplete" else "response.completed", response=final)
    return [named_event(e) for e in events]
