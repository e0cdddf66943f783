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


def test_anthropic_cache_markers_go_where_litellm_reads_them_and_come_off_whole() -> None:
    """Each `cache_control` lands on the chat element made from its block (litellm's reading of a chat
    request); without them the translation is the one a request without markers gets, text as strings."""
    mark = {"type": "ephemeral"}
    body = {
        "model": "m", "max_tokens": 9, "cache_control": mark,
        "system": [{"type": "text", "text": "sys", "cache_control": mark}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": mark}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": mark},
                                         {"type": "image", "cache_control": mark,
                                          "source": {"type": "url", "url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {},
                                               "cache_control": mark}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r",
                                          "cache_control": mark}, {"type": "text", "text": "and?"}]},
        ],
    }
    chat = anthropic.to_chat(body)
    system, user, assistant, tool, last = chat["messages"]
    assert chat["cache_control"] == chat["tools"][0]["cache_control"] == mark
    assert system["content"] == [{"type": "text", "text": "sys", "cache_control": mark}]
    assert [p["cache_control"] for p in user["content"]] == [mark, mark]
    assert assistant["tool_calls"][0]["cache_control"] == tool["cache_control"] == mark
    assert last["content"] == "and?"  # no marker: a string, as before
    plain = anthropic.without_cache_control(chat)
    unmarked = {k: v for k, v in body.items() if k != "cache_control"}
    unmarked["system"] = "sys"
    unmarked["tools"] = [{"name": "f", "input_schema": {"type": "object"}}]
    unmarked["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "q"},
                                     {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                                     {"type": "text", "text": "and?"}]},
    ]
    assert plain == anthropic.to_chat(unmarked) and "cache_control" not in str(plain)
    assert anthropic.without_cache_control(plain) is plain


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


def test_anthropic_stream_holds_what_arrives_while_a_tool_call_is_unfinished() -> None:
    """Text and another call's fragments that arrive inside a tool call's unfinished arguments wait for
    it to complete; a call the answer leaves unfinished is still sent whole, each in one block."""
    s = anthropic.MessageStream("m", "msg_1")
    events = s.feed(_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}))
    events += s.feed(_chunk({"content": "hel"}))
    events += s.feed(_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"y"'}}]}))
    events += s.feed(_chunk({"content": "lo"}))
    events += s.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}))
    events += s.feed(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": ":2"}}]}, "tool_calls"))
    events += s.finish()
    blocks: list[tuple[str, str]] = []
    for e in events:
        if e["type"] == "content_block_start":
            assert e["index"] == len(blocks)
            blocks.append((e["content_block"]["type"], ""))
        elif e["type"] == "content_block_delta":
            assert e["index"] == len(blocks) - 1
            kind, text = blocks[-1]
            blocks[-1] = (kind, text + (e["delta"].get("text") or e["delta"].get("partial_json") or ""))
    assert blocks == [("tool_use", '{"x":1}'), ("text", "hello"), ("tool_use", '{"y":2')]
    assert [e["type"] for e in events].count("content_block_stop") == 3


MIXED = {
    "model": "m",
    "max_tokens": 9,
    "system": "sys",
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "ok"},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "and"},
                                     {"type": "tool_result", "tool_use_id": "t1", "content": "r"}]},
    ],
}


@pytest.mark.parametrize(
    ("chat_param", "field"),
    [
        ("messages[0]", "system"),
        ("messages[0].content", "system"),
        ("messages[1].content[1].image_url.url", "messages[0].content[1].source"),
        ("messages[1].content[0].text", "messages[0].content[0].text"),
        ("messages[2].content", "messages[1].content"),
        ("messages[2].tool_calls[0].function.name", "messages[1].content[2].name"),
        ("messages[2].tool_calls[0].function.arguments", "messages[1].content[2].input"),
        ("messages[3].tool_call_id", "messages[2].content[1].tool_use_id"),
        ("messages[3].content", "messages[2].content[1].content"),
        ("messages[4]", "messages[2]"),
        ("messages[9]", "messages"),
        ("tools[0].function.name", "tools[0].name"),
        ("tools[0].function.parameters", "tools[0].input_schema"),
        ("tool_choice.function.name", "tool_choice.name"),
        ("stop", "stop_sequences"),
        ("max_tokens", "max_tokens"),
        ("stream_options.include_usage", "stream"),
    ],
)
def test_anthropic_caller_field_maps_a_chat_parameter_back(chat_param: str, field: str) -> None:
    chat, origins = anthropic.translate(MIXED)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert anthropic.caller_field(chat_param, origins) == field


def test_anthropic_caller_error_renames_the_param_in_the_message_too() -> None:
    _, origins = anthropic.translate(MIXED)
    err = anthropic.caller_error(
        APIError(400, "Invalid value for 'tools[0].function.name': too long.", param="tools[0].function.name"),
        origins)
    assert (err.param, err.message) == ("tools[0].name", "Invalid value for 'tools[0].name': too long.")
    err = anthropic.caller_error(APIError(400, "No deployment fits.", param="max_tokens"), origins)
    assert err.message == "max_tokens: No deployment fits."


