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

from backends.base import RESPONSES_END, Kind
from common.types import DeploymentConfig
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
        self.stream: wire.ResponseStream | None = None  # a translated stream
        self.model = ""
        self.passed: dict[str, Any] | None = None  # a passed-through stream: its latest response snapshot
        self.last: dict[str, Any] | None = None  # … and its last event, held back until stored
        self.settings: dict[str, Any] = {}  # the request's settings, as its response objects repeat them
        self.seq = 0

    async def prepare(self, body: dict[str, Any], key: ApiKey | None) -> dict[str, Any]:
        self.original = body
        self.key_id = key.id if key is not None else None
        validate(ResponsesRequest, body)
        prev = body.get("previous_response_id")
        if prev is not None and body.get("conversation") is not None:
            # as OpenAI: a conversation is continued by one or the other, never both
            raise bad_request(
                "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' "
                "or 'conversation'.",
                param="conversation",
                code="mutually_exclusive_parameters",
            )
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

    def native_only(self) -> APIError | None:
        """The error for a request only an upstream speaking the Responses API can answer: a `conversation`
        (OpenAI's Conversations API) or a stored `prompt` template lives at the upstream, and this gateway
        has neither to translate from; `moderation` and `context_management` (compaction) are work the
        upstream's Responses API does itself, which a chat upstream cannot. Answered without it, the request
        would lose its conversation or its prompt and get a wrong answer, or an answer nobody moderated or
        compacted as asked; passed through, it goes as sent."""
        fields = wire.native_fields(self.original)
        if not fields:
            return None
        field = fields[0]
        model = self.original.get("model")
        what, instead = {
            "conversation": ("the Conversations API (a conversation kept by the upstream)",
                             "continue a conversation with 'previous_response_id', or send its items in 'input'"),
            "prompt": ("stored prompt templates",
                       "send the prompt's text in 'instructions' and 'input'"),
            "moderation": ("moderating a response's input and output in the upstream's Responses API",
                           "moderate the input and the answer yourself, or send the request without "
                           "'moderation'"),
            "context_management": ("compacting the context in the upstream's Responses API",
                                   "keep the input within the model's context window yourself, and send the "
                                   "request without 'context_management'"),
        }[field]
        return bad_request(
            f"Unsupported parameter: '{field}'. This gateway does not support {what} on this deployment: "
            f"model `{model}` is served by translating the Responses API to chat completions, where "
            f"'{field}' has no equivalent. Use a deployment that passes the Responses API through, or "
            f"{instead}.",
            param=field,
            code="unsupported_parameter",
        )

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

    def native(self, d: DeploymentConfig, stream: bool) -> tuple[Kind, dict[str, Any]] | None:
        """A deployment whose upstream speaks the Responses API gets the request as it is."""
        if "responses" not in d.capabilities:
            return None
        return "responses", wire.passthrough_body(self.original, self.history, d.upstream_model, stream)

    async def whole(self, chat: dict[str, Any], model: str) -> bytes:
        if chat.get("object") == "response":  # passed through: already a Responses object
            response = wire.passthrough_response(wire.echo(self.original), chat, self.rid, model)
        else:
            response = wire.response_from_chat(self.original, chat, self.rid, model)
        await self._keep(response)
        return orjson.dumps(response)

    # A stream is translated from chat chunks (`ResponseStream`) or, from an upstream that speaks the
    # Responses API, passed on event by event; which one is known at its first chunk.

    def start(self, model: str, prompt_tokens: int = 0) -> bytes:
        self.model = model
        return b""

    def _translated(self) -> wire.ResponseStream:
        if self.stream is None:
            self.stream = wire.ResponseStream(self.original, self.rid, self.model)
        return self.stream

    def feed(self, chunk: dict[str, Any]) -> bytes:
        stream = self.stream
        if stream is not None:
            events = stream.feed(chunk)
            return wire.sse(events[0]) if len(events) == 1 else b"".join(map(wire.sse, events))
        if self.passed is not None:
            return self._pass(chunk)
        if "type" in chunk:  # the first event of a passed-through stream
            self.passed, self.settings = {}, wire.echo(self.original)
            return self._pass(chunk)
        stream = self._translated()  # the first chat chunk: translated from here on
        return b"".join(map(wire.sse, stream.start() + stream.feed(chunk)))

    def _pass(self, event: dict[str, Any]) -> bytes:
        """One upstream event as the client's: numbered in order (litellm's events come without
        `sequence_number`), responses re-labelled, the last event held back until the response is
        stored and logged (`finish`)."""
        event["sequence_number"] = self.seq
        self.seq += 1
        response = event.get("response")
        if isinstance(response, dict):
            self.passed = wire.passthrough_response(self.settings, response, self.rid, self.model)
            if event.get("type") in RESPONSES_END:
                self.last = event
                return b""
        return wire.sse(event)

    async def finish(self) -> bytes:
        if self.passed is not None:
            assert self.last is not None  # the backend ends a stream only after its last event
            await self._keep(self.last["response"])
            return wire.sse(self.last)
        stream = self._translated()
        events = ([] if stream.seq else stream.start()) + stream.finish()
        assert stream.final is not None
        await self._keep(stream.final)
        return b"".join(map(wire.sse, events))

    def fail(self, err: APIError) -> bytes:
        if self.passed is not None:
            error = wire.response_error(err)
            failed = {**self.passed, "status": "failed", "error": error} if self.passed else wire.response_object(
                self.settings, self.rid, self.model, status="failed", output=[], usage=None, error=error)
            events = wire.failure_events(err, self.seq, failed)
            self.seq += len(events)
            return b"".join(map(wire.sse, events))
        stream = self._translated()
        return b"".join(map(wire.sse, ([] if stream.seq else stream.start()) + stream.fail(err)))

    def error(self, err: APIError, headers: dict[str, str]) -> Response:
        return wire.caller_error(err).response(headers)


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
        if request.query_params.get("stream", "").lower() in ("true", "1"):
            # `stream=true` resumes the event stream of a response created with background=true (OpenAI
            # replays its events); every stored response here was answered in its request. The SDKs read
            # the answer as SSE, in which a JSON body holds no event: an empty stream, no error.
            raise bad_request(
                "Invalid value for 'stream': only a background response can be streamed again, and this "
                "gateway does not run background responses; retrieve the response without 'stream'.",
                param="stream",
                code="unsupported_parameter",
            )
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
