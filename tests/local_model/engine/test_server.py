"""The HTTP server for real: uvicorn on 127.0.0.1 (random port), concurrent SSE clients, /metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import local_model
from local_model.engine import Engine, EngineConfig
from local_model.server import create_app, load_signals
from tests.support.engine import parse_metrics, random_prompt, reference_greedy
from tests.support.harness import ServerThread

MODEL = "tiny-hybrid"


@pytest.fixture(scope="module")
def server(tiny_lm: local_model.LocalModel) -> Iterator[ServerThread]:
    cfg = EngineConfig(memory_budget_mb=32, max_num_seqs=64, block_size=8, prefill_chunk_tokens=128,
                       snapshot_interval=32, max_queue=128)
    engine = Engine(tiny_lm.module, tiny_lm.tokenizer, cfg, model_name=MODEL)
    with ServerThread(create_app(engine)) as srv:
        yield srv


async def sse_events(resp: httpx.Response) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    done = False
    async for line in resp.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
            break
        events.append(json.loads(data))
    assert done, "stream must end with [DONE]"
    return events


async def metrics(client: httpx.AsyncClient) -> dict[str, float]:
    return parse_metrics((await client.get("/metrics")).text)


def expected_text(lm: local_model.LocalModel, prompt_ids: list[int], max_tokens: int) -> tuple[str, str]:
    ids = reference_greedy(lm, prompt_ids, max_tokens)
    finish = "stop" if ids and ids[-1] in lm.config.eos_token_ids else "length"
    assert lm.tokenizer is not None
    return lm.tokenizer.decode(ids), finish


async def test_64_concurrent_streams_match_each_alone(server: ServerThread, tiny_lm: local_model.LocalModel) -> None:
    tok = tiny_lm.tokenizer
    assert tok is not None
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hybrid", "mamba", "attention", "experts", "cache", "prefix"]
    jobs: list[tuple[str, dict[str, Any], list[int]]] = []
    for i in range(64):
        text = " ".join(words[(i * 7 + k) % len(words)] for k in range(1 + (i * 37) % 60))
        max_tokens = 4 + i % 13
        if i % 2:
            body = {"model": MODEL, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            jobs.append(("/v1/completions", body, tok.encode(text)))
        else:
            msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]
            body = {"model": MODEL, "messages": msgs, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            jobs.append(("/v1/chat/completions", body, tok.apply_chat_template(msgs, tokenize=True)))

    async def run(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        async with client.stream("POST", path, json=body) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            return await sse_events(resp)

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        t0 = time.monotonic()
        results = await asyncio.gather(*(run(client, p, b) for p, b, _ in jobs))
        elapsed = time.monotonic() - t0
        m = await metrics(client)
    for (path, body, prompt_ids), events in zip(jobs, results, strict=True):
        chat = path.endswith("chat/completions")
        want_text, want_finish = expected_text(tiny_lm, prompt_ids, body["max_tokens"])
        *chunks, usage_chunk = events
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_tokens"] == len(prompt_ids)
        assert all(c["usage"] is None for c in chunks)
        assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
        if chat:
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        else:
            text = "".join(c["choices"][0]["text"] for c in chunks)
        assert text == want_text
        assert chunks[-1]["choices"][0]["finish_reason"] == want_finish
        assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert m["local_model_requests_finished_total"] >= 64
    assert m["local_model_running_sequences"] == 0
    assert elapsed < 60


async def test_prefix_cache_hits_are_counted_and_identical(server: ServerThread) -> None:
    system = "You are a careful assistant. " * 12
    body = {"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
            "max_tokens": 8, "temperature": 0}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        before = await metrics(client)
        first = (await client.post("/v1/chat/completions", json=body)).json()
        mid = await metrics(client)
        second = (await client.post("/v1/chat/completions", json=body)).json()
        after = await metrics(client)
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 100 and cached >= second["usage"]["prompt_tokens"] - 8
    hit_key = "local_model_prefix_cache_hit_tokens_total"
    assert after[hit_key] - mid[hit_key] == cached
    prefill_key = "local_model_prefill_tokens_total"
    assert after[prefill_key] - mid[prefill_key] == second["usage"]["prompt_tokens"] - cached
    assert mid[prefill_key] - before[prefill_key] == first["usage"]["prompt_tokens"] - first["usage"][
        "prompt_tokens_details"]["cached_tokens"]
    assert after["local_model_prefix_cache_hit_rate"] > 0


async def test_client_disconnect_frees_slot_and_blocks(server: ServerThread) -> None:
    body = {"model": MODEL, "prompt": random_prompt(60, 5), "max_tokens": 3000, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        base = await metrics(client)
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            n = 0
            async for line in resp.aiter_lines():
                n += line.startswith("data: ")
                if n >= 5:
                    break
            busy = await metrics(client)
            assert busy["local_model_running_sequences"] == 1
            assert busy["local_model_ssm_slots_free"] == busy["local_model_ssm_slots_total"] - 1
            assert busy["local_model_kv_blocks_free"] < busy["local_model_kv_blocks_total"]
        # Leaving the block closed the connection: the server cancels, the engine frees at its next step.
        deadline = time.monotonic() + 10
        while True:
            m = await metrics(client)
            if m["local_model_running_sequences"] == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert m["local_model_running_sequences"] == 0
    assert m["local_model_ssm_slots_free"] == m["local_model_ssm_slots_total"]
    assert m["local_model_kv_blocks_free"] == m["local_model_kv_blocks_total"]
    assert m["local_model_requests_cancelled_total"] == base["local_model_requests_cancelled_total"] + 1
    assert m["local_model_generation_tokens_total"] - base["local_model_generation_tokens_total"] < 3000


async def test_non_streamed_shapes_logprobs_n_and_stop(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        r = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5,
            "logprobs": True, "top_logprobs": 2, "n": 3, "temperature": 0.8, "seed": 7})
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        for c in body["choices"]:
            assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str)
            assert c["finish_reason"] in ("stop", "length")
            content = c["logprobs"]["content"]
            assert 1 <= len(content) <= 5 and all(len(e["top_logprobs"]) == 2 for e in content)
            assert all(e["logprob"] <= 0 and isinstance(e["bytes"], list) for e in content)
        u = body["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        again = (await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5,
            "logprobs": True, "top_logprobs": 2, "n": 3, "temperature": 0.8, "seed": 7})).json()
        assert [c["message"] for c in again["choices"]] == [c["message"] for c in body["choices"]]

        r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "The quick", "max_tokens": 30,
                                                        "temperature": 1.0, "seed": 3, "logprobs": 2})
        comp = r.json()
        choice = comp["choices"][0]
        assert comp["object"] == "text_completion"
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
        text = choice["text"]
        at = next((i for i in range(3, len(text) - 1) if text[i].isascii() and text[i].isalnum()), None)
        if at is not None:
            stopped = (await client.post("/v1/completions", json={
                "model": MODEL, "prompt": "The quick", "max_tokens": 30, "temperature": 1.0, "seed": 3,
                "stop": [text[at]]})).json()["choices"][0]
            assert stopped["finish_reason"] == "stop" and stopped["text"] == text[: text.index(text[at])]


async def test_errors_models_health(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list" and models["data"][0]["id"] == MODEL
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert set(load_signals_keys()) <= set(health.json())
        r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [], "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "temperature": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
        r = await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await client.post("/v1/completions", json={"model": MODEL, "prompt": [5] * 20_000, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "prompt"  # where a completions request holds its prompt
        r = await client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 1,
                                                              "messages": [{"role": "user", "content": "a " * 20_000}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "messages"
        r = await client.post("/v1/completions", content=b"{not json")
        assert r.status_code == 400


async def test_out_of_range_penalties_and_bias_are_400_naming_the_field(server: ServerThread) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for extra, field in (({"presence_penalty": -2.5}, "presence_penalty"),
                             ({"frequency_penalty": 3}, "frequency_penalty"),
                             ({"logit_bias": {"7": 150}}, "logit_bias"),
                             ({"logit_bias": {"99999": 1}}, "logit_bias")):
            r = await client.post("/v1/chat/completions", json={**chat, **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == field, (extra, r.text)
        r = await client.post("/v1/chat/completions", json={**chat, "presence_penalty": 1.0,
                                                              "logit_bias": {"7": -100}})
        assert r.status_code == 200


async def test_prompt_token_ids_outside_the_vocabulary_are_400_naming_the_prompt(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for prompt in ([5, 10**9], [-1]):
            r = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
            assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", (prompt, r.text)


async def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def load_signals_keys() -> list[str]:
    return ["queue_depth", "running", "free_ssm_slots", "free_kv_blocks", "tokens_per_s"]


async def test_backpressure_is_503_with_retry_after(tiny_lm: local_model.LocalModel) -> None:
    cfg = EngineConfig(memory_budget_mb=8, max_num_seqs=1, max_queue=1, block_size=8, retry_after_s=2.0)
    engine = Engine(tiny_lm.module, tiny_lm.tokenizer, cfg, model_name=MODEL)
    app = create_app(engine)
    long = {"model": MODEL, "prompt": "hello", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with ServerThread(app) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            async with client.stream("POST", "/v1/completions", json=long) as first:
                assert first.status_code == 200
                await wait_until(lambda: load_signals(app)["running"] == 1)  # admitted: no longer queued
                async with client.stream("POST", "/v1/completions", json=long) as second:
                    assert second.status_code == 200
                    signals = load_signals(app)
                    assert signals["queue_depth"] == 1 and signals["running"] == 1
                    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
                    assert r.status_code == 503
                    assert r.headers["retry-after"] == "2"
                    assert r.json()["error"]["code"] == "overloaded"
            deadline = time.monotonic() + 10
            while load_signals(app)["running"] or load_signals(app)["queue_depth"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert r.status_code == 200


async def test_openai_sdk_reads_our_shapes(server: ServerThread) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused")
    try:
        resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=4, temperature=0, logprobs=True, top_logprobs=1)
        assert resp.choices[0].logprobs is not None and resp.usage is not None
        stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=4, temperature=0, stream=True,
                                                      stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text == resp.choices[0].message.content and usage is not None
        comp = await client.completions.create(model=MODEL, prompt="The", max_tokens=3, temperature=0)
        assert comp.choices[0].finish_reason in ("stop", "length")
    finally:
        await client.close()


async def test_streamed_n_and_prompt_batches_index_choices(server: ServerThread) -> None:
    body = {"model": MODEL, "prompt": ["The quick", "Hello hybrid"], "n": 2, "max_tokens": 4, "temperature": 0.9,
            "seed": 1, "stream": True, "echo": True}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            events = await sse_events(resp)
        plain = (await client.post("/v1/completions", json={**body, "stream": False})).json()
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for e in events:
        (c,) = e["choices"]
        texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        if c["finish_reason"]:
            finishes[c["index"]] = c["finish_reason"]
    assert sorted(texts) == sorted(finishes) == [0, 1, 2, 3]
    assert texts[0].startswith("The quick") and texts[3].startswith("Hello hybrid")
    assert [c["text"] for c in plain["choices"]] == [texts[i] for i in range(4)]  # same seeds, same text
    assert plain["usage"]["completion_tokens"] <= 16
