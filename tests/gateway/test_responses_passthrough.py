"""The Responses API passed through to upstreams that speak it (deployments with the `responses`
capability), with the real `openai` SDK through a running gateway: the fake provider's
`/v1/responses` answers, not its chat endpoint. Routing, fallbacks, the request log, the stored
conversation and the `x-hybridgate-*` headers are those of a translated request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings, streamed_events
from tests.support.harness import GatewayThread, ServerThread, running_gateway

NATIVE = ["chat", "tools", "json_mode", "responses"]


def _dep(name: str, fp: FakeProviderThread, caps: list[str], **kw: Any) -> dict[str, Any]:
    return {"name": name, "model": "fake-model", "upstream_model": "fake-model", "api_base": fp.base_url,
            "timeout_s": 5, "stream_idle_timeout_s": 5, "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
            "capabilities": caps, **kw}


def client(gw: GatewayThread) -> OpenAI:
    return OpenAI(base_url=gw.base_url + "/v1", api_key="anything", max_retries=0)


def paths(fp: FakeProviderThread) -> list[str]:
    return [r.path for r in fp.requests() if r.method == "POST"]


def upstream_bodies(fp: FakeProviderThread) -> list[dict[str, Any]]:
    return [r.body for r in fp.requests() if r.path.endswith("/responses")]


def log_row(gw: GatewayThread, rid: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        services = gw.services
        await services.sink.flush()
        async with services.engine.connect() as conn:
            q = text("SELECT endpoint, deployment, prompt_tokens, completion_tokens, cost_usd, http_status, streamed "
                     "FROM requests WHERE id = :id")
            return dict((await conn.execute(q, {"id": rid})).mappings().one())

    return gw.call(read())


@pytest.fixture()
def native(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> GatewayThread:
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path,
                                deployments=[_dep("native", fake_provider, NATIVE)])
    with running_gateway(settings) as gw:
        yield gw  # type: ignore[misc]


def test_create_is_passed_through_with_the_gateway_id_headers_and_log_row(
    native: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    raw = client(native).responses.with_raw_response.create(
        model="fake-model", input="hello there", instructions="be brief", max_output_tokens=50
    )
    resp = raw.parse()
    assert paths(fake_provider) == ["/v1/responses"]  # never translated to chat
    sent = upstream_bodies(fake_provider)[0]
    assert sent["store"] is False and sent["instructions"] == "be brief" and sent["input"] == "hello there"
    assert resp.output_text == "hello there" and resp.status == "completed" and resp.model == "fake-model"
    rid = raw.headers["x-request-id"]
    assert resp.id == "resp_" + rid and raw.headers["x-hybridgate-deployment"] == "native"
    assert resp.usage is not None and resp.usage.output_tokens == 2
    row = log_row(native, rid)
    assert row["endpoint"] == "responses" and row["deployment"] == "native" and row["http_status"] == 200
    assert row["completion_tokens"] == 2 and row["prompt_tokens"] == resp.usage.input_tokens and row["cost_usd"] > 0


def test_stream_is_passed_through_event_by_event(native: GatewayThread, fake_provider: FakeProviderThread) -> None:
    with client(native).responses.stream(model="fake-model", input="one two three") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "one two three"
    assert final.output_text == "one two three" and final.id.startswith("resp_") and "fake" not in final.id
    assert upstream_bodies(fake_provider)[0]["stream"] is True and paths(fake_provider) == ["/v1/responses"]
    row = log_row(native, final.id.removeprefix("resp_"))
    assert row["streamed"] and row["completion_tokens"] == 3 and row["deployment"] == "native"


def test_tool_round_trip_sends_the_stored_conversation_whole(
    native: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    oa = client(native)
    tools = [{"type": "function", "name": "get_weather", "description": "weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    first = oa.responses.create(model="fake-model", input="weather in Paris?", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    second = oa.responses.create(
        model="fake-model", previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text and second.previous_response_id == first.id
    sent = upstream_bodies(fake_provider)[-1]
    assert "previous_response_id" not in sent  # the upstream never saw our ids: the turns are sent whole
    assert [i.get("type") for i in sent["input"]] == ["message", "function_call", "function_call_output"]
    assert sent["input"][1]["call_id"] == call.call_id and sent["input"][2]["output"] == "sunny"


def test_a_failing_native_upstream_falls_back_to_a_translated_one(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    deployments = [_dep("native", fake_provider, NATIVE, upstream_model="broken"),
                   _dep("chat-only", fake_provider, ["chat"])]
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=deployments)
    fake_provider.set_faults(models={"broken": "500"})
    with running_gateway(settings) as gw:
        raw = client(gw).responses.with_raw_response.create(model="fake-model", input="still answered")
    assert raw.parse().output_text == "still answered"
    assert raw.headers["x-hybridgate-deployment"] == "chat-only"
    assert "/v1/responses" in paths(fake_provider) and paths(fake_provider)[-1] == "/v1/chat/completions"


def test_conversation_and_prompt_go_only_to_a_native_upstream_unchanged(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    """A `conversation` or a stored `prompt` lives at the upstream: passed through as sent (with the
    caller's own `store` for a conversation, which the upstream keeps), and only to a deployment that
    passes the Responses API through, even where the model's first deployment translates to chat."""
    deployments = [_dep("chat-only", fake_provider, ["chat"]), _dep("native", fake_provider, NATIVE)]
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=deployments)
    prompt = {"id": "pmpt_123", "version": "2", "variables": {"city": "Paris"}}
    with running_gateway(settings) as gw:
        oa = client(gw)
        assert oa.responses.create(model="fake-model", input="plain").output_text == "plain"
        assert paths(fake_provider) == ["/v1/chat/completions"]  # the first deployment, translated
        raw = oa.responses.with_raw_response.create(model="fake-model", input="go on", conversation="conv_1")
        with oa.responses.stream(model="fake-model", input="more", conversation={"id": "conv_1"},
                                 store=True) as stream:
            stream.get_final_response()
        oa.responses.create(model="fake-model", input="about Paris", prompt=prompt)  # type: ignore[arg-type]
        alone = oa.responses.create(model="fake-model", prompt=prompt)  # type: ignore[arg-type]  # the template has the input
    assert raw.headers["x-hybridgate-deployment"] == "native" and raw.parse().output_text == "go on"
    assert alone.status == "completed"
    assert paths(fake_provider)[1:] == ["/v1/responses"] * 4
    first, streamed, templated, bare = upstream_bodies(fake_provider)
    assert first["conversation"] == "conv_1" and "store" not in first
    assert streamed["conversation"] == {"id": "conv_1"} and streamed["store"] is True
    assert templated["prompt"] == prompt and templated["store"] is False
    assert bare["prompt"] == prompt and "input" not in bare


