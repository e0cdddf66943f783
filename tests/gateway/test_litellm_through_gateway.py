"""External providers through the litellm SDK, end to end: the openai SDK → gateway → litellm →
a real Anthropic-protocol server (and an OpenAI-protocol one), streamed and not, with fallback."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import settings
from tests.support.harness import running_gateway

MSG = [{"role": "user", "content": "hello from the gateway"}]


def test_anthropic_and_openai_providers_via_litellm(sqlite_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HG_TEST_ANTHROPIC_KEY", "sk-ant-test")
    monkeypatch.setenv("HG_TEST_OPENAI_KEY", "sk-oai-test")
    with FakeProviderThread() as anth, FakeProviderThread() as oai:
        deployments = [
            {"name": "claude", "model": "claude-fake", "provider": "litellm", "upstream_model": "anthropic/claude-fake",
             "api_base": anth.url, "api_key_env": "HG_TEST_ANTHROPIC_KEY", "timeout_s": 20,
             "pricing": {"input_per_mtok": 3, "output_per_mtok": 15}},
            {"name": "gpt", "model": "claude-fake", "provider": "litellm", "upstream_model": "openai/fake-model",
             "api_base": oai.base_url, "api_key_env": "HG_TEST_OPENAI_KEY", "timeout_s": 20},
        ]
        with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
            c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=60)
            r = c.chat.completions.with_raw_response.create(model="claude-fake", messages=MSG, max_tokens=20)
            body = r.parse()
            assert body.choices[0].message.content and body.usage and body.usage.completion_tokens > 0
            assert r.headers["x-hybridgate-deployment"] == "claude"
            assert anth.stats["by_path"].get("/v1/messages") == 1
            chunks = list(c.chat.completions.create(model="claude-fake", messages=MSG, max_tokens=20, stream=True,
                                                    stream_options={"include_usage": True}))
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert chunks[-1].usage is not None
            anth.set_faults("503")  # Anthropic unavailable: the OpenAI deployment answers instead
            r = c.chat.completions.with_raw_response.create(model="claude-fake", messages=MSG, max_tokens=20)
            assert r.headers["x-hybridgate-deployment"] == "gpt"


def test_the_stop_string_an_openai_compatible_upstream_names_reaches_messages_through_litellm(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM names the stop string that ended a choice in its `stop_reason`; litellm keeps it (in a
    non-streamed answer) among the choice's provider-specific fields, and /v1/messages reports it."""
    from anthropic import Anthropic

    monkeypatch.setenv("HG_TEST_OPENAI_KEY", "sk-oai-test")
    with FakeProviderThread(vllm_stop_reason=True) as vllm:
        deployments = [{"name": "vllm", "model": "vllm-model", "provider": "litellm",
                        "upstream_model": "openai/fake-model", "api_base": vllm.base_url,
                        "api_key_env": "HG_TEST_OPENAI_KEY", "timeout_s": 20}]
        with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
            msg = Anthropic(base_url=gw.base_url, api_key="x", max_retries=0).messages.create(
                model="vllm-model", max_tokens=50, stop_sequences=["three"],
                messages=[{"role": "user", "content": "one two three four"}])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "three"


def test_messages_top_k_reaches_upstreams_through_litellm(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Messages request's `top_k` reaches an Anthropic upstream as Anthropic's `top_k` and an
    OpenAI-compatible one (vLLM) as the chat body's `top_k` (litellm's `extra_body`)."""
    from anthropic import Anthropic

    monkeypatch.setenv("HG_TEST_ANTHROPIC_KEY", "sk-ant-test")
    monkeypatch.setenv("HG_TEST_OPENAI_KEY", "sk-oai-test")
    with FakeProviderThread() as anth, FakeProviderThread() as vllm:
        deployments = [
            {"name": "claude", "model": "claude-fake", "provider": "litellm", "upstream_model": "anthropic/claude-fake",
             "api_base": anth.url, "api_key_env": "HG_TEST_ANTHROPIC_KEY", "timeout_s": 20},
            {"name": "vllm", "model": "vllm-model", "provider": "litellm", "upstream_model": "openai/fake-model",
             "api_base": vllm.base_url, "api_key_env": "HG_TEST_OPENAI_KEY", "timeout_s": 20},
        ]
        with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
            c = Anthropic(base_url=gw.base_url, api_key="x", max_retries=0)
            for model in ("claude-fake", "vllm-model"):
                c.messages.create(model=model, max_tokens=20, messages=[{"role": "user", "content": "hi"}],
                                  extra_body={"top_k": 5})
        assert [r.body.get("top_k") for r in anth.requests() if r.path == "/v1/messages"] == [5]
        assert [r.body.get("top_k") for r in vllm.requests() if r.path.endswith("/chat/completions")] == [5]


def test_a_deployment_without_a_context_window_serves_the_cost_maps(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """litellm's cost map knows gpt-4o-mini's window (128K input, 16K output): a deployment that sets no
    `context_window` serves that, in /v1/models and in routing (a 15K-token prompt to a policy is routed, not
    refused as too long for a default 8192). An explicit window wins; a model the map does not know keeps 8192."""
    import httpx

    from backends.pricing import lookup_model

    entry = lookup_model("openai/gpt-4o-mini")
    assert entry is not None
    monkeypatch.setenv("HG_TEST_OPENAI_KEY", "sk-oai-test")
    with FakeProviderThread(default_context_window=200_000) as oai:
        common = {"provider": "litellm", "api_base": oai.base_url, "api_key_env": "HG_TEST_OPENAI_KEY", "timeout_s": 20}
        deployments = [
            {"name": "mini", "model": "gpt-mini", "upstream_model": "openai/gpt-4o-mini", **common},
            {"name": "mini-pinned", "model": "gpt-mini-pinned", "upstream_model": "openai/gpt-4o-mini",
             "context_window": 4000, **common},
            {"name": "own", "model": "own-model", "upstream_model": "openai/my-own-llama", **common},
        ]
        with running_gateway(settings(tmp_path, sqlite_url, deployments, default_model="gpt-mini")) as gw:
            c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=60)
            cards = {m.id: m.model_dump() for m in c.models.list()}
            assert cards["gpt-mini"]["context_window"] == entry["max_input_tokens"] == 128_000
            assert cards["gpt-mini-pinned"]["context_window"] == 4000
            assert cards["own-model"]["context_window"] == 8192
            prompt = [{"role": "user", "content": "word " * 15_000}]
            r = httpx.post(gw.base_url + "/v1/chat/completions", timeout=60,
                           json={"model": "auto", "messages": prompt, "max_tokens": 5})
            assert r.status_code == 200, r.text
            assert r.headers["x-hybridgate-deployment"] == "mini"
            # the output limit comes with the window: more than the model can write is refused up front
            r = httpx.post(gw.base_url + "/v1/chat/completions", timeout=60,
                           json={"model": "gpt-mini", "messages": MSG, "max_tokens": 20_000})
            assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
