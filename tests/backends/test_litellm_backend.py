"""The litellm backend, for real, against the fake provider: litellm's openai route (``openai/…`` with
api_base = the fake's /v1) and its anthropic route (``anthropic/…`` with api_base = the fake's root;
litellm appends /v1/messages).

All tests share one event loop and one fake provider: litellm caches its HTTP clients globally,
and a client cached on a closed per-test loop would break the next test.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from backends.base import UpstreamCall, UpstreamError
from backends.fake_provider import FakeProvider
from backends.litellm_backend import LiteLLMBackend, map_litellm_error, to_openai_dict
from backends.registry import build_backend
from backends.sse import is_usage_chunk
from common.types import DeploymentConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

BODY = {"model": "ignored", "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 50}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fp() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as p:
        yield p


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def oai(fp: FakeProvider) -> LiteLLMBackend:
    cfg = DeploymentConfig(
        name="ll-openai",
        model="m",
        provider="litellm",
        upstream_model="openai/fake-model",
        api_base=fp.base_url,
    )
    return LiteLLMBackend(cfg, api_key="sk-test")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def anth(fp: FakeProvider) -> LiteLLMBackend:
    cfg = DeploymentConfig(
        name="ll-anthropic",
        model="m",
        provider="litellm",
        upstream_model="anthropic/claude-fake",
        api_base=fp.url,
    )
    return LiteLLMBackend(cfg, api_key="sk-ant-test")


def call(
    fault: str | None = None,
    *,
    kind: str = "chat",
    body: dict[str, Any] | None = None,
    timeout: float = 5.0,
    idle: float = 5.0,
) -> UpstreamCall:
    return UpstreamCall(
        kind,
        copy.deepcopy(body or BODY),
        timeout,
        stream_idle_timeout_s=idle,  # type: ignore[arg-type]
        headers={"x-fake-fault": fault} if fault else {},
    )


async def collect(b: LiteLLMBackend, c: UpstreamCall) -> tuple[list[dict[str, Any]], UpstreamError | None]:
    got: list[dict[str, Any]] = []
    try:
        async for chunk in b.stream(c):
            got.append(chunk)
    except UpstreamError as err:
        return got, err
    return got, None


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# -- openai route -------------------------------------------------------------------------------------------


async def test_openai_route_complete(oai: LiteLLMBackend, fp: FakeProvider) -> None:
    r = await oai.complete(call())
    msg = r.body["choices"][0]["message"]
    assert msg == {"content": "one two three four", "role": "assistant"}
    assert r.body["object"] == "chat.completion" and r.body["choices"][0]["finish_reason"] == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (r.body["usage"]["prompt_tokens"], 4)
    assert "provider_specific_fields" not in str(r.body)
    sent = fp.requests[-1]
    assert sent.path == "/v1/chat/completions" and sent.model == "fake-model"
    assert sent.headers["Authorization"] == "Bearer sk-test"


async def test_openai_route_stream(oai: LiteLLMBackend) -> None:
    chunks, err = await collect(oai, call())
    assert err is None and text_of(chunks) == "one two three four"
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert is_usage_chunk(chunks[-1]) and chunks[-1]["usage"]["completion_tokens"] == 4
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)


async def test_openai_route_text_completion_and_embedding(oai: LiteLLMBackend) -> None:
    r = await oai.complete(call(kind="completion", body={"model": "x", "prompt": "a b c"}))
    assert r.body["choices"][0]["text"] == "a b c" and r.usage.completion_tokens == 3
    chunks, err = await collect(oai, call(kind="completion", body={"model": "x", "prompt": "a b c"}))
    assert (
        err is None and "".join(c["choices"][0].get("text") or "" for c in chunks if c["choices"]) == "a b c"
    )
    r = await oai.complete(call(kind="embedding", body={"model": "x", "input": ["a b", "c"]}))
    assert len(r.body["data"]) == 2 and r.usage.prompt_tokens == 3


# -- anthropic route -------------------------------------------------------------------------------------------


async def test_anthropic_route_complete(anth: LiteLLMBackend, fp: FakeProvider) -> None:
    r = await anth.complete(call())
    assert r.body["choices"][0]["message"]["content"] == "one two three four"
    assert r.body["choices"][0]["finish_reason"] == "stop"
    assert r.usage.completion_tokens == 4 and r.usage.prompt_tokens > 0
    sent = fp.requests[-1]
    assert sent.path == "/v1/messages" and sent.model == "claude-fake"
    assert sent.headers["x-api-key"] == "sk-ant-test" and sent.body["max_tokens"] == 50


async def test_anthropic_route_stream(anth: LiteLLMBackend) -> None:
    chunks, err = await collect(anth, call())
    assert err is None and text_of(chunks) == "one two three four"
    assert is_usage_chunk(chunks[-1]) and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_anthropic_route_tools(anth: LiteLLMBackend) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    r = await anth.complete(call(body={**BODY, "tools": tools}))
    choice = r.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "lookup"


# -- error mapping -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["oai", "anth"])
@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("429:2", "rate_limit"),
        ("500", "server_error"),
        ("503", "server_error"),
        ("context_length", "context_window"),
        ("content_filter", "content_policy"),
        ("error:401", "auth"),
        ("error:404", "not_found"),
        ("error:400", "bad_request"),
    ],
)
async def test_error_mapping(request: pytest.FixtureRequest, route: str, fault: str, kind: str) -> None:
    b: LiteLLMBackend = request.getfixturevalue(route)
    with pytest.raises(UpstreamError) as ei:
        await b.complete(call(fault))
    assert ei.value.kind == kind, ei.value
    if kind == "rate_limit":
        assert ei.value.retry_after_s == 2.0
    chunks, err = await collect(b, call(fault))
    assert chunks == [] and err is not None and err.kind == kind, err


@pytest.mark.parametrize("route", ["oai", "anth"])
async def test_timeouts(request: pytest.FixtureRequest, route: str) -> None:
    b: LiteLLMBackend = request.getfixturevalue(route)
    with pytest.raises(UpstreamError) as ei:
        await b.complete(call("hang", timeout=0.3))
    assert ei.value.kind == "timeout" and ei.value.reason == "total timeout after 0.3s"
    chunks, err = await collect(b, call("hang", timeout=0.3))
    assert chunks == [] and err is not None and err.kind == "timeout"
    assert err.reason == "first byte timeout after 0.3s"
    chunks, err = await collect(b, call("stall:4", timeout=2, idle=0.3))
    assert chunks and err is not None and err.kind == "stream_cut"
    assert err.reason == f"no data for 0.3s between chunks after {len(chunks)} chunk(s)"


@pytest.mark.parametrize("route", ["oai", "anth"])
async def test_stream_cut_midway(request: pytest.FixtureRequest, route: str) -> None:
    b: LiteLLMBackend = request.getfixturevalue(route)
    chunks, err = await collect(b, call("cut:5"))
    assert chunks and err is not None and err.kind == "stream_cut"
    assert text_of(chunks) and "one two three four".startswith(text_of(chunks))


async def test_connection_refused() -> None:
    cfg = DeploymentConfig(
        name="dead",
        model="m",
        provider="litellm",
        upstream_model="openai/x",
        api_base="http://127.0.0.1:9/v1",
    )
    with pytest.raises(UpstreamError) as ei:
        await LiteLLMBackend(cfg, api_key="k").complete(call())
    assert ei.value.kind == "connection"


# -- configuration ---------------------------------------------------------------------------------------------------


async def test_registry_reads_api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeProvider(api_key="sk-from-env") as keyed:
        monkeypatch.setenv("HG_TEST_FAKE_KEY", "sk-from-env")
        cfg = DeploymentConfig(
            name="k",
            model="m",
            provider="litellm",
            upstream_model="openai/fake-model",
            api_base=keyed.base_url,
            api_key_env="HG_TEST_FAKE_KEY",
        )
        b = build_backend(cfg)
        assert isinstance(b, LiteLLMBackend)
        r = await b.complete(call())
        assert r.body["choices"][0]["message"]["content"]
        monkeypatch.setenv("HG_TEST_FAKE_KEY", "wrong")
        with pytest.raises(UpstreamError) as ei:
            await build_backend(cfg).complete(call())
        assert ei.value.kind == "auth"


@pytest.mark.parametrize("value", [None, ""])
async def test_a_key_variable_that_is_unset_or_empty_is_an_auth_failure_not_an_outage(
    fp: FakeProvider, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """The OpenAI SDK under litellm refuses to start without a key ("Missing credentials"), which litellm
    reports as a 500: that is the deployment's configuration, so kind "auth" (not retried), and no request
    reaches the upstream."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if value is None:
        monkeypatch.delenv("HG_TEST_UNSET_KEY", raising=False)
    else:
        monkeypatch.setenv("HG_TEST_UNSET_KEY", value)
    cfg = DeploymentConfig(name="nokey", model="m", provider="litellm", upstream_model="openai/fake-model",
                           api_base=fp.base_url, api_key_env="HG_TEST_UNSET_KEY")
    b = build_backend(cfg)
    before = fp.stats["total"]
    with pytest.raises(UpstreamError) as ei:
        await b.complete(call())
    assert ei.value.kind == "auth" and not ei.value.retryable, ei.value
    _, err = await collect(b, call())
    assert err is not None and err.kind == "auth", err
    assert fp.stats["total"] == before


async def test_to_openai_dict_usage_chunk_shape() -> None:
    raw = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "provider_specific_fields": None,
        "choices": [{"index": 0, "delta": {"content": None, "role": None}, "finish_reason": None}],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
            "prompt_tokens_details": None,
        },
    }
    out = to_openai_dict(raw, chunk=True)
    assert out["choices"] == [] and out["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
    }
    assert "provider_specific_fields" not in out


async def test_map_unknown_exceptions() -> None:
    assert map_litellm_error(TimeoutError("t")).kind == "timeout"
    assert map_litellm_error(ConnectionResetError("r")).kind == "connection"
    assert map_litellm_error(RuntimeError("boom")).kind == "server_error"
