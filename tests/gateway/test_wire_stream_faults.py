"""Streams of the Responses and Messages APIs when something goes wrong, through a running gateway with
the official `openai` and `anthropic` SDKs and raw SSE: an upstream that fails part-way (the events the
client gets, the error its SDK raises, the log row), an upstream timeout before the first chunk, a client
that hangs up mid-stream, and parameters the two APIs do not have (`n`). Upstream: the fake provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, ServerThread, running_gateway
from tests.support.wait import wait_until

# The codes a Responses object's `error.code` may take (the API reference's enumeration, as the openai
# SDK's `ResponseError` types it); an upstream failure is one of the first two.
RESPONSE_ERROR_CODES = {"server_error", "rate_limit_exceeded", "invalid_prompt", "vector_store_timeout",
                        "invalid_image", "invalid_image_format", "invalid_base64_image", "invalid_image_url",
                        "image_too_large", "image_too_small", "image_parse_error",
                        "image_content_policy_violation", "invalid_image_mode", "image_file_too_large",
                        "unsupported_image_media_type", "empty_image_file", "failed_to_download_image",
                        "image_file_not_found", "data_residency_mismatch", "bio_policy"}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}


def sse_events(gw: GatewayThread, path: str, body: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The request id and the (event name, data) pairs of a streamed answer (a 200)."""
    out: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with httpx.Client(base_url=gw.base_url, timeout=20) as http, http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, orjson.loads(line[6:])))
        return r.headers["x-request-id"], out


def log_rows(gw: GatewayThread, rid: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The request's log row (None until written) and its attempt rows."""

    async def read() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        await gw.services.sink.flush()
        async with gw.services.engine.connect() as conn:
            row = (await conn.execute(text("SELECT * FROM requests WHERE id = :id"), {"id": rid})).mappings().first()
            attempts = (await conn.execute(text("SELECT * FROM attempts WHERE request_id = :id ORDER BY attempt_no"),
                                           {"id": rid})).mappings().all()
        return (dict(row) if row else None), [dict(a) for a in attempts]

    return gw.call(read())


def responses_client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key="anything", max_retries=0, timeout=20)


def messages_client(gw: GatewayThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base_url, api_key="anything", max_retries=0, timeout=20)


@pytest.mark.parametrize(
    ("fields", "partial"),
    [
        ({"input": "[[fault:cut:3]] one two three four five six"}, {"type": "message", "text": "one two"}),
        ({"input": "[[fault:cut:2]] weather", "tools": [{"type": "function", "name": "get_weather",
                                                        "parameters": WEATHER}]},
         {"type": "function_call", "arguments": '{"city":'}),
    ],
    ids=["text", "tool-call"],
)
def test_a_responses_stream_that_fails_part_way_ends_with_error_then_response_failed(
    gateway: GatewayThread, fields: dict[str, Any], partial: dict[str, str]
) -> None:
    """After some output the upstream's stream breaks: the client gets an `error` event (the documented
    flat fields, and the nested `error` the live API sends and the SDK raises on), then `response.failed`
    whose error code is one the API documents and whose output holds what was streamed, as incomplete
    items; the log row says error, with the one failed attempt."""
    rid, events = sse_events(gateway, "/v1/responses", {"model": "fake-model", "stream": True, **fields})
    kinds = [name for name, _ in events]
    assert kinds[-2:] == ["error", "response.failed"], kinds
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    error = events[-2][1]
    assert error["type"] == "error" and error["message"] and error["code"] == "upstream_stream_cut"
    assert error["error"]["message"] == error["message"] and error["error"]["type"] == "upstream_error"
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] in RESPONSE_ERROR_CODES
    assert failed["error"]["message"] == error["message"]
    (item,) = failed["output"]
    assert item["type"] == partial["type"] and item["status"] == "incomplete"
    if "text" in partial:
        assert item["content"][0]["text"] == partial["text"]
    else:
        assert item["arguments"] == partial["arguments"] and item["name"] == "get_weather"
    row, attempts = log_rows(gateway, rid)
    assert row is not None and row["status"] == "error" and row["streamed"] and row["attempts_count"] == 1
    assert "cut off" in row["error_message"]
    assert [(a["status"], a["error_type"]) for a in attempts] == [("error", "stream_cut")]