@pytest.mark.parametrize(
    ("upstream", "says"),
    [
        ("This model's maximum context length is 100 tokens. However, you requested 130 tokens "
         "(90 in the messages, 40 in the completion).",
         "input length and `max_tokens` exceed context limit: 90 + 40 > 100"),
        ("This model's maximum context length is 100 tokens. However, you requested 130 tokens "
         "(130 in the messages, 0 in the completion).", "prompt is too long: 130 tokens > 100 maximum"),
        ("'max_tokens' or 'max_completion_tokens' is too large: 40. This model's maximum context length is 100 "
         "tokens and your request has 90 input tokens (40 > 100 - 90).",
         "input length and `max_tokens` exceed context limit: 90 + 40 > 100"),
        ("This model's maximum context length is 100 tokens. However, your request has 130 input tokens. "
         "Please reduce the length of the input messages.", "prompt is too long: 130 tokens > 100 maximum"),
        ("too long", "input length and `max_tokens` exceed this model's context limit"),
    ],
)
def test_anthropic_context_length_errors_in_anthropics_words(upstream: str, says: str) -> None:
    err = anthropic.caller_error(APIError(400, upstream, code="context_length_exceeded"), [])
    assert err.message.startswith(says) and "completion" not in err.message


def test_anthropic_stop_sequence_only_when_the_upstream_names_one_of_the_requests() -> None:
    stops = ["END", "STOP"]
    assert anthropic.stop_of("stop", "END", stops) == ("stop_sequence", "END")
    assert anthropic.stop_of("stop", "OTHER", stops) == ("end_turn", None)
    assert anthropic.stop_of("stop", None, stops) == ("end_turn", None)
    assert anthropic.stop_of("stop", 128001, stops) == ("end_turn", None)  # vLLM: a stop token's id
    assert anthropic.stop_of("length", "END", stops) == ("max_tokens", None)
    s = anthropic.MessageStream("m", "msg_1", stops)
    s.start()
    s.feed(_chunk({"content": "a"}))
    s.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "STOP"}]})
    assert s.finish()[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}


@pytest.mark.parametrize(
    ("upstream", "param", "says"),
    [
        ("This model's maximum context length is 100 tokens. However, you requested 130 tokens "
         "(90 in the messages, 40 in the completion).", "max_output_tokens",
         "Your input (90 tokens) and max_output_tokens (40) exceed the context window of this model (100 tokens)"),
        ("This model's maximum context length is 100 tokens. However, you requested 130 tokens "
         "(90 in the prompt, 40 in the completion). Please reduce the length of the prompt or of the completion.",
         "max_output_tokens", "Your input (90 tokens) and max_output_tokens (40)"),
        ("This model's maximum context length is 100 tokens. However, your prompt has 130 tokens.", "input",
         "Your input exceeds the context window of this model (130 tokens > 100)"),
        ("This model's maximum context length is 100 tokens. However, your request has 130 input tokens. "
         "Please reduce the length of the input messages.", "input",
         "Your input exceeds the context window of this model (130 tokens > 100)"),
        ("too long", "input", "Your input exceeds the context window of this model. Please adjust your input"),
    ],
)
def test_responses_context_length_errors_name_input_or_max_output_tokens(
    upstream: str, param: str, says: str
) -> None:
    err = responses.caller_error(APIError(400, upstream, param="messages", code="context_length_exceeded"))
    assert err.param == param and err.message.startswith(says), err.message
    assert "completion" not in err.message and "messages" not in err.message
    assert err.code == "context_length_exceeded" and err.status == 400


def test_anthropic_context_length_errors_of_the_local_engine_in_anthropics_words() -> None:
    says = anthropic.caller_error(APIError(400, "This model's maximum context length is 100 tokens. However, "
                                                "your prompt has 130 tokens.", code="context_length_exceeded"), [])
    assert says.message.startswith("prompt is too long: 130 tokens > 100 maximum")


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "tool_use", "id": "t1", "input": {}}, "messages[1].content[0].name"),
        ({"type": "tool_use", "id": "t1", "name": "", "input": {}}, "messages[1].content[0].name"),
        ({"type": "tool_use", "name": "f", "input": {}}, "messages[1].content[0].id"),
        ({"type": "tool_use", "id": "t1", "name": "f", "input": [1]}, "messages[1].content[0].input"),
    ],
)
def test_anthropic_tool_use_blocks_without_id_name_or_object_input_are_refused(
    block: dict, param: str
) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [block]},
        {"role": "user", "content": "go on"}]}
    with pytest.raises(APIError) as caught:
        anthropic.translate(body)
    assert caught.value.status == 400 and caught.value.param == param and param in caught.value.message
