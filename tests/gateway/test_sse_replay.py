"""A complete answer replayed as stream chunks parses, with the official SDK's types, back into
the same answer: every choice, tool calls with their indexes, finish reasons and usage."""

from __future__ import annotations

from openai.types.chat import ChatCompletionChunk

from gateway.sse import replay_chunks

CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": None,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop", "logprobs": None},
        {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
         "finish_reason": "tool_calls", "logprobs": None},
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
}


def test_chat_answer_replays_as_chunks_the_sdk_reads_back() -> None:
    chunks = [ChatCompletionChunk.model_validate(c) for c in replay_chunks(CHAT, include_usage=True)]
    text = {0: "", 1: ""}
    tools: list[tuple[int, str]] = []
    finish = {}
    for c in chunks:
        for ch in c.choices:
            text[ch.index] += ch.delta.content or ""
            tools += [(t.index, t.function.name) for t in ch.delta.tool_calls or [] if t.function]
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert text == {0: "hello", 1: ""} and tools == [(0, "f"), (1, "g")]
    assert finish == {0: "stop", 1: "tool_calls"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    assert all(c.id == "chatcmpl-1" and c.object == "chat.completion.chunk" for c in chunks)


def test_usage_chunk_only_when_asked_and_text_completions_replay_too() -> None:
    assert all(c["choices"] for c in replay_chunks(CHAT, include_usage=False))
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "hi there", "finish_reason": "length", "logprobs": None}]}
    chunks = replay_chunks(body, include_usage=False)  # the SDK reads these unvalidated (finish_reason null)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "hi there"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]
    assert {c["object"] for c in chunks} == {"text_completion"}