ROOT = Path(__file__).resolve().parents[2]
SPEC = next((p for p in (ROOT.parent / "shared/specs/openai-openapi.yaml",
                         ROOT.parents[1] / "shared/specs/openai-openapi.yaml") if p.is_file()), None)


@pytest.mark.skipif(SPEC is None, reason="OpenAI's OpenAPI spec not found (the shared checkout beside the repository)")
def test_the_failure_events_of_a_responses_stream_conform_to_openais_spec(gateway: GatewayThread) -> None:
    """`error` and `response.failed`, for a translated stream cut in its text and in a call's arguments,
    validate against the published spec's event schemas (a failed response's `error.code` is one of its
    enumerated codes)."""
    import jsonschema
    import yaml

    assert SPEC is not None
    with SPEC.open("rb") as f:
        spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    validators = {kind: jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                                         "components": spec["components"]})
                  for kind, name in (("error", "ResponseErrorEvent"), ("response.failed", "ResponseFailedEvent"))}
    tool = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": False}]
    for fields in ({"input": "[[fault:cut:3]] one two three"}, {"input": "[[fault:cut:2]] weather", "tools": tool}):
        _, events = sse_events(gateway, "/v1/responses", {"model": "fake-model", "stream": True, **fields})
        for name, event in events[-2:]:
            errors = list(validators[name].iter_errors(event))
            assert not errors, f"{name} at {list(errors[0].absolute_path)}: {errors[0].message[:300]}"


def test_the_openai_sdk_raises_its_api_error_when_a_responses_stream_fails_part_way(gateway: GatewayThread) -> None:
    """Iterating the stream raises `openai.APIError` with the gateway's message at the failure, rather
    than the stream ending quietly and `get_final_response()` complaining of a missing completion."""
    seen: list[str] = []
    with (
        pytest.raises(openai.APIError, match="cut off") as err,
        responses_client(gateway).responses.stream(
            model="fake-model", input="[[fault:cut:3]] one two three four five six") as stream,
    ):
        seen.extend(event.type for event in stream)
    assert not isinstance(err.value, openai.APIStatusError)  # raised inside a 200 stream
    assert "response.output_text.delta" in seen and "response.completed" not in seen


def test_a_passed_through_responses_stream_whose_upstream_sends_an_error_event_fails_cleanly(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    """A Responses upstream (passthrough) that sends an error event without a Responses `type` mid-stream
    (chat's `{"error": {...}}` shape, as OpenAI-compatible servers send it) ends the client's stream with
    `error` and `response.failed` in the gateway's words, and the log row says error, not ok; the upstream's
    own report of its failure is in the attempt row."""
    dep = {"name": "native", "model": "fake-model", "upstream_model": "fake-model", "api_base": fake_provider.base_url,
           "timeout_s": 5, "stream_idle_timeout_s": 5, "capabilities": ["chat", "tools", "responses"]}
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=[dep])
    with running_gateway(settings) as gw:
        rid, events = sse_events(gw, "/v1/responses", {
            "model": "fake-model", "stream": True, "input": "[[fault:error_event:4]] one two three four five"})
        row, attempts = log_rows(gw, rid)
    assert [name for name, _ in events][-2:] == ["error", "response.failed"]
    assert events[-2][1]["message"] == "The model's answer was cut off."
    assert events[-1][1]["response"]["error"]["code"] == "server_error"
    assert row is not None and row["status"] == "error"
    assert [(a["status"], a["error_type"]) for a in attempts] == [("error", "stream_cut")]
    assert "crashed mid-stream" in attempts[0]["error_message"]