def test_moderation_and_context_management_go_only_to_a_native_upstream_unchanged(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    """Moderation and compaction are work the upstream's Responses API does: a request asking for either
    goes, as sent, only to a deployment that passes the Responses API through."""
    deployments = [_dep("chat-only", fake_provider, ["chat"]), _dep("native", fake_provider, NATIVE)]
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=deployments)
    moderation = {"model": "omni-moderation-latest"}
    compaction = [{"type": "compaction", "compact_threshold": 20000}]
    with running_gateway(settings) as gw:
        oa = client(gw)
        raw = oa.responses.with_raw_response.create(model="fake-model", input="moderated", moderation=moderation)
        with oa.responses.stream(model="fake-model", input="compacted", context_management=compaction) as stream:
            stream.get_final_response()
    assert raw.headers["x-hybridgate-deployment"] == "native" and raw.parse().output_text == "moderated"
    assert paths(fake_provider) == ["/v1/responses"] * 2
    moderated, compacted = upstream_bodies(fake_provider)
    assert moderated["moderation"] == moderation and compacted["context_management"] == compaction


def test_a_litellm_deployment_passes_through_with_litellm_aresponses(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    dep = _dep("via-litellm", fake_provider, NATIVE, provider="litellm", upstream_model="openai/fake-model",
               api_key_env="FAKE_KEY_UNSET")
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=[dep])
    with running_gateway(settings) as gw:
        resp = client(gw).responses.create(model="fake-model", input="through litellm")
        with client(gw).responses.stream(model="fake-model", input="streamed too") as stream:
            final = stream.get_final_response()
    assert resp.output_text == "through litellm" and final.output_text == "streamed too"
    assert paths(fake_provider) == ["/v1/responses", "/v1/responses"]


