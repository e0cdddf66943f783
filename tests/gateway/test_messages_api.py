"""Anthropic's Messages API through a running gateway with the real `anthropic` SDK: plain, streamed
(the stream helper's final message and usage), tools with a tool_result round trip, and errors in
Anthropic's shape. Upstream: the fake provider's chat completions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic import Anthropic
from pydantic import BaseModel

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings, settings, streamed_events
from tests.support.harness import GatewayThread, running_gateway


def client(gw: GatewayThread) -> Anthropic:
    return Anthropic(base_url=gw.base_url, api_key="anything", max_retries=0)


def test_messages_create_answers_in_anthropic_shape(gateway: GatewayThread) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model="fake-model",
        max_tokens=50,
        system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
    )
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text == "hello there"
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == 2 and msg.usage.input_tokens > 0
    assert raw.headers["x-hybridgate-deployment"] == "fake-a"


def test_max_tokens_cut_reports_max_tokens_stop_reason(gateway: GatewayThread) -> None:
    msg = client(gateway).messages.create(
        model="fake-model", max_tokens=2, messages=[{"role": "user", "content": "one two three four"}]
    )
    assert msg.stop_reason == "max_tokens" and msg.content[0].text == "one two"  # type: ignore[union-attr]


def test_stream_helper_gives_text_final_message_and_usage(gateway: GatewayThread) -> None:
    with client(gateway).messages.stream(
        model="fake-model", max_tokens=50, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three" == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == 3 and final.stop_reason == "end_turn"


def test_message_start_reports_the_prompt_estimate_and_message_delta_the_upstreams_count(
    gateway: GatewayThread,
) -> None:
    """Before the answer only the gateway's estimate of the prompt is known (the upstream reports usage
    at the end): message_start carries it, as count_tokens gives it, not 0; message_delta then carries
    the upstream's own count, which the SDK's final message keeps."""
    ask = {"model": "fake-model", "max_tokens": 50, "messages": [{"role": "user", "content": "one two three"}]}
    c = client(gateway)
    estimate = c.messages.count_tokens(model="fake-model", messages=ask["messages"]).input_tokens  # type: ignore[arg-type]
    counted = c.messages.create(**ask).usage.input_tokens  # type: ignore[call-overload]
    assert 0 < estimate != counted
    events = streamed_events(gateway, "/v1/messages", {**ask, "stream": True})
    assert events[0]["type"] == "message_start" and events[0]["message"]["usage"]["input_tokens"] == estimate
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["usage"]["input_tokens"] == counted and delta["usage"]["output_tokens"] == 3
    with c.messages.stream(**ask) as stream:  # type: ignore[call-overload]
        assert stream.get_final_message().usage.input_tokens == counted


def test_raw_stream_follows_anthropics_event_sequence(gateway: GatewayThread) -> None:
    events = list(
        client(gateway).messages.create(
            model="fake-model", max_tokens=50, stream=True, messages=[{"role": "user", "content": "a b"}]
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


def test_tools_tool_use_and_tool_result_round_trip(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    c = client(gateway)
    first = c.messages.create(
        model="fake-model",
        max_tokens=100,
        tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    use = first.content[0]
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"city": "fake"}
    second = c.messages.create(
        model="fake-model",
        max_tokens=100,
        tools=tools,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    sent = [r.body for r in fake_provider.requests() if r.path.endswith("/chat/completions")][-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"] and sent[2]["content"] == "sunny"
    with c.messages.stream(
        model="fake-model",
        max_tokens=100,
        tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "fake"}


def test_top_k_reaches_the_upstream(gateway: GatewayThread, fake_provider: FakeProviderThread) -> None:
    """`top_k` goes in the chat body (vLLM's and the local engine's field), streamed or not; 0 (no
    cut-off) is not sent. (This SDK's methods have no `top_k` argument: it goes in `extra_body`.)"""
    c = client(gateway)
    ask = {"model": "fake-model", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    c.messages.create(**ask, extra_body={"top_k": 5})  # type: ignore[call-overload]
    with c.messages.stream(**ask, extra_body={"top_k": 7}) as stream:  # type: ignore[call-overload]
        stream.get_final_message()
    c.messages.create(**ask, extra_body={"top_k": 0})  # type: ignore[call-overload]
    sent = [r.body for r in fake_provider.requests() if r.path.endswith("/chat/completions")]
    assert [b.get("top_k") for b in sent] == [5, 7, None]


def test_a_strict_tool_reaches_the_upstream_as_a_strict_function(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    """Anthropic's `tools[].strict` (the call's input follows the schema exactly) is chat's structured tool
    calling: the function's own `strict`, sent only where the caller set it."""
    c = client(gateway)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    msg = c.messages.create(model="fake-model", max_tokens=50, messages=[{"role": "user", "content": "weather?"}],
                            tools=[{"name": "get_weather", "input_schema": schema, "strict": True},
                                   {"name": "get_time", "input_schema": {"type": "object"}}])
    assert msg.stop_reason == "tool_use"
    sent = [r.body for r in fake_provider.requests() if r.path.endswith("/chat/completions")][-1]
    strict, loose = (t["function"] for t in sent["tools"])
    assert strict["strict"] is True and strict["parameters"] == schema and "strict" not in loose


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mcp_servers", [{"type": "url", "url": "https://mcp.example.test/sse", "name": "example"}]),
        ("container", "container_123"),
        ("container", {"id": "container_123"}),
        ("context_management", {"edits": [{"type": "clear_tool_uses_20250919"}]}),
        ("speed", "fast"),
        ("inference_geo", "us"),
    ],
)
def test_work_anthropics_api_does_itself_is_a_400_naming_it(
    gateway: GatewayThread, fake_provider: FakeProviderThread, field: str, value: object
) -> None:
    """MCP servers (tools Anthropic's API calls), containers (its code execution state), context editing,
    fast mode and the region of inference have nothing to translate to in chat completions: answered
    without them the answer would silently lack what they do."""
    body = {"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], field: value}
    for stream in (False, True):
        r = httpx.post(gateway.base_url + "/v1/messages", json=body | {"stream": stream})
        assert r.status_code == 400, r.text
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        assert err["error"]["message"].startswith(f"{field}: this gateway does not support")
    assert not [r for r in fake_provider.requests() if r.path.endswith("/chat/completions")]
    ok = httpx.post(gateway.base_url + "/v1/messages", json=body | {field: None})  # null: nothing asked
    assert ok.status_code == 200, ok.text


def test_speed_and_inference_geo_that_ask_for_the_default_are_answered(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    """'standard' speed and 'global' inference ask for what every deployment does: answered, and not sent
    to the chat upstream."""
    msg = client(gateway).messages.create(model="fake-model", max_tokens=8, speed="standard", inference_geo="global",
                                          messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "hi"  # type: ignore[union-attr]
    sent = [r.body for r in fake_provider.requests() if r.path.endswith("/chat/completions")][-1]
    assert "speed" not in sent and "inference_geo" not in sent


EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def cached_conversation() -> dict[str, Any]:
    """A Messages request with prompt-caching markers on the request, a system block, a tool, a text
    block, a tool_use block and a tool_result block."""
    return {
        "model": "claude-fake",
        "max_tokens": 50,
        "cache_control": EPHEMERAL,
        "system": [{"type": "text", "text": "be brief", "cache_control": HOUR}, {"type": "text", "text": "."}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather?", "cache_control": EPHEMERAL}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {}, "cache_control": EPHEMERAL}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny",
                                          "cache_control": EPHEMERAL}]},
        ],
    }


def test_prompt_caching_markers_reach_anthropic_through_litellm_and_no_chat_server(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cache_control` never changes the answer, but it is what makes Anthropic cache a long prompt: a
    deployment reached through litellm gets each marker where the request put it (litellm carries the
    chat request's markers into Anthropic's API), streamed or not; an OpenAI-compatible server, which
    may refuse keys it does not know, gets the chat request without them."""
    monkeypatch.setenv("HG_TEST_ANTHROPIC_KEY", "sk-ant-test")
    with FakeProviderThread() as anth, FakeProviderThread() as chat_server:
        deployments = [
            {"name": "claude", "model": "claude-fake", "provider": "litellm", "upstream_model": "anthropic/claude-fake",
             "api_base": anth.url, "api_key_env": "HG_TEST_ANTHROPIC_KEY", "timeout_s": 20},
            {"name": "chat-server", "model": "chat-model", "upstream_model": "fake-model",
             "api_base": chat_server.base_url, "timeout_s": 20, "capabilities": ["chat", "tools"]},
        ]
        with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
            c = client(gw)
            ask = cached_conversation()
            assert c.messages.create(**ask).content  # type: ignore[arg-type]
            with c.messages.stream(**ask) as stream:  # type: ignore[arg-type]
                stream.get_final_message()
            c.messages.create(**ask | {"model": "chat-model"})  # type: ignore[arg-type]
        sent = [r.body for r in anth.requests() if r.path == "/v1/messages"]
        (plain,) = [r.body for r in chat_server.requests() if r.path.endswith("/chat/completions")]
    assert len(sent) == 2
    for body in sent:
        assert body["cache_control"] == EPHEMERAL
        assert body["system"][0]["cache_control"] == HOUR and "cache_control" not in body["system"][1]
        assert body["tools"][0]["cache_control"] == EPHEMERAL
        question, call, result = (m["content"][0] for m in body["messages"])
        assert question["type"] == "text" and question["cache_control"] == EPHEMERAL
        assert call["type"] == "tool_use" and call["cache_control"] == EPHEMERAL
        assert result["type"] == "tool_result" and result["cache_control"] == EPHEMERAL
    assert "cache_control" not in orjson.dumps(plain).decode()
    assert [m["content"] for m in plain["messages"][:2]] == ["be brief.", "weather?"]


def test_errors_come_in_anthropics_shape(gateway: GatewayThread) -> None:
    c = client(gateway)
    with pytest.raises(anthropic.BadRequestError) as err:
        c.messages.create(model="fake-model", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    body = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as nf:
        c.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"tool_choice": {"type": ["tool"]}}, "tool_choice.type"),
        ({"tool_choice": {"type": {"a": 1}}}, "tool_choice.type"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": "https://x.test/a.png"}]}]},
         "messages[0].content[0].source"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]},
         "messages[0].content[0].source"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ],
)
def test_malformed_tool_choice_and_blocks_are_400s_naming_the_field(
    gateway: GatewayThread, extra: dict, named: str
) -> None:
    """Values of the wrong type where the translation reads into them were 500s."""
    body = {"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], **extra}
    r = httpx.post(gateway.base_url + "/v1/messages", json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert f"'{named}'" in err["error"]["message"]


class Weather(BaseModel):
    city: str
    temp_c: float


def test_structured_output_format_reaches_the_upstream_and_parses(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    """`messages.parse(output_format=Model)` sends `output_config.format` (a JSON schema) and parses the
    answer's text with the model: it is the chat request's `response_format` (json_schema, strict, as
    Anthropic's structured outputs are guaranteed), whole and streamed, where it was dropped and the SDK
    failed on a plain-text answer. The beta's top-level `output_format` is read the same way."""
    c = client(gateway)
    ask = {"model": "fake-model", "max_tokens": 100, "messages": [{"role": "user", "content": "weather in Paris"}]}
    parsed = c.messages.parse(**ask, output_format=Weather)  # type: ignore[arg-type]
    assert parsed.parsed_output == Weather(city="fake", temp_c=1.5)
    with c.messages.stream(**ask, output_format=Weather) as stream:  # type: ignore[arg-type]
        assert stream.get_final_message().parsed_output == Weather(city="fake", temp_c=1.5)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = post_messages(gateway, output_format={"type": "json_schema", "schema": schema})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == '{"ok":true}', r.text
    sent = [r.body for r in fake_provider.requests() if r.path.endswith("/chat/completions")]
    assert sent[0]["response_format"]["type"] == "json_schema"
    assert sent[0]["response_format"]["json_schema"]["schema"]["properties"].keys() == {"city", "temp_c"}
    assert sent[-1]["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "output", "schema": schema, "strict": True}}


@pytest.mark.parametrize(
    ("output_config", "named"),
    [
        ({"format": {"type": "json_object"}}, "output_config.format.type"),
        ({"format": {"type": "json_schema"}}, "output_config.format.schema"),
        ({"format": "json"}, "output_config.format"),
        ("json", "output_config"),
    ],
)
def test_a_malformed_output_format_is_a_400_naming_it(
    gateway: GatewayThread, output_config: object, named: str
) -> None:
    message = anthropic_error_message(post_messages(gateway, output_config=output_config))
    assert f"'{named}'" in message, message


def test_count_tokens_estimates_the_prompt(gateway: GatewayThread) -> None:
    n = client(gateway).messages.count_tokens(
        model="fake-model", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert 90 <= n.input_tokens <= 120


def test_count_tokens_for_a_model_that_does_not_exist_is_not_found(gateway: GatewayThread) -> None:
    """As `messages.create` answers it (and Anthropic's count_tokens): a 404 `not_found_error`, not a count
    for a model nothing serves."""
    with pytest.raises(anthropic.NotFoundError) as nf:
        client(gateway).messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "no-such-model" in nf.value.body["error"]["message"]  # type: ignore[index]
    assert client(gateway).messages.count_tokens(model="auto", messages=[{"role": "user", "content": "x"}])


def test_a_stream_cut_after_it_began_ends_with_an_anthropic_error_event(gateway: GatewayThread) -> None:
    body = {
        "model": "fake-model",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "[[fault:cut:2]] one two three four five six"}],
    }
    events = streamed_events(gateway, "/v1/messages", body)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error" and "message_stop" not in [e["type"] for e in events]


TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


def post_messages(gw: GatewayThread, **fields: object) -> httpx.Response:
    body = {"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **fields}
    return httpx.post(gw.base_url + "/v1/messages", json=body, timeout=20)


def anthropic_error_message(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return body["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tools": [TOOL, {"name": "", "input_schema": {"type": "object"}}]}, "tools[1].name"),
        ({"system": "be brief", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "let me see"},
                                              {"type": "tool_use", "id": 7, "name": "get_weather", "input": {}}]},
        ]}, "messages[1].content[1].id"),
        ({"system": [{"type": "text", "text": "be brief"}], "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "text", "text": "here"}, {"type": "tool_result", "content": "sun"}]},
        ]}, "messages[2].content[1].tool_use_id"),
    ],
)
def test_errors_found_after_translation_name_the_anthropic_field(
    gateway: GatewayThread, fields: dict, named: str
) -> None:
    """Checks that run on the translated chat request name the field of the Anthropic request the
    caller sent, not the chat one (tools[i].function.name, indices shifted by the system message)."""
    message = anthropic_error_message(post_messages(gateway, **fields))
    assert f"'{named}'" in message and ".function." not in message and "tool_call" not in message, message


def test_a_context_length_error_from_the_upstream_names_max_tokens(gateway: GatewayThread) -> None:
    message = anthropic_error_message(
        post_messages(gateway, messages=[{"role": "user", "content": "[[fault:context_length]] hi"}]))
    assert "max_tokens" in message and "completion" not in message, message


def test_a_request_no_deployment_of_the_policy_can_serve_names_max_tokens(gateway: GatewayThread) -> None:
    message = anthropic_error_message(post_messages(gateway, model="auto", max_tokens=100_000))
    assert message.startswith("max_tokens: ") and "context window" in message, message


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "get_time"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool", "name": "get_weather"}}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ],
)
def test_tool_choice_must_name_one_of_the_tools(gateway: GatewayThread, fields: dict, named: str) -> None:
    message = anthropic_error_message(post_messages(gateway, **fields))
    assert f"'{named}'" in message and "'tools'" in message, message


def test_tool_choice_none_needs_no_tools(gateway: GatewayThread) -> None:
    r = post_messages(gateway, tool_choice={"type": "none"})
    assert r.status_code == 200 and r.json()["stop_reason"] == "end_turn", r.text


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},  # run by Anthropic's servers
        {"type": "bash_20250124", "name": "bash"},  # schema defined by Anthropic, not sent
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ],
)
def test_tools_anthropic_defines_are_refused_naming_their_type(
    gateway: GatewayThread, fake_provider: FakeProviderThread, tool: dict
) -> None:
    """A server tool (or one whose schema only Anthropic knows) has no input_schema a chat upstream could
    be given: it is a 400 naming `tools[i].type`, as /v1/responses refuses hosted tools, not a function
    tool without parameters that the model then 'calls' and the client cannot run."""
    c = client(gateway)
    ask = {"model": "fake-model", "max_tokens": 50, "messages": [{"role": "user", "content": "look it up"}],
           "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}, tool]}
    counted = {k: v for k, v in ask.items() if k != "max_tokens"}
    for call, fields in ((c.messages.create, ask), (c.messages.count_tokens, counted)):
        with pytest.raises(anthropic.BadRequestError) as err:
            call(**fields)  # type: ignore[operator]
        message = err.value.body["error"]["message"]  # type: ignore[index]
        assert "'tools[1].type'" in message and repr(tool["type"]) in message, message
    assert not [r for r in fake_provider.requests() if r.path.endswith("/chat/completions")]
    # a custom tool may say so
    msg = c.messages.create(**{**ask, "tools": [{"type": "custom", "name": "get_weather",  # type: ignore[arg-type]
                                                 "input_schema": {"type": "object"}}]})
    assert msg.stop_reason == "tool_use"


def test_wrong_methods_and_unknown_paths_under_messages_answer_in_anthropics_shape(
    gateway: GatewayThread,
) -> None:
    r = httpx.get(gateway.base_url + "/v1/messages")
    assert "GET" in anthropic_error_message(r, 405) and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "invalid_request_error" and r.headers["x-request-id"]
    r = httpx.get(gateway.base_url + "/v1/messages/count_tokens")
    anthropic_error_message(r, 405)
    r = httpx.post(gateway.base_url + "/v1/messages/batches", json={})
    assert "/v1/messages/batches" in anthropic_error_message(r, 404)
    assert r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(gateway.base_url + "/v1/chat/completions")  # OpenAI's routes keep OpenAI's shape
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


@pytest.fixture()
def vllm_like_gateway(sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    """A gateway over an OpenAI-compatible upstream that names the stop string that ended a choice in
    the choice's `stop_reason`, as vLLM does."""
    with (
        FakeProviderThread(vllm_stop_reason=True) as fp,
        running_gateway(gateway_settings(fp.base_url, sqlite_url, tmp_path)) as gw,
    ):
        yield gw


def test_a_stop_sequence_that_ended_the_answer_is_reported(vllm_like_gateway: GatewayThread) -> None:
    c = client(vllm_like_gateway)
    ask = {"model": "fake-model", "max_tokens": 50, "stop_sequences": ["nine", "three"],
           "messages": [{"role": "user", "content": "one two three four"}]}
    msg = c.messages.create(**ask)  # type: ignore[arg-type]
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "three"
    assert msg.content[0].text == "one two "  # type: ignore[union-attr]
    with c.messages.stream(**ask) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "three"
    events = streamed_events(vllm_like_gateway, "/v1/messages", {**ask, "stream": True})
    delta = next(e for e in events if e["type"] == "message_delta")["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "three"}


def test_an_answer_no_stop_sequence_ended_keeps_end_turn(vllm_like_gateway: GatewayThread) -> None:
    msg = client(vllm_like_gateway).messages.create(
        model="fake-model", max_tokens=50, stop_sequences=["nine"],
        messages=[{"role": "user", "content": "one two three"}])
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None


def test_a_model_that_cannot_answer_messages_says_so(gateway: GatewayThread) -> None:
    message = anthropic_error_message(post_messages(gateway, model="fake-embed"))
    assert message == "The model `fake-embed` does not support the Messages API.", message