def test_a_messages_upstream_timeout_before_the_first_chunk_is_anthropics_timeout_error(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    """The upstream never answers: a 504 whose error type is Anthropic's `timeout_error`, which the SDK
    raises as its gateway-timeout error."""
    dep = {"name": "slow", "model": "fake-model", "upstream_model": "fake-model", "api_base": fake_provider.base_url,
           "timeout_s": 0.5, "capabilities": ["chat"]}
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=[dep])
    with (
        running_gateway(settings) as gw,
        pytest.raises(anthropic.APIStatusError) as err,
        messages_client(gw).messages.stream(
            model="fake-model", max_tokens=20, messages=[{"role": "user", "content": "[[fault:hang]] hi"}]) as stream,
    ):
        stream.get_final_message()
    assert err.value.status_code == 504
    assert err.value.body["error"]["type"] == "timeout_error"  # type: ignore[index]


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_n_above_one_is_refused_naming_n(gateway: GatewayThread, path: str) -> None:
    """Neither API answers with several choices: `n` is a 400 naming it, not several upstream answers of
    which the client sees (and is billed for) one."""
    body: dict[str, Any] = {"model": "fake-model", "n": 2, "stream": True}
    if path == "/v1/responses":
        body["input"] = "hi"
    else:
        body |= {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gateway.base_url + path, json=body, timeout=20)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if path == "/v1/responses":
        assert error["param"] == "n" and "'n'" in error["message"]
    else:
        assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
        assert error["message"].startswith("n: ")


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_a_client_that_hangs_up_mid_stream_cancels_the_upstream_call_and_is_logged_cancelled(
    gateway: GatewayThread, fake_provider: FakeProviderThread, path: str
) -> None:
    """As for chat completions: the upstream stream is dropped, the row is `cancelled` (499) with its
    attempt `cancelled`, long before the upstream would have finished (about 6 s here)."""
    prompt = "[[fault:chunk_latency:300]] a b c d e f g h i j k l m n o p q r s t"
    body: dict[str, Any] = {"model": "fake-model", "stream": True}
    if path == "/v1/responses":
        body["input"] = prompt
    else:
        body |= {"max_tokens": 50, "messages": [{"role": "user", "content": prompt}]}
    t0 = time.monotonic()
    with httpx.Client(base_url=gateway.base_url, timeout=20) as http, http.stream("POST", path, json=body) as r:
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if "text_delta" in line or "output_text.delta" in line:
                break  # the answer has begun: hang up
    row, attempts = wait_until(lambda: (rows := log_rows(gateway, rid))[0] and rows, timeout_s=5,
                               what="the abandoned stream logged")
    assert row["status"] == "cancelled" and row["http_status"] == 499 and row["error_type"] == "client_cancelled"
    assert [a["status"] for a in attempts] == ["cancelled"]
    wait_until(lambda: fake_provider.stats["in_flight"] == 0, timeout_s=3, what="the upstream stream dropped")
    assert time.monotonic() - t0 < 4


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _call(index: Any, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


# Chat completion streams an upstream may send, by the prompt that asks for them.
SCRIPTS: dict[str, list[dict[str, Any] | float]] = {
    # text, then two parallel tool calls one after the other, as OpenAI and vLLM stream them
    "parallel": [
        _chunk({"role": "assistant", "content": "Checking."}),
        _chunk(_call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})),
        _chunk(_call(0, function={"arguments": '{"city":'})),
        _chunk(_call(0, function={"arguments": '"Paris"}'})),
        _chunk(_call(1, id="call_b", type="function", function={"name": "get_time", "arguments": ""})),
        _chunk(_call(1, function={"arguments": '{"tz":'})),
        _chunk(_call(1, function={"arguments": '"CET"}'})),
        _chunk({}, "tool_calls"),
        {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
         "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}},
    ],
    # two tool calls whose argument fragments interleave (0, 1, 0, 1, 0), as some upstreams stream
    # parallel calls; call 1 completes while call 0 is still open
    "interleaved": [
        _chunk(_call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})),
        _chunk(_call(0, function={"arguments": '{"city":'})),
        _chunk(_call(1, id="call_b", type="function", function={"name": "get_time", "arguments": '{"tz":'})),
        _chunk(_call(0, function={"arguments": ' "Par'})),
        _chunk(_call(1, function={"arguments": '"CET"}'})),
        _chunk(_call(0, function={"arguments": 'is"}'})),
        _chunk({}, "tool_calls"),
        {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
         "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}},
    ],
    # usage on every chunk, the first included (vLLM's continuous usage stats), some of the prompt cached
    "continuous_usage": [
        {**_chunk({"role": "assistant", "content": "Hi"}), "usage": {
            "prompt_tokens": 42, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 30}}},
        {**_chunk({"content": " there"}, "stop"), "usage": {
            "prompt_tokens": 42, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 30}}},
    ],
    # a tool call whose index is not a number: nothing can translate it
    "garbled": [
        _chunk({"role": "assistant", "content": "Checking."}),
        _chunk(_call("first", id="call_a", type="function", function={"name": "get_weather", "arguments": "{}"})),
        0.3,  # a pause (seconds): the gateway is still reading the upstream when the bad chunk fails
        _chunk({}, "tool_calls"),
    ],
}


