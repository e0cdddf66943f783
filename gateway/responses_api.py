"""OpenAI's Responses API: `POST /v1/responses` through the chat pipeline, and the stored responses
(`GET`/`DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`).

`ResponsesWire` adapts one request: it loads the conversation of `previous_response_id`, translates
(gateway/wire/responses.py), and stores the finished response (unless `store: false`) before the
client sees it complete, so the next turn can continue from it in any process.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.edge import authenticate, validate
from gateway.errors import APIError, bad_request
from gateway.keys import ApiKey
from gateway.schemas import ResponsesRequest
from gateway.wire import responses as wire
from requestlog.stored_responses import ResponseStore

_JSON = "application/json"


def _items_with_ids(inp: Any) -> list[dict[str, Any]]:
    """This turn's input as Responses items with ids (what GET …/input_items lists)."""
    if isinstance(inp, str):
        inp = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": inp}]}]
    out = []
    for item in inp if isinstance(inp, list) else ():
        if not isinstance(item, dict):
            continue
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message":
            if isinstance(item.get("content"), str):
                kind = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": kind, "text": item["content"]}]
            item.setdefault("status", "completed")
        item.setdefault(
            "id", wire.new_id({"function_call": "fc", "function_call_output": "fco"}.get(item["type"], "msg"))
        )
        out.append(item)
    return out


def not_found(rid: str) -> APIError:
    return APIError(404, f"Response with id '{rid}' not found.", param="response_id", code="not_found")


class ResponsesWire:
    endpoint = "responses"

    def __init__(self, store: ResponseStore, rid: str) -> None:
        self.store = store
        self.rid = "resp_" + rid
        self.original: dict[str, Any] = {}
        self.key_id: str | None = None
        self.history: list[dict[str, Any]] = []
        self.stream: wire.ResponseStream | None = None

    async def prepare(self, body: dict[str, Any], key: ApiKey | None) -> dict[str, Any]:
        self.original = body
        self.key_id = key.id if key is not None else None
        validate(ResponsesRequest, body)
        prev = body.get("previous_response_id")
        if prev is not None:
            if not isinstance(prev, str):
                raise bad_request(
                    "Invalid value for 'previous_response_id': expected a string.",
                    param="previous_response_id",
                    code="invalid_value",
                )
            stored = await self.store.get(prev, self.key_id)
            if stored is None:
                raise APIError(
                    400,
                    f"Previous response with id '{prev}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            self.history = stored.history
        return wire.to_chat(body, self.history)

    async def _keep(self, response: dict[str, Any]) -> None:
        if self.original.get("store") is False or response.get("status") == "failed":
            return
        history = (
            self.history
            + wire.input_messages(self.original.get("input", []))
            + wire.output_messages(response["output"])
        )
        await self.store.put(
            self.rid,
            self.key_id,
            response["model"],
            response,
            _items_with_ids(self.original.get("input", [])),
            history,
        )

    async def whole(self, chat: dict[str, Any], model: str) -> bytes:
        response = wire.response_from_chat(self.original, chat, self.rid, model)
        await self._keep(response)
        return orjson.dumps(response)

    def start(self, model: str) -> bytes:
        self.stream = wire.ResponseStream(self.original, self.rid, model)
        return b"".join(map(wire.sse, self.stream.start()))

    def feed(self, chunk: dict[str, Any]) -> bytes:
        assert self.stream is not None
        return b"".join(map(wire.sse, self.stream.feed(chunk)))

    async def finish(self) -> bytes:
        assert self.stream is not None
        events = self.stream.finish()
        assert self.stream.final is not None
        await self._keep(self.stream.final)
        return b"".join(map(wire.sse, events))

    def fail(self, err: APIError) -> bytes:
        assert self.stream is not None
        return b"".join(map(wire.sse, self.stream.fail(err)))

    def error(self, err: APIError, headers: dict[str, str]) -> Response:
        return err.response(headers)


class StoredResponseHandlers:
    """GET/DELETE of stored responses; each key sees only the responses it created."""

    def __init__(self, store: ResponseStore, keys: Any, keys_required: bool) -> None:
        self.store, self.keys, self.keys_required = store, keys, keys_required

    async def _key_id(self, request: Request) -> str | None:
        key = await authenticate(request, self.keys, self.keys_required)
        return key.id if key is not None else None

    async def get(self, request: Request) -> Response:
        rid = request.path_params["response_id"]
        stored = await self.store.get(rid, await self._key_id(request))
        if stored is None:
            raise not_found(rid)
        return Response(orjson.dumps(stored.response), media_type=_JSON)

    async def delete(self, request: Request) -> Response:
        rid = request.path_params["response_id"]
        if not await self.store.delete(rid, await self._key_id(request)):
            raise not_found(rid)
        return Response(orjson.dumps({"id": rid, "object": "response", "deleted": True}), media_type=_JSON)

    async def input_items(self, request: Request) -> Response:
        rid = request.path_params["response_id"]
        stored = await self.store.get(rid, await self._key_id(request))
        if stored is None:
            raise not_found(rid)
        items = list(stored.input_items)
        q = request.query_params
        if q.get("order", "desc") == "desc":
            items.reverse()
        after = q.get("after")
        if after:
            ids = [i.get("id") for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise bad_request("Invalid value for 'limit': expected an integer.", param="limit") from None
        if not 1 <= limit <= 100:
            raise bad_request("Invalid value for 'limit': must be between 1 and 100.", param="limit")
        page = items[:limit]
        return Response(
            orjson.dumps(
                {
                    "object": "list",
                    "data": page,
                    "has_more": len(items) > limit,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                }
            ),
            media_type=_JSON,
        )
