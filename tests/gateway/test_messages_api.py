"""Anthropic's Messages API through a running gateway with the real `anthropic` SDK: plain, streamed
(the stream helper's final message and usage), tools with a tool_result round trip, and errors in
Anthropic's shape. Upstream: the fake provider's chat completions."""

from __future__ import annotations

import anthropic
import pytest
from anthropic import Anthropic

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import streamed_events
from tests.support.harness import GatewayThread


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
    import httpx

    body = {"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], **extra}
    r = httpx.post(gateway.base_url + "/v1/messages", json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert f"'{named}'" in err["error"]["message"]


def test_count_tokens_estimates_the_prompt(gateway: GatewayThread) -> None:
    n = client(gateway).messages.count_tokens(
        model="fake-model", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert 90 <= n.input_tokens <= 120


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