@pytest.fixture()
def scripted(sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    """A gateway whose model `scripted` is an upstream that streams one of `SCRIPTS`, the one named by
    the request's last message."""

    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        script = SCRIPTS[str(body["messages"][-1]["content"])]

        async def events() -> AsyncIterator[bytes]:
            for chunk in script:
                if isinstance(chunk, float):
                    await asyncio.sleep(chunk)
                    continue
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with ServerThread(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])) as upstream:
        dep = {"name": "scripted", "model": "scripted", "upstream_model": "scripted",
               "api_base": upstream.base_url + "/v1", "timeout_s": 5, "stream_idle_timeout_s": 5,
               "capabilities": ["chat", "tools"]}
        settings = gateway_settings(upstream.base_url, sqlite_url, tmp_path, deployments=[dep])
        with running_gateway(settings) as gw:
            yield gw


TOOLS = [{"name": "get_weather", "schema": WEATHER}, {"name": "get_time", "schema": {"type": "object"}}]


def test_parallel_tool_calls_stream_in_order_with_their_own_indices(scripted: GatewayThread) -> None:
    """Text then two tool calls: each becomes its own output item (Responses) or content block
    (Messages), its argument deltas under its own index, in order; the SDKs' final objects hold both."""
    tools_r = [{"type": "function", "name": t["name"], "parameters": t["schema"]} for t in TOOLS]
    tools_m = [{"name": t["name"], "input_schema": t["schema"]} for t in TOOLS]
    _, events = sse_events(scripted, "/v1/responses",
                           {"model": "scripted", "input": "parallel", "tools": tools_r, "stream": True})
    deltas = [(e["output_index"], e["delta"]) for name, e in events if name == "response.function_call_arguments.delta"]
    assert deltas == [(1, '{"city":'), (1, '"Paris"}'), (2, '{"tz":'), (2, '"CET"}')]
    added = [(e["output_index"], e["item"]["type"]) for name, e in events if name == "response.output_item.added"]
    assert added == [(0, "message"), (1, "function_call"), (2, "function_call")]
    _, events = sse_events(scripted, "/v1/messages", {"model": "scripted", "max_tokens": 50, "stream": True,
                                                      "messages": [{"role": "user", "content": "parallel"}],
                                                      "tools": tools_m})
    blocks = [(name, e.get("index"), (e.get("content_block") or e.get("delta") or {}).get("type"))
              for name, e in events if name.startswith("content_block")]
    assert blocks == [("content_block_start", 0, "text"), ("content_block_delta", 0, "text_delta"),
                      ("content_block_stop", 0, None),
                      ("content_block_start", 1, "tool_use"), ("content_block_delta", 1, "input_json_delta"),
                      ("content_block_delta", 1, "input_json_delta"), ("content_block_stop", 1, None),
                      ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
                      ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None)]

    with responses_client(scripted).responses.stream(model="scripted", input="parallel", tools=tools_r) as stream:
        response = stream.get_final_response()
    calls = [(o.name, o.arguments, o.call_id) for o in response.output if o.type == "function_call"]
    assert calls == [("get_weather", '{"city":"Paris"}', "call_a"), ("get_time", '{"tz":"CET"}', "call_b")]
    with messages_client(scripted).messages.stream(model="scripted", max_tokens=50, tools=tools_m,  # type: ignore[arg-type]
                                                   messages=[{"role": "user", "content": "parallel"}]) as mstream:
        message = mstream.get_final_message()
    uses = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert uses == [("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_time", {"tz": "CET"})]
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 7


