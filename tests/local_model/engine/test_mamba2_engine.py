"""The serving engine over the Mamba-2 hybrid families (one checkpoint per family), in-process and
through `hybridgate local-model serve`: 32 batched or concurrent greedy streams equal each sequence
alone, prefix-cache hits are identical and skip the cached prefill, and a sequence's SSM memory does not
grow with its length."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import local_model
from local_model.engine import Engine, EngineConfig, SamplingParams
from tests.support.engine import parse_metrics
from tests.support.mamba2 import ENGINE_CASES, VOCAB, save_case
from tests.support.net import free_port

GREEDY = dict(temperature=0.0)
ROOT = Path(__file__).resolve().parents[3]


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@dataclass
class Served:
    path: Path
    lm: Any  # local_model.LocalModel
    prompts: list[list[int]]  # 32 prompts of 1..45 tokens
    alone: list[list[int]]  # each prompt's 5 greedy tokens, computed alone with the model's own cache


@pytest.fixture(scope="module", params=ENGINE_CASES)
def fam(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Served:
    path = tmp_path_factory.mktemp(request.param)
    save_case(request.param, path, seed=ENGINE_CASES.index(request.param))
    lm = local_model.load(path)
    prompts = [prompt(1 + (7 * i) % 45, seed=i) for i in range(32)]
    return Served(path, lm, prompts, [lm.greedy(p, 5, stop_ids=[]) for p in prompts])


def engine_for(lm: Any, **cfg: Any) -> Engine:
    base = dict(
        memory_budget_mb=8,
        max_num_seqs=32,
        block_size=8,
        prefill_chunk_tokens=64,
        snapshot_interval=32,
        max_model_len=1024,
    )
    return Engine(lm.module, lm.tokenizer, EngineConfig(**{**base, **cfg}), model_name="m")


def test_32_batched_streams_equal_each_alone(fam: Served) -> None:
    engine = engine_for(fam.lm)
    params = SamplingParams(max_tokens=5, ignore_eos=True, **GREEDY)
    streams = [engine.submit_sync(p, params) for p in fam.prompts]
    engine.run_until_idle()
    assert [s.result().choices[0].token_ids for s in streams] == fam.alone
    assert engine.allocator.num_used == 0 and engine.slots.num_free == engine.slots.num_slots


def test_prefix_cache_hit_is_identical_and_skips_prefill(fam: Served) -> None:
    lm = fam.lm
    engine = engine_for(lm)
    system = prompt(70, 7)
    first = system + prompt(5, 8)
    cold = engine.submit_sync(first, SamplingParams(max_tokens=8, ignore_eos=True, **GREEDY))
    engine.run_until_idle()
    assert engine.stats.prefill_tokens == len(first)
    warm = engine.submit_sync(first, SamplingParams(max_tokens=8, ignore_eos=True, **GREEDY))
    engine.run_until_idle()
    hit = (len(first) - 1) // 8 * 8
    assert warm.result().usage.cached_tokens == hit
    assert engine.stats.prefill_tokens == 2 * len(first) - hit
    expected = lm.greedy(first, 8, stop_ids=[])
    assert cold.result().choices[0].token_ids == warm.result().choices[0].token_ids == expected
    other = system + prompt(9, 9)  # same "system prompt": reuses the snapshot at 64 (snapshot_interval 32)
    s = engine.submit_sync(other, SamplingParams(max_tokens=8, ignore_eos=True, **GREEDY))
    engine.run_until_idle()
    assert s.result().usage.cached_tokens == 64
    assert s.result().choices[0].token_ids == lm.greedy(other, 8, stop_ids=[])


def test_ssm_memory_per_sequence_is_constant_in_length(fam: Served) -> None:
    lm = fam.lm
    engine = engine_for(lm, max_num_seqs=2)
    seen = {}
    for n in (20, 600):
        s = engine.submit_sync(prompt(n, n), SamplingParams(max_tokens=2, ignore_eos=True, **GREEDY))
        with torch.inference_mode():
            while not engine.running_sequences() or engine.running_sequences()[0].num_generated < 1:
                engine.step()
        seen[n] = engine.sequence_memory_bytes(engine.running_sequences()[0])
        engine.run_until_idle()
        assert s.result().usage.prompt_tokens == n
    cfg = lm.config
    slot_bytes = sum(st.conv[0].nbytes + st.ssm[0].nbytes for st in engine.slots.states)
    assert seen[20][0] == seen[600][0] == slot_bytes == engine.ssm_bytes_per_sequence()
    assert len(engine.slots.states) == len(cfg.mamba_layer_ids)
    per_token = 2 * len(cfg.attention_layer_ids) * cfg.num_key_value_heads * cfg.attn_head_dim * 4
    assert engine.kv_bytes_per_token() == per_token
    assert seen[600][1] == 600 // 8 * 8 * per_token


# ============================================================================ `hybridgate local-model serve`


@pytest.fixture(scope="module")
def cli_server(fam: Served) -> Iterator[str]:
    """`hybridgate local-model serve --checkpoint DIR` in a subprocess, on a free port."""
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "local-model", "serve", "--checkpoint", str(fam.path),
           "--port", str(port), "--model-name", "m2", "--memory-mb", "16", "--max-num-seqs", "32", "--threads",
           "1", "--max-model-len", "1024", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"server did not start: {out[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


async def stream_completion(client: httpx.AsyncClient, ids: list[int]) -> str:
    body = {
        "model": "m2",
        "prompt": ids,
        "max_tokens": 5,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    text = ""
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
    return text


async def stream_chat(client: httpx.AsyncClient, text: str) -> tuple[str, dict[str, Any]]:
    body = {"model": "m2", "messages": [{"role": "user", "content": text}], "max_tokens": 5, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    out, usage = "", {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                ev = json.loads(line[6:])
                if ev["choices"]:
                    out += ev["choices"][0]["delta"].get("content") or ""
                if ev.get("usage"):
                    usage = ev["usage"]
    return out, usage


async def test_cli_serve_32_concurrent_streams_and_prefix_hits(cli_server: str, fam: Served) -> None:
    """Through `hybridgate local-model serve`: 32 concurrent streamed completions equal each prompt's
    greedy tokens alone; a repeated long chat prompt is a prefix hit in /metrics, skips that prefill and
    answers the same."""
    tok = fam.lm.tokenizer
    long = " ".join(["state", "space", "mamba", "attention", "hybrid", "cache", "prefix", "quick", "fox"] * 6)
    async with httpx.AsyncClient(base_url=cli_server, timeout=120) as client:
        got = await asyncio.gather(*(stream_completion(client, p) for p in fam.prompts))
        assert got == [tok.decode(a) for a in fam.alone]
        first, _ = await stream_chat(client, long)
        mid = parse_metrics((await client.get("/metrics")).text)
        second, usage = await stream_chat(client, long)
        after = parse_metrics((await client.get("/metrics")).text)
    ids = tok.apply_chat_template([{"role": "user", "content": long}], tokenize=True)
    assert first == second == tok.decode(fam.lm.greedy(ids, 5))
    hit = (
        after["local_model_prefix_cache_hit_tokens_total"] - mid["local_model_prefix_cache_hit_tokens_total"]
    )
    assert hit > 0 and usage["prompt_tokens_details"]["cached_tokens"] == hit
    prefilled = after["local_model_prefill_tokens_total"] - mid["local_model_prefill_tokens_total"]
    assert prefilled == usage["prompt_tokens"] - hit
