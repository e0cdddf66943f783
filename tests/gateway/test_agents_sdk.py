"""The OpenAI Agents SDK's default model (the Responses API) runs an agent with one tool to completion
through a running gateway (upstream: the fake provider)."""

from __future__ import annotations

import pytest

from backends.fake_provider import FakeProviderThread
from tests.support.harness import GatewayThread

agents = pytest.importorskip("agents", reason="openai-agents is a dev extra (make install)")


def test_agent_with_one_tool_runs_to_completion(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    from openai import AsyncOpenAI

    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(
        AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key="anything", max_retries=0),
        use_for_tracing=False,
    )
    agents.set_default_openai_api("responses")
    agent = agents.Agent(
        name="weather", instructions="Answer with the weather.", tools=[get_weather], model="fake-model"
    )
    result = agents.Runner.run_sync(agent, "weather in Paris?", max_turns=4)
    assert calls == ["fake"]
    assert result.final_output == "weather in Paris?"
    sent = [r.body for r in fake_provider.requests() if r.path.endswith("/chat/completions")]
    assert len(sent) == 2 and sent[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": sent[-1]["messages"][-2]["tool_calls"][0]["id"],
        "content": "sunny in fake",
    }
