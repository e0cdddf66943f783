"""The fake provider speaks OpenAI's and Anthropic's shapes exactly enough for the official SDKs,
and every fault does what it says."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time

import anthropic
import httpx
import openai
import pytest

from backends.fake_provider import (
    FakeProvider,
    FakeProviderConfig,
    FakeProviderProcess,
    FakeProviderThread,
    count_tokens,
    tokenize,
)
from backends.fake_provider.faults import Fault, FaultSpecError, parse_fault

MSG = [{"role": "user", "content": "hello there general kenobi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"enum": ["c", "f"]},
                },
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object", "properties": {}}}},
]


def client(fp: FakeProvider, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fp.base_url, api_key=kw.pop("api_key", "sk-test"), max_retries=0, **kw)


# -- tokenizer and fault specs ------------------------------------------------------------------


def test_tokenize_round_trips_and_counts() -> None:
    text = "Hello world, supercalifragilistic  end "
    toks = tokenize(text)
    assert "".join(toks) == text
    assert count_tokens(text) == len(toks)
    assert all(len(t.strip()) <= 8 for t in toks)
    assert count_tokens("") == 0


def test_parse_fault_grammar() -> None:
    f = parse_fault("429:2.5; latency:100, cut:3")
    assert (f.status, f.retry_after_s, f.latency_s, f.cut_after) == (429, 2.5, 0.1, 3)
    assert parse_fault("503").status == 503
    assert parse_fault("error:401").status == 401
    assert parse_fault("429").retry_after_s == 1.0
    assert parse_fault("hang").hang and parse_fault("malformed").malformed
    assert parse_fault("stall:2").stall_after == 2 and parse_fault("tokens:7").reply_tokens == 7
    assert parse_fault("") == Fault() and parse_fault(None).is_noop()
    assert parse_fault("500").merged(parse_fault("latency:5")) == Fault(status=500, latency_s=0.005)
    for bad in ("nope", "latency", "error:200", "latency:-1", "cut:x"):
        with pytest.raises(FaultSpecError):
            parse_fault(bad)


# -- OpenAI chat ----------------------------------------------------------------------------------


async def test_chat_non_stream_shape(fake: FakeProvider) -> None:
    r = await client(fake).chat.completions.create(model="fake-model", messages=MSG)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "fake-model"
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == "hello there general kenobi"
    assert c.finish_reason == "stop"
    assert r.usage.completion_tokens == count_tokens(c.message.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens > count_tokens(MSG[0]["content"])  # includes per-message overhead


async def test_chat_stream_with_usage(fake: FakeProvider) -> None:
    stream = await client(fake).chat.completions.create(
        model="fake-model", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there general kenobi"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count_tokens(text)
    assert all(c.usage is None for c in chunks[:-1])


async def test_chat_stream_without_usage_has_no_usage_chunk(fake: FakeProvider) -> None:
    async with httpx.AsyncClient() as hc:
        r = await hc.post(
            fake.base_url + "/chat/completions", json={"model": "m", "messages": MSG, "stream": True}
        )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        obj = json.loads(e.removeprefix("data: "))
        assert "usage" not in obj and obj["choices"]


async def test_vllm_stop_reason_names_the_stop_string_that_ended_a_choice() -> None:
    body = {"model": "fake-model", "messages": MSG, "stop": ["general", "zzz"]}
    async with FakeProvider(vllm_stop_reason=True) as fp, httpx.AsyncClient(base_url=fp.base_url) as http:
        choice = (await http.post("/chat/completions", json=body)).json()["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "general"
        r = await http.post("/chat/completions", json={**body, "stream": True})
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        last = chunks[-1]["choices"][0]
        assert last["finish_reason"] == "stop" and last["stop_reason"] == "general"
        unstopped = (await http.post("/chat/completions", json={**body, "stop": ["zzz"]})).json()["choices"][0]
        assert "stop_reason" in unstopped and unstopped["stop_reason"] is None
    async with FakeProvider() as fp, httpx.AsyncClient(base_url=fp.base_url) as http:  # OpenAI's shape: no such key
        assert "stop_reason" not in (await http.post("/chat/completions", json=body)).json()["choices"][0]


async def test_chat_n_max_tokens_stop_seed(fake: FakeProvider) -> None:
    c = client(fake)
    r = await c.chat.completions.create(model="fake-model", messages=MSG, n=2, max_tokens=2)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert all(ch.finish_reason == "length" and ch.message.content == "hello there" for ch in r.choices)
    assert r.usage.completion_tokens == 4
    r = await c.chat.completions.create(model="fake-model", messages=MSG, stop=["general", "zzz"])
    assert r.choices[0].message.content == "hello there " and r.choices[0].finish_reason == "stop"
    lorem = [{"role": "user", "content": "write [[fault:tokens:12]]"}]
    a = await c.chat.completions.create(model="fake-model", messages=lorem, seed=1)
    b = await c.chat.completions.create(model="fake-model", messages=lorem, seed=1)
    d = await c.chat.completions.create(model="fake-model", messages=lorem, seed=2)
    assert a.choices[0].message.content == b.choices[0].message.content != d.choices[0].message.content
    assert a.usage.completion_tokens == 12


async def test_chat_tools(fake: FakeProvider) -> None:
    c = client(fake)
    r = await c.chat.completions.create(model="fake-model", messages=MSG, tools=TOOLS)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "fake", "days": 1, "unit": "c"}
    r = await c.chat.completions.create(
        model="fake-model",
        messages=MSG,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "other"}},
    )
    assert r.choices[0].message.tool_calls[0].function.name == "other"
    r = await c.chat.completions.create(model="fake-model", messages=MSG, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    # streamed tool call: the SDK's stream helper assembles the arguments
    stream = await c.chat.completions.create(model="fake-model", messages=MSG, tools=TOOLS, stream=True)
    chunks = [x async for x in stream]
    args = "".join(
        x.choices[0].delta.tool_calls[0].function.arguments or ""
        for x in chunks
        if x.choices[0].delta.tool_calls
    )
    assert json.loads(args)["city"] == "fake"
    assert chunks[0].choices[0].delta.tool_calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_chat_json_modes_and_logprobs(fake: FakeProvider) -> None:
    c = client(fake)
    r = await c.chat.completions.create(
        model="fake-model", messages=MSG, response_format={"type": "json_object"}
    )
    assert json.loads(r.choices[0].message.content) == {"reply": "hello there general kenobi"}
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}}}
    r = await c.chat.completions.create(
        model="fake-model",
        messages=MSG,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert json.loads(r.choices[0].message.content) == {"name": "fake", "ok": True}
    r = await c.chat.completions.create(model="fake-model", messages=MSG, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert [x.token for x in lp] == tokenize("hello there general kenobi")
    assert all(len(x.top_logprobs) == 3 and x.logprob < 0 for x in lp)
    stream = await c.chat.completions.create(
        model="fake-model", messages=MSG, logprobs=True, top_logprobs=2, stream=True
    )
    toks = [x.choices[0].logprobs.content[0].token async for x in stream if x.choices[0].delta.content]
    assert "".join(toks) == "hello there general kenobi"


# -- completions, embeddings, models ---------------------------------------------------------------


async def test_completions(fake: FakeProvider) -> None:
    c = client(fake)
    r = await c.completions.create(model="fake-model", prompt="say this is a test")
    assert r.object == "text_completion" and r.choices[0].text == "say this is a test"
    assert r.choices[0].finish_reason == "stop" and r.usage.prompt_tokens == 5
    r = await c.completions.create(
        model="fake-model", prompt=["one two", "three"], max_tokens=1, echo=True, logprobs=2
    )
    assert [ch.text for ch in r.choices] == ["one twoone", "threethree"]
    assert all(ch.finish_reason == "length" for ch in r.choices[:1])
    assert r.choices[0].logprobs.tokens == ["one", " two", "one"]  # the echoed prompt's tokens first
    stream = await c.completions.create(
        model="fake-model", prompt="a b c", stream=True, stream_options={"include_usage": True}
    )
    chunks = [x async for x in stream]
    assert "".join(x.choices[0].text for x in chunks if x.choices) == "a b c"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


async def _legacy_choice(fake: FakeProvider, body: dict, stream: bool) -> dict:
    """Choice 0 of a legacy completion; a stream's chunks folded as a client folds them (text joined, each
    logprobs list concatenated), with the number of chunks that carried text."""
    body = {"model": "fake-model", **body}
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        if not stream:
            return (await http.post("/completions", json=body)).json()["choices"][0]
        async with http.stream("POST", "/completions", json={**body, "stream": True}) as r:
            events = [json.loads(line[6:]) async for line in r.aiter_lines() if line.startswith("data: {")]
    parts = [c for e in events for c in e["choices"] if c["index"] == 0 and c["text"]]
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    lps = [c["logprobs"] for c in parts]
    return {"text": "".join(c["text"] for c in parts), "chunks": len(parts),
            "logprobs": {k: [v for lp in lps for v in lp[k]] for k in keys}}


@pytest.mark.parametrize("stream", [False, True])
async def test_legacy_logprobs_have_openais_shape(fake: FakeProvider, stream: bool) -> None:
    """Legacy completion logprobs as OpenAI and vLLM send them, whole or streamed: ``text_offset`` is where each
    token starts in the choice's whole text (a stream's advance chunk by chunk), ``top_logprobs`` holds the
    sampled token with its ``token_logprobs`` value, and with ``echo`` the prompt's tokens come first, the first
    with a null logprob (a token-id prompt echoed as its tokens' text); ``logprobs: 0`` gives the tokens' own."""
    for prompt, echoed in (("Add 2 and 3", "Add 2 and 3"), ([7, 8, 9], " t7 t8 t9")):
        for echo in (False, True):
            c = await _legacy_choice(fake, {"prompt": prompt, "max_tokens": 8, "logprobs": 2, "echo": echo}, stream)
            lp, text = c["logprobs"], c["text"]
            assert "".join(lp["tokens"]) == text
            assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
            assert lp["token_logprobs"][0] is None if echo else lp["token_logprobs"][0] < 0
            for tok, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
                assert top is None if value is None else (top[tok] == value and len(top) == 2)
            assert all(v is not None for v in lp["token_logprobs"][1:])
            if echo:
                prompt_count = len(tokenize(echoed))
                assert text.startswith(echoed) and lp["text_offset"][prompt_count] == len(echoed)
                if stream:  # vLLM's framing: the prompt comes with the first generated token, then one a chunk
                    assert c["chunks"] == len(lp["tokens"]) - prompt_count
    zero = (await _legacy_choice(fake, {"prompt": "Add 2 and 3", "max_tokens": 2, "logprobs": 0}, stream))["logprobs"]
    assert [list(top.items()) for top in zero["top_logprobs"]] == [
        [(tok, value)] for tok, value in zip(zero["tokens"], zero["token_logprobs"], strict=True)]
    scored = await _legacy_choice(fake, {"prompt": "Add 2 and 3", "max_tokens": 0, "echo": True, "logprobs": 1}, stream)
    assert scored["text"] == "Add 2 and 3" and scored["logprobs"]["tokens"] == tokenize("Add 2 and 3")


async def test_embeddings_float_and_base64(fake: FakeProvider) -> None:
    c = client(fake)
    r = await c.embeddings.create(model="fake-embed", input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 64
    assert math.isclose(sum(x * x for x in r.data[0].embedding), 1.0, rel_tol=1e-6)
    assert r.data[0].embedding != r.data[1].embedding and r.usage.prompt_tokens == 2
    again = await c.embeddings.create(model="fake-embed", input="alpha", encoding_format="float")
    assert again.data[0].embedding == r.data[0].embedding  # deterministic
    sdk_default = await c.embeddings.create(
        model="fake-embed", input="alpha", dimensions=8
    )  # SDK asks for base64
    assert len(sdk_default.data[0].embedding) == 8
    async with httpx.AsyncClient() as hc:
        raw = await hc.post(
            fake.base_url + "/embeddings", json={"model": "e", "input": "alpha", "encoding_format": "base64"}
        )
    b64 = raw.json()["data"][0]["embedding"]
    vec = struct.unpack("<64f", base64.b64decode(b64))
    assert all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(vec, r.data[0].embedding, strict=True)
    )
    tok = await c.embeddings.create(model="fake-embed", input=[[1, 2, 3]], encoding_format="float")
    assert tok.usage.prompt_tokens == 3


async def test_models(fake: FakeProvider) -> None:
    models = await client(fake).models.list()
    assert {m.id for m in models.data} == {"fake-model", "fake-small"}
    one = await client(fake).models.retrieve("fake-model")
    assert one.id == "fake-model"


# -- errors as the SDK sees them ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "exc", "status"),
    [
        ("429:3", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("503", openai.InternalServerError, 503),
        ("error:401", openai.AuthenticationError, 401),
        ("error:403", openai.PermissionDeniedError, 403),
        ("error:404", openai.NotFoundError, 404),
        ("error:400", openai.BadRequestError, 400),
    ],
)
async def test_error_statuses_raise_sdk_classes(
    fake: FakeProvider, spec: str, exc: type, status: int
) -> None:
    with pytest.raises(exc) as ei:
        await client(fake).chat.completions.create(
            model="fake-model", messages=MSG, extra_headers={"x-fake-fault": spec}
        )
    assert ei.value.status_code == status
    if status == 429:
        assert ei.value.response.headers["retry-after"] == "3"
        assert ei.value.response.headers["retry-after-ms"] == "3000"
        assert ei.value.code == "rate_limit_exceeded"


async def test_context_window_per_model(fake: FakeProvider) -> None:
    c = client(fake)
    long = [{"role": "user", "content": "word " * 600}]
    await c.chat.completions.create(model="fake-model", messages=long)  # 8192 window: fine
    with pytest.raises(openai.BadRequestError) as ei:
        await c.chat.completions.create(model="fake-small", messages=long)  # 512 window
    assert ei.value.code == "context_length_exceeded" and "maximum context length is 512" in ei.value.message
    with pytest.raises(openai.BadRequestError):  # max_tokens counts against the window
        await c.chat.completions.create(model="fake-small", messages=MSG, max_tokens=600)
    with pytest.raises(openai.BadRequestError) as ei:
        await c.embeddings.create(model="fake-small", input="word " * 600)
    assert ei.value.code == "context_length_exceeded"


async def test_content_filter_and_forced_context_errors(fake: FakeProvider) -> None:
    c = client(fake)
    with pytest.raises(openai.BadRequestError) as ei:
        await c.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "[[fault:content_filter]]"}]
        )
    assert ei.value.code == "content_filter"
    with pytest.raises(openai.BadRequestError) as ei:
        await c.chat.completions.create(
            model="fake-model", messages=MSG, extra_headers={"x-fake-fault": "context_length"}
        )
    assert ei.value.code == "context_length_exceeded"


async def test_auth_and_strict_models() -> None:
    async with FakeProvider(api_key="sk-right", strict_models=True) as fp:
        with pytest.raises(openai.AuthenticationError):
            await client(fp, api_key="sk-wrong").chat.completions.create(model="fake-model", messages=MSG)
        ok = client(fp, api_key="sk-right")
        await ok.chat.completions.create(model="fake-model", messages=MSG)
        with pytest.raises(openai.NotFoundError) as ei:
            await ok.chat.completions.create(model="gpt-nope", messages=MSG)
        assert ei.value.code == "model_not_found"


async def test_bad_fault_spec_is_a_400(fake: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError, match="bad fault spec"):
        await client(fake).chat.completions.create(
            model="m", messages=MSG, extra_headers={"x-fake-fault": "bogus"}
        )


# -- faults that are about time and connections -----------------------------------------------------


async def test_latency_and_chunk_latency(fake: FakeProvider) -> None:
    c = client(fake)
    t = time.perf_counter()
    await c.chat.completions.create(model="m", messages=MSG, extra_headers={"x-fake-fault": "latency:150"})
    assert time.perf_counter() - t >= 0.15
    t = time.perf_counter()
    stream = await c.chat.completions.create(
        model="m", messages=MSG, stream=True, extra_headers={"x-fake-fault": "chunk_latency:20"}
    )
    n = len([x async for x in stream])
    assert n == 6 and time.perf_counter() - t >= 0.1


async def test_hang_never_answers(fake: FakeProvider) -> None:
    with pytest.raises(openai.APITimeoutError):
        await client(fake, timeout=0.3).chat.completions.create(
            model="m", messages=MSG, extra_headers={"x-fake-fault": "hang"}
        )
    await asyncio.sleep(0.05)
    assert fake.stats["in_flight"] == 0  # the hanging handler was released when the client left


async def test_stream_cut_stall_and_nodone(fake: FakeProvider) -> None:
    c = client(fake)
    got = []
    with pytest.raises(httpx.RemoteProtocolError):  # the SDK lets the transport error through mid-stream
        stream = await c.chat.completions.create(
            model="m", messages=MSG, stream=True, extra_headers={"x-fake-fault": "cut:3"}
        )
        async for x in stream:
            got.append(x)
    assert len(got) == 3
    async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=0.3)) as hc:
        async with hc.stream(
            "POST",
            fake.base_url + "/chat/completions",
            json={"model": "m", "messages": MSG, "stream": True},
            headers={"x-fake-fault": "stall:2"},
        ) as r:
            buf = b""
            with pytest.raises(httpx.ReadTimeout):
                async for piece in r.aiter_raw():
                    buf += piece
        assert buf.count(b"data: ") == 2
        r = await hc.post(
            fake.base_url + "/chat/completions",
            json={"model": "m", "messages": MSG, "stream": True},
            headers={"x-fake-fault": "nodone"},
        )
        assert r.status_code == 200 and b"[DONE]" not in r.content and r.content.count(b"data: ") == 6
        r = await hc.post(
            fake.base_url + "/chat/completions",
            json={"model": "m", "messages": MSG, "stream": True},
            headers={"x-fake-fault": "error_event:2"},
        )
        events = [e for e in r.text.split("\n\n") if e]
        assert len(events) == 4 and '"error"' in events[2] and events[3] == "data: [DONE]"


async def test_non_stream_cut_and_malformed(fake: FakeProvider) -> None:
    async with httpx.AsyncClient() as hc:
        with pytest.raises(httpx.RemoteProtocolError):
            await hc.post(
                fake.base_url + "/chat/completions",
                json={"model": "m", "messages": MSG},
                headers={"x-fake-fault": "cut:1"},
            )
        r = await hc.post(
            fake.base_url + "/chat/completions",
            json={"model": "m", "messages": MSG},
            headers={"x-fake-fault": "malformed"},
        )
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content)
        r = await hc.post(
            fake.base_url + "/chat/completions",
            json={"model": "m", "messages": MSG, "stream": True},
            headers={"x-fake-fault": "malformed"},
        )
        first = r.text.split("\n\n")[0].removeprefix("data: ")
        with pytest.raises(json.JSONDecodeError):
            json.loads(first)


# -- server-wide faults, control API, stats ----------------------------------------------------------


async def test_server_faults_fail_next_and_per_model(fake: FakeProvider) -> None:
    c = client(fake)
    fake.fail_next(2, "503")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="fake-model", messages=MSG)
    await c.chat.completions.create(model="fake-model", messages=MSG)  # recovered
    fake.set_faults(models={"fake-small": "500"})
    await c.chat.completions.create(model="fake-model", messages=MSG)
    with pytest.raises(openai.InternalServerError):
        await c.chat.completions.create(model="fake-small", messages=MSG)
    fake.set_faults("429:1")
    with pytest.raises(openai.RateLimitError):
        await c.embeddings.create(model="fake-model", input="x")
    fake.clear_faults()
    await c.chat.completions.create(model="fake-small", messages=MSG)
    fake.fail_next(1, "500", model="fake-small")
    await c.chat.completions.create(model="fake-model", messages=MSG)  # other model: not consumed
    with pytest.raises(openai.InternalServerError):
        await c.chat.completions.create(model="fake-small", messages=MSG)


async def test_control_api_and_stats(fake: FakeProvider) -> None:
    c = client(fake)
    async with httpx.AsyncClient(base_url=fake.url) as hc:
        r = await hc.post(
            "/_control/faults", json={"fail_next": {"count": 1, "fault": "500"}, "default": "latency:1"}
        )
        assert r.status_code == 200 and r.json()["fail_next"]["count"] == 1
        assert r.json()["default"] == {"latency_s": 0.001}
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="fake-model", messages=MSG)
        await c.chat.completions.create(model="fake-model", messages=MSG, extra_headers={"x-trace": "t1"})
        await c.embeddings.create(model="fake-embed", input="x")
        stats = (await hc.get("/_control/stats")).json()
        assert stats["total"] == 3 and stats["faults_injected"] == 1
        assert stats["by_path"] == {"/v1/chat/completions": 2, "/v1/embeddings": 1}
        assert stats["by_model"] == {"fake-model": 2, "fake-embed": 1}
        assert stats["by_path_model"]["/v1/chat/completions"] == {"fake-model": 2}
        reqs = (await hc.get("/_control/requests")).json()
        assert reqs[1]["body"]["messages"] == MSG and reqs[1]["headers"]["x-trace"] == "t1"
        assert fake.requests[2].path == "/v1/embeddings"
        assert (await hc.post("/_control/faults", json={"default": "nonsense"})).status_code == 400
        assert (await hc.delete("/_control/faults")).json()["default"] == {}
        await hc.post("/_control/stats/reset")
        assert fake.stats["total"] == 0 and fake.requests == []
        assert (await hc.get("/health")).json() == {"status": "ok"}


# -- Anthropic messages --------------------------------------------------------------------------------


async def test_anthropic_messages_non_stream(fake: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as hc:
        r = await hc.post(
            "/v1/messages",
            json={"model": "claude-fake", "max_tokens": 100, "system": "be brief", "messages": MSG},
        )
        body = r.json()
        assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("msg_")
        assert body["content"] == [{"type": "text", "text": "hello there general kenobi"}]
        assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
        assert body["usage"]["output_tokens"] == 4 and body["usage"]["input_tokens"] > 4
        r = await hc.post("/v1/messages", json={"model": "c", "max_tokens": 2, "messages": MSG})
        assert r.json()["stop_reason"] == "max_tokens"
        r = await hc.post(
            "/v1/messages",
            json={"model": "c", "max_tokens": 50, "messages": MSG, "stop_sequences": ["general"]},
        )
        assert r.json()["stop_reason"] == "stop_sequence" and r.json()["stop_sequence"] == "general"
        tools = [
            {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
        ]
        r = await hc.post(
            "/v1/messages", json={"model": "c", "max_tokens": 50, "messages": MSG, "tools": tools}
        )
        assert r.json()["stop_reason"] == "tool_use"
        assert r.json()["content"][0]["type"] == "tool_use" and r.json()["content"][0]["input"] == {
            "q": "fake"
        }
        r = await hc.post("/v1/messages", json={"model": "c", "messages": MSG})
        assert r.status_code == 400 and r.json()["type"] == "error"
        r = await hc.post(
            "/v1/messages",
            json={"model": "c", "max_tokens": 5, "messages": MSG},
            headers={"x-fake-fault": "429:4"},
        )
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert r.headers["retry-after"] == "4"
        r = await hc.post(
            "/v1/messages",
            json={
                "model": "fake-small",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "w " * 600}],
            },
        )
        assert r.status_code == 400 and "prompt is too long" in r.json()["error"]["message"]


async def test_anthropic_messages_stream_event_sequence(fake: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as hc:
        r = await hc.post(
            "/v1/messages", json={"model": "claude-fake", "max_tokens": 100, "messages": MSG, "stream": True}
        )
    events = []
    for block in r.text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        events.append(data)
    types = [e["type"] for e in events]
    assert types == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 4 + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"]["input_tokens"] > 0
    assert (
        "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == MSG[0]["content"]
    )
    assert events[-2]["delta"]["stop_reason"] == "end_turn" and events[-2]["usage"]["output_tokens"] == 4


async def test_official_anthropic_sdk_talks_to_the_fake_provider(fake: FakeProvider) -> None:
    ac = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0)
    msg = await ac.messages.create(model="claude-fake", max_tokens=50, messages=MSG)
    assert msg.content[0].text == MSG[0]["content"]
    async with ac.messages.stream(model="claude-fake", max_tokens=50, messages=MSG) as s:
        final = await s.get_final_message()
    assert final.content[0].text == MSG[0]["content"] and final.usage.output_tokens == 4
    with pytest.raises(anthropic.RateLimitError):
        await ac.messages.create(model="c", max_tokens=5, messages=MSG, extra_headers={"x-fake-fault": "429"})


# -- other ways to run it ----------------------------------------------------------------------------------


def test_thread_helper() -> None:
    with FakeProviderThread(config=FakeProviderConfig(reply_mode="fixed", reply_text="fixed answer")) as fp:
        sync = openai.OpenAI(base_url=fp.base_url, api_key="x", max_retries=0)
        assert (
            sync.chat.completions.create(model="m", messages=MSG).choices[0].message.content == "fixed answer"
        )
        fp.fail_next(1, "500")
        with pytest.raises(openai.InternalServerError):
            sync.chat.completions.create(model="m", messages=MSG)
        fp.set_faults("error:404")
        with pytest.raises(openai.NotFoundError):
            sync.chat.completions.create(model="m", messages=MSG)
        fp.clear_faults()
        assert fp.stats["total"] == 3


def test_subprocess_helper_and_cli() -> None:
    with FakeProviderProcess(
        args=["--model", "big=100000", "--reply-mode", "lorem", "--reply-tokens", "5"]
    ) as fp:
        sync = openai.OpenAI(base_url=fp.base_url, api_key="x", max_retries=0)
        r = sync.chat.completions.create(model="big", messages=MSG)
        assert r.usage.completion_tokens == 5
        assert [m.id for m in sync.models.list().data] == ["big"]
        fp.fail_next(1, "503")
        with pytest.raises(openai.InternalServerError):
            sync.chat.completions.create(model="big", messages=MSG)
        fp.set_faults(models={"big": "error:401"})
        with pytest.raises(openai.AuthenticationError):
            sync.chat.completions.create(model="big", messages=MSG)
        fp.clear_faults()
        assert fp.stats["by_model"] == {"big": 3}
