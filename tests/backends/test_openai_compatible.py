"""The direct OpenAI-compatible backend against the fake provider: success paths and every error kind."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from backends.base import UpstreamCall, UpstreamError
from backends.fake_provider import FakeProvider
from backends.openai_compatible import OpenAICompatibleBackend, error_from_status, parse_retry_after
from backends.sse import client_wants_usage, is_usage_chunk
from common.types import DeploymentConfig
from gateway.errors import from_upstream

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "one two three four five"}]}


@pytest.fixture()
async def backend(fake: FakeProvider) -> AsyncIterator[OpenAICompatibleBackend]:
    b = OpenAICompatibleBackend("fake-a", fake.base_url, api_key="sk-test")
    yield b
    await b.aclose()


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


async def collect(
    b: OpenAICompatibleBackend, c: UpstreamCall
) -> tuple[list[dict[str, Any]], UpstreamError | None]:
    got: list[dict[str, Any]] = []
    try:
        async for chunk in b.stream(c):
            got.append(chunk)
    except UpstreamError as err:
        return got, err
    return got, None


# -- success ----------------------------------------------------------------------------------------


async def test_complete_chat_completion_embedding(
    backend: OpenAICompatibleBackend, fake: FakeProvider
) -> None:
    c = call()
    r = await backend.complete(c)
    assert r.status == 200 and r.body["choices"][0]["message"]["content"] == "one two three four five"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (r.body["usage"]["prompt_tokens"], 5)
    assert c.body == BODY  # the caller's body is never mutated
    r = await backend.complete(
        call(kind="completion", body={"model": "fake-model", "prompt": "a b c", "stream": True})
    )
    assert r.body["object"] == "text_completion" and r.usage.completion_tokens == 3
    assert "stream" not in fake.requests[-1].body  # complete() never asks for a stream
    r = await backend.complete(call(kind="embedding", body={"model": "e", "input": ["x", "y"]}))
    assert len(r.body["data"]) == 2 and r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 0
    rec = fake.requests[0]
    assert rec.headers["Authorization"] == "Bearer sk-test"


async def test_stream_yields_chunks_and_usage(backend: OpenAICompatibleBackend, fake: FakeProvider) -> None:
    c = call()
    chunks, err = await collect(backend, c)
    assert err is None
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    assert text == "one two three four five"
    assert is_usage_chunk(chunks[-1]) and chunks[-1]["usage"]["completion_tokens"] == 5
    sent = fake.requests[-1].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert not client_wants_usage(c.body) and c.body == BODY  # usage asked upstream, not by the client
    chunks, err = await collect(backend, call(kind="completion", body={"model": "m", "prompt": "x y"}))
    assert err is None and "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == "x y"


async def test_connections_are_reused(backend: OpenAICompatibleBackend) -> None:
    for _ in range(5):
        await backend.complete(call())
        await collect(backend, call())
    connector = backend._get_session().connector
    assert connector is not None and sum(len(v) for v in connector._conns.values()) == 1


async def test_forwarded_headers_and_from_config(fake: FakeProvider) -> None:
    cfg = DeploymentConfig(name="d", model="m", upstream_model="fake-model", api_base=fake.base_url + "/")
    b = OpenAICompatibleBackend.from_config(cfg)
    try:
        await b.complete(UpstreamCall("chat", dict(BODY), 5, headers={"x-request-id": "abc"}))
        assert fake.requests[-1].headers["x-request-id"] == "abc"
        assert "Authorization" not in fake.requests[-1].headers
    finally:
        await b.aclose()
    with pytest.raises(ValueError, match="api_base"):
        OpenAICompatibleBackend.from_config(DeploymentConfig(name="d", model="m", upstream_model="x"))


# -- error kinds (non-stream and stream, before the first chunk) -------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        ("429:2", "rate_limit", 429),
        ("500", "server_error", 500),
        ("503", "server_error", 503),
        ("context_length", "context_window", 400),
        ("content_filter", "content_policy", 400),
        ("error:401", "auth", 401),
        ("error:403", "auth", 403),
        ("error:404", "not_found", 404),
        ("error:400", "bad_request", 400),
        ("error:422", "bad_request", 422),
        ("error:408", "timeout", 408),
    ],
)
async def test_http_error_kinds(backend: OpenAICompatibleBackend, fault: str, kind: str, status: int) -> None:
    with pytest.raises(UpstreamError) as ei:
        await backend.complete(call(fault))
    assert (ei.value.kind, ei.value.status) == (kind, status)
    assert isinstance(ei.value.body, dict) and "error" in ei.value.body
    if kind == "rate_limit":
        assert ei.value.retry_after_s == 2.0 and ei.value.retryable
    chunks, err = await collect(backend, call(fault))
    assert chunks == [] and err is not None and (err.kind, err.status) == (kind, status)


async def test_malformed(backend: OpenAICompatibleBackend) -> None:
    with pytest.raises(UpstreamError) as ei:
        await backend.complete(call("malformed"))
    assert ei.value.kind == "malformed" and ei.value.status == 200
    chunks, err = await collect(backend, call("malformed"))
    assert chunks == [] and err is not None and err.kind == "malformed"


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        b = OpenAICompatibleBackend("x", f"http://127.0.0.1:{port}/v1")
        with pytest.raises(UpstreamError) as ei:
            await b.complete(call())
        assert ei.value.kind == "connection"
        chunks, err = await collect(b, call())
        assert err is not None and err.kind == "connection"
        await b.aclose()


async def test_non_stream_body_cut_is_connection(backend: OpenAICompatibleBackend) -> None:
    with pytest.raises(UpstreamError) as ei:
        await backend.complete(call("cut:1"))
    assert ei.value.kind == "connection"


# -- timeouts -------------------------------------------------------------------------------------------


async def test_total_and_first_byte_timeouts(backend: OpenAICompatibleBackend) -> None:
    """Each says, in the gateway's fixed words the client sees (``reason``), which deadline ran out and
    its configured seconds."""
    with pytest.raises(UpstreamError) as ei:
        await backend.complete(call("hang", timeout=0.2))
    assert ei.value.kind == "timeout" and ei.value.body == {"phase": "total"}
    assert ei.value.reason == "total timeout after 0.2s"
    assert from_upstream(ei.value).message == "The model did not answer in time. Please retry. (total timeout after 0.2s)"
    with pytest.raises(UpstreamError) as ei:
        await backend.complete(call("latency:400", timeout=0.2))
    assert ei.value.kind == "timeout"
    chunks, err = await collect(backend, call("hang", timeout=0.2))
    assert chunks == [] and err is not None and err.kind == "timeout" and err.body == {"phase": "first_byte"}
    assert err.reason == "first byte timeout after 0.2s"


async def test_idle_timeout_mid_stream_is_stream_cut(backend: OpenAICompatibleBackend) -> None:
    chunks, err = await collect(backend, call("stall:3", timeout=2, idle=0.2))
    assert len(chunks) == 3 and err is not None
    assert err.kind == "stream_cut" and err.body["cause"] == "timeout" and err.body["phase"] == "idle"
    assert err.reason == "no data for 0.2s between chunks after 3 chunk(s)"
    # slow chunks under the idle limit are fine
    chunks, err = await collect(backend, call("chunk_latency:30", timeout=2, idle=0.2))
    assert err is None and len(chunks) == 8


async def test_connect_timeout() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue: further SYNs are dropped and connect() hangs
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.05)
    b = OpenAICompatibleBackend("x", f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.2)
    try:
        with pytest.raises(UpstreamError) as ei:
            await b.complete(call(timeout=3))
        if ei.value.kind == "connection":  # pragma: no cover - kernels that refuse instead of dropping
            pytest.skip("this kernel refuses connections to a full backlog")
        assert ei.value.kind == "timeout" and ei.value.body == {"phase": "connect"}
        assert ei.value.reason == "connect timeout after 0.2s"
    finally:
        await b.aclose()
        for s in fillers:
            s.close()
        srv.close()


# -- broken streams ---------------------------------------------------------------------------------------


async def test_stream_cut_midway_raises_after_yielding(backend: OpenAICompatibleBackend) -> None:
    chunks, err = await collect(backend, call("cut:3"))
    assert len(chunks) == 3 and chunks[1]["choices"][0]["delta"]["content"] == "one"
    assert err is not None and err.kind == "stream_cut" and err.retryable
    assert err.body == {"cause": "connection", "chunks_yielded": 3}
    chunks, err = await collect(backend, call("cut:0"))
    assert chunks == [] and err is not None and err.kind == "stream_cut"
    # the backend is still healthy afterwards
    chunks, err = await collect(backend, call())
    assert err is None and len(chunks) == 8


async def test_stream_without_done_and_error_event(backend: OpenAICompatibleBackend) -> None:
    chunks, err = await collect(backend, call("nodone"))
    assert len(chunks) == 8 and err is not None and err.kind == "stream_cut"
    lenient = OpenAICompatibleBackend("x", backend.base_url, require_done=False)
    chunks, err = await collect(lenient, call("nodone"))
    assert err is None and len(chunks) == 8
    await lenient.aclose()
    chunks, err = await collect(backend, call("error_event:2"))
    assert len(chunks) == 2 and err is not None and err.kind == "stream_cut"
    assert err.body["cause"] == "server_error"
    chunks, err = await collect(backend, call("error_event:0"))
    assert chunks == [] and err is not None and err.kind == "server_error"


async def test_consumer_stopping_early_releases_the_stream(backend: OpenAICompatibleBackend) -> None:
    agen = backend.stream(call("chunk_latency:10"))
    first = await agen.__anext__()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    await agen.aclose()
    r = await backend.complete(call())
    assert r.status == 200


# -- helpers ------------------------------------------------------------------------------------------------


def test_parse_retry_after_and_error_mapping() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "7"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
    vllm = b'{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you requested 5000 tokens","type":"BadRequestError","code":400}'
    assert error_from_status(400, vllm).kind == "context_window"
    assert error_from_status(413, b"too large").kind == "bad_request"
    assert error_from_status(502, b"<html>bad gateway</html>").kind == "server_error"
    err = error_from_status(400, b'{"error": {"message": "blocked", "code": "content_filter"}}')
    assert err.kind == "content_policy" and err.message == "blocked"