def test_a_passed_through_stream_cut_after_it_began_ends_with_response_failed(native: GatewayThread) -> None:
    body = {"model": "fake-model", "input": "[[fault:cut:4]] one two three four five six", "stream": True}
    events = streamed_events(native, "/v1/responses", body)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] and failed["id"].startswith("resp_")
    assert "fake" not in failed["id"] and [e["sequence_number"] for e in events] == list(range(len(events)))


def _failing_responses_stream(code: str | None) -> list[dict[str, Any]]:
    """A Responses stream that begins an answer, then fails with error ``code`` (none: no code)."""
    head = {"id": "resp_up", "object": "response", "created_at": 1, "model": "up", "status": "in_progress",
            "output": [], "error": None}
    item = {"type": "message", "id": "msg_up", "status": "in_progress", "role": "assistant", "content": []}
    error = {"message": "the upstream gave up"} | ({"code": code} if code is not None else {})
    events = [
        {"type": "response.created", "response": head},
        {"type": "response.in_progress", "response": head},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.output_text.delta", "item_id": "msg_up", "output_index": 0, "content_index": 0,
         "delta": "Hel"},
        {"type": "response.failed", "response": {**head, "status": "failed", "error": error}},
    ]
    return [{**e, "sequence_number": i} for i, e in enumerate(events)]


@pytest.fixture()
def failing_upstream() -> Iterator[ServerThread]:
    """A Responses upstream whose stream fails part-way with the error code the request's input names
    ("code:<code>"; "code:" for a failure without one)."""

    async def responses(request: Request) -> StreamingResponse:
        code = str((await request.json())["input"]).removeprefix("code:") or None

        async def events() -> AsyncIterator[bytes]:
            for event in _failing_responses_stream(code):
                yield b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with ServerThread(Starlette(routes=[Route("/v1/responses", responses, methods=["POST"])])) as upstream:
        yield upstream


@pytest.mark.parametrize(
    ("upstream_code", "code"),
    [("rate_limit_exceeded", "rate_limit_exceeded"), ("invalid_prompt", "invalid_prompt"),
     ("vector_store_timeout", "vector_store_timeout"), ("server_error", "server_error"),
     ("quota_exploded", "server_error"), (None, "server_error")],
)
def test_a_passed_through_stream_that_fails_keeps_the_upstreams_documented_error_code(
    failing_upstream: ServerThread, sqlite_url: str, tmp_path: Path, upstream_code: str | None, code: str,
) -> None:
    """The upstream's own `response.failed` says why it failed: its error code reaches the client's
    `response.failed` when it is one the Responses API documents; one it does not document, or none,
    is `server_error`. Its message, the upstream's account of its own failure, stays in the request log:
    the client reads the gateway's words."""
    dep = {"name": "native", "model": "fake-model", "upstream_model": "up", "api_base": failing_upstream.base_url + "/v1",
           "timeout_s": 10, "stream_idle_timeout_s": 10, "capabilities": NATIVE}
    settings = gateway_settings(failing_upstream.base_url, sqlite_url, tmp_path, deployments=[dep])
    with running_gateway(settings) as gw:
        events = streamed_events(gw, "/v1/responses", {"model": "fake-model", "stream": True,
                                                       "input": f"code:{upstream_code or ''}"})
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"], events
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == code
    assert failed["error"]["message"] == "The model's answer was cut off."
