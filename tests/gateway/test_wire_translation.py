"""The Responses and Anthropic Messages translations on their own (pure functions, no gateway)."""

from __future__ import annotations

import pytest

from gateway.errors import APIError
from gateway.wire import anthropic, responses


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
    out: dict = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out = {"choices": [], "usage": usage}
    return out


def test_responses_input_items_become_chat_messages_with_grouped_tool_calls() -> None:
    chat = responses.to_chat(
        {
            "model": "m",
            "instructions": "sys",
            "max_output_tokens": 20,
            "text": {
                "format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}
            },
            "tool_choice": {"type": "function", "name": "f"},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "reasoning", "summary": []},
            ],
        }
    )
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool"]
    assert [c["id"] for c in chat["messages"][2]["tool_calls"]] == ["c1", "c2"]
    assert chat["max_tokens"] == 20 and chat["response_format"]["json_schema"]["strict"] is True
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_responses_rejects_what_it_cannot_serve_naming_the_param() -> None:
    with pytest.raises(APIError) as err:
        responses.to_chat({"model": "m", "input": [{"type": "computer_call"}]})
    assert err.value.param == "input[0].type"
    with pytest.raises(APIError) as err:
        responses.to_chat({"model": "m", "input": "x", "background": True})
    assert err.value.param == "background"


def test_response_stream_numbers_events_and_closes_text_before_a_call() -> None:
    s = responses.ResponseStream({"input": "x"}, "resp_1", "m")
    events = s.start()
    events += s.feed(_chunk({"role": "assistant", "content": "Hel"}))
    events += s.feed(_chunk({"content": "lo"}))
    events += s.feed(
        _chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]})
    )
    events += s.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, "tool_calls"))
    events += s.feed(_chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 4}))
    events += s.finish()
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["usage"]["total_tokens"] == 7 and final["output"][1]["arguments"] == "{}"


def test_response_from_a_length_cut_chat_answer_is_incomplete() -> None:
    chat = {
        "choices": [{"message": {"content": "a b"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
    r = responses.response_from_chat({"input": "x"}, chat, "resp_1", "m")
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert responses.output_text(r["output"]) == "a b"


def test_anthropic_messages_become_chat_with_tool_results_first() -> None:
    chat = anthropic.to_chat(
        {
            "model": "m",
            "max_tokens": 9,
            "system": [{"type": "text", "text": "sys"}],
            "stop_sequences": ["END"],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "let me see"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                        {"type": "text", "text": "and?"},
                    ],
                },
            ],
        }
    )
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert chat["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert chat["stop"] == ["END"] and chat["tool_choice"] == "required"


def test_anthropic_stream_events_in_order_with_usage() -> None:
    s = anthropic.MessageStream("m", "msg_1")
    events = s.start()
    events += s.feed(_chunk({"content": "hi"}))
    events += s.feed(
        _chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{"}}]})
    )
    events += s.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}, "tool_calls"))
    events += s.feed(_chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 4}))
    events += s.finish()
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[-2]["delta"]["stop_reason"] == "tool_use" and events[-2]["usage"]["output_tokens"] == 4
