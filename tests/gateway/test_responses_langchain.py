"""langchain-openai's `ChatOpenAI(use_responses_api=True)` through a running gateway (the Responses
API translated to the fake provider's chat completions): a plain answer with usage, a stream, and a
tool call bound with `bind_tools`, parsed into `tool_calls` as LangChain agents read them."""

from __future__ import annotations

import pytest

from tests.support.harness import GatewayThread

langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is in the dev extras")


def chat_model(gw: GatewayThread) -> langchain_openai.ChatOpenAI:
    return langchain_openai.ChatOpenAI(
        model="fake-model", base_url=gw.base_url + "/v1", api_key="anything", use_responses_api=True,
        max_retries=0, timeout=20,
    )


def test_invoke_answers_with_text_and_usage(gateway: GatewayThread) -> None:
    msg = chat_model(gateway).invoke("hello from langchain")
    assert msg.text == "hello from langchain"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 0
    assert msg.response_metadata["id"].startswith("resp_") and msg.response_metadata["model_name"] == "fake-model"


def test_stream_gives_the_text_in_pieces(gateway: GatewayThread) -> None:
    chunks = list(chat_model(gateway).stream("one two three"))
    assert len(chunks) > 1
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.text == "one two three"


def test_bound_tool_comes_back_as_a_tool_call(gateway: GatewayThread) -> None:
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    msg = chat_model(gateway).bind_tools([get_weather]).invoke("weather in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    assert isinstance(msg.tool_calls[0]["args"].get("city"), str) and msg.tool_calls[0]["id"]