def test_interleaved_tool_call_fragments_give_one_tool_use_block_per_call(scripted: GatewayThread) -> None:
    """An upstream that interleaves the argument fragments of two tool calls: the Messages stream still
    starts each content block once, sends deltas only to the open block and stops it, with one
    `tool_use` block per call whose `input_json_delta`s make its whole arguments; the SDK's final
    message holds both calls with their inputs."""
    tools_m = [{"name": t["name"], "input_schema": t["schema"]} for t in TOOLS]
    ask = {"model": "scripted", "max_tokens": 50, "tools": tools_m,
           "messages": [{"role": "user", "content": "interleaved"}]}
    _, events = sse_events(scripted, "/v1/messages", {**ask, "stream": True})
    open_block: int | None = None
    started: list[dict[str, Any]] = []
    args: dict[int, str] = {}
    for name, e in events:
        if name == "content_block_start":
            assert open_block is None and e["index"] == len(started), events
            open_block = e["index"]
            started.append(e["content_block"])
            args[open_block] = ""
        elif name == "content_block_delta":
            assert e["index"] == open_block, events
            args[open_block] += e["delta"]["partial_json"]
        elif name == "content_block_stop":
            assert e["index"] == open_block, events
            open_block = None
    assert open_block is None
    assert [(b["type"], b["id"], b["name"]) for b in started] == [
        ("tool_use", "call_a", "get_weather"), ("tool_use", "call_b", "get_time")]
    assert [orjson.loads(a) for a in args.values()] == [{"city": "Paris"}, {"tz": "CET"}]

    with messages_client(scripted).messages.stream(**ask) as stream:  # type: ignore[arg-type]
        message = stream.get_final_message()
    uses = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert uses == [("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_time", {"tz": "CET"})]
    assert len(message.content) == 2 and message.stop_reason == "tool_use"


def test_message_start_reports_the_input_tokens_an_upstreams_first_chunk_carries(scripted: GatewayThread) -> None:
    """An upstream that reports usage from its first chunk on (vLLM's continuous usage stats): message_start
    has its prompt count, not 0 nor the gateway's estimate; the prompt tokens it read from its cache are
    Anthropic's `cache_read_input_tokens`, the rest `input_tokens`, there and in message_delta."""
    ask = {"model": "scripted", "max_tokens": 50, "messages": [{"role": "user", "content": "continuous_usage"}]}
    _, events = sse_events(scripted, "/v1/messages", {**ask, "stream": True})
    start = events[0][1]["message"]["usage"]
    assert events[0][0] == "message_start"
    assert (start["input_tokens"], start["cache_read_input_tokens"]) == (12, 30)
    delta = next(e for name, e in events if name == "message_delta")["usage"]
    assert delta == {"input_tokens": 12, "cache_read_input_tokens": 30, "output_tokens": 2}
    with messages_client(scripted).messages.stream(**ask) as stream:  # type: ignore[arg-type]
        usage = stream.get_final_message().usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (12, 30, 2)


def test_a_stream_the_gateway_cannot_translate_ends_with_failure_events_and_an_error_row(
    scripted: GatewayThread,
) -> None:
    """An upstream chunk the translation cannot handle (a tool call index that is not a number) ends
    the Responses stream with `error` and `response.failed`, and the log row says error, instead of the
    connection being dropped mid-body and the request logged ok."""
    rid, events = sse_events(scripted, "/v1/responses", {"model": "scripted", "input": "garbled", "stream": True,
                                                         "tools": [{"type": "function", "name": "get_weather"}]})
    assert [name for name, _ in events][-2:] == ["error", "response.failed"]
    assert events[-1][1]["response"]["error"]["code"] == "server_error"
    row, _ = log_rows(scripted, rid)
    assert row is not None and row["status"] == "error" and row["error_type"] == "server_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "[[fault:cut:3]] one two three four"}]}),
        ("/v1/responses", {"input": "[[fault:cut:3]] one two three four"}),
        ("/v1/messages", {"max_tokens": 50, "messages": [{"role": "user", "content": "[[fault:cut:3]] one two"}]}),
    ],
    ids=["chat", "responses", "messages"],
)
def test_a_stream_cut_part_way_is_billed_for_what_it_streamed(
    gateway: GatewayThread, path: str, body: dict[str, Any]
) -> None:
    """The provider bills a stream that broke after output: the attempt and the request (row and budget)
    carry the prompt and the text sent, not zero tokens at $0."""
    rid, _ = sse_events(gateway, path, {"model": "fake-model", "stream": True, **body})
    row, attempts = log_rows(gateway, rid)
    assert row is not None and row["status"] == "error"
    assert row["prompt_tokens"] and row["completion_tokens"] and row["cost_usd"], row
    assert [a["cost_usd"] for a in attempts] == [row["cost_usd"]]
