"""The gateway's in-process backend: built by the registry from a DeploymentConfig, Backend protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import UpstreamCall, UpstreamError
from backends.local_backend import LocalBackend
from backends.registry import UnsupportedProviderError, build_backend
from common.types import DeploymentConfig
from local_model.engine import Engine, EngineConfig
from tests.support.wait import await_until


def dep(upstream: str, **kw: object) -> DeploymentConfig:
    return DeploymentConfig(name="jamba-local", model="jamba", provider="local", upstream_model=upstream,
                            context_window=2048, **kw)


def chat(body_extra: dict | None = None, **kw: object) -> UpstreamCall:
    body = {"model": "ignored", "messages": [{"role": "user", "content": "Hello hybrid"}], "max_tokens": 6,
            "temperature": 0, **(body_extra or {})}
    return UpstreamCall(kind="chat", body=body, timeout_s=60, **kw)  # type: ignore[arg-type]


async def test_registry_builds_local_backend_and_it_serves(tiny_ckpt: Path) -> None:
    backend = build_backend(dep(str(tiny_ckpt), max_concurrency=8))
    assert isinstance(backend, LocalBackend) and backend.name == "jamba-local"
    assert backend.engine.plan.num_slots == 8 and backend.engine.plan.max_model_len == 2048
    try:
        resp = await backend.complete(chat())
        assert resp.status == 200 and resp.body["object"] == "chat.completion"
        text = resp.body["choices"][0]["message"]["content"]
        assert resp.usage.prompt_tokens > 0 and 1 <= resp.usage.completion_tokens <= 6
        chunks = [c async for c in backend.stream(chat())]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert streamed == text
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == resp.usage.completion_tokens
        comp = await backend.complete(UpstreamCall(kind="completion", body={"model": "x", "prompt": "The quick",
                                                                            "max_tokens": 3}, timeout_s=30))
        assert comp.body["object"] == "text_completion"
        sig = backend.load_signals()
        assert sig["running"] == 0 and sig["free_slots"] == sig["total_ssm_slots"] == 8
    finally:
        await backend.aclose()
    assert not backend.engine.running


async def test_errors_map_to_upstream_kinds(tiny_ckpt: Path) -> None:
    engine = Engine.from_checkpoint(tiny_ckpt, EngineConfig(memory_budget_mb=8, max_num_seqs=1, max_queue=1,
                                                            block_size=8, max_model_len=512))
    backend = LocalBackend(engine, name="l")
    try:
        with pytest.raises(UpstreamError) as e:
            await backend.complete(chat({"temperature": 9}))
        assert e.value.kind == "bad_request" and not e.value.retryable
        # the parameter at fault travels in an OpenAI-shaped body, which the gateway's error keeps
        assert e.value.body == {"error": {"param": "temperature"}}
        with pytest.raises(UpstreamError) as e:
            await backend.complete(chat({"stop": ""}))
        assert e.value.body == {"error": {"param": "stop"}}
        with pytest.raises(UpstreamError) as e:
            await backend.complete(UpstreamCall(kind="completion", body={"model": "x", "prompt": [5] * 600},
                                                timeout_s=30))
        assert e.value.kind == "context_window" and e.value.body == {"error": {"param": "prompt"}}
        # a prompt that fits, with an explicit output limit past the context: refused, not cut short
        with pytest.raises(UpstreamError) as e:
            await backend.complete(chat({"max_tokens": 600}))
        assert e.value.kind == "context_window" and "600 in the completion" in e.value.message
        # One running + one queued fill the engine: the third is refused before its first chunk.
        long = chat({"max_tokens": 300, "ignore_eos": True})
        first, second = backend.stream(long), backend.stream(long)
        assert (await anext(first))["choices"][0]["delta"]["role"] == "assistant"
        # admitted: no longer counts against the queue
        await await_until(lambda: engine.load_signals().running >= 1, 10, what="the first stream admitted")
        await anext(second)
        with pytest.raises(UpstreamError) as e:
            await anext(backend.stream(chat()))
        assert e.value.kind == "overloaded" and e.value.retryable and e.value.retry_after_s == 1.0
        await first.aclose()
        await second.aclose()
        with pytest.raises(UpstreamError) as e:
            await backend.complete(UpstreamCall(kind="chat", body=long.body, timeout_s=0.05))
        assert e.value.kind == "timeout" and e.value.reason == "total timeout after 0.05s"
        with pytest.raises(UpstreamError) as e:
            await backend.complete(UpstreamCall(kind="embedding", body={"model": "x", "input": "a"}, timeout_s=5))
        assert e.value.kind == "bad_request"
    finally:
        await backend.aclose()
    assert engine.allocator.num_used == 0


def test_missing_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedProviderError, match="local"):
        build_backend(dep(str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="api_base"):
        build_backend(dep(str(tmp_path), api_base="http://127.0.0.1:1"))


def test_shipped_resolves_through_env(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from local_model.engine.checkpoint import resolve_checkpoint

    monkeypatch.setenv("HYBRIDGATE_LOCAL_MODEL_DIR", str(tiny_ckpt))
    assert resolve_checkpoint("shipped") == tiny_ckpt


async def test_the_local_servers_full_queue_reads_as_overloaded_over_http(tiny_ckpt: Path) -> None:
    """`local-model serve` (the gateway's child process, or a server of its own reached as an
    OpenAI-compatible upstream) answers a full queue 503 with code "overloaded": the same busy, not broken
    kind as in-process, never a server error that counts against the deployment's breaker."""
    import httpx

    from backends.openai_compatible import OpenAICompatibleBackend
    from local_model.server import create_app
    from tests.support.harness import ServerThread

    engine = Engine.from_checkpoint(tiny_ckpt, EngineConfig(memory_budget_mb=8, max_num_seqs=1, max_queue=1,
                                                            block_size=8, max_model_len=512), model_name="tiny")
    long = chat({"model": "tiny", "max_tokens": 300, "ignore_eos": True, "stream": True}).body
    with ServerThread(create_app(engine)) as srv:
        backend = OpenAICompatibleBackend("l", srv.url + "/v1")
        try:
            async with (
                httpx.AsyncClient(base_url=srv.url, timeout=60) as client,
                client.stream("POST", "/v1/chat/completions", json=long) as first,
            ):
                assert first.status_code == 200
                await await_until(lambda: engine.load_signals().running == 1, 10, what="the first admitted")
                async with client.stream("POST", "/v1/chat/completions", json=long) as second:
                    assert second.status_code == 200
                    await await_until(lambda: engine.load_signals().queue_depth == 1, 10, what="one queued")
                    with pytest.raises(UpstreamError) as e:
                        await backend.complete(chat({"model": "tiny"}))
                    assert e.value.kind == "overloaded" and e.value.retryable and e.value.status == 503
                    assert e.value.retry_after_s == 1.0
        finally:
            await backend.aclose()
