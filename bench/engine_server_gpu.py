"""The serving engine through its own server process (`hybridgate local-model serve`, started the way the
gateway starts it: `backends.local_subprocess.LocalServerProcess`), loaded with concurrent streamed requests.

Builds a random Jamba checkpoint (426M parameters by default: hidden 1024, 8 layers, 8 experts top-2, vocab
32000; a word-level tokenizer whose every id decodes to one word, so each generated token is one SSE delta),
starts the server on it, warms every decode batch bucket (one CUDA graph each), then measures over HTTP:

1. mixed load: ``--requests`` streamed completions submitted at once, prompt lengths uniform in
   [``--min-prompt``, ``--max-prompt``] token ids, outputs uniform in [``--min-out``, ``--max-out``] tokens
   (``ignore_eos``): output tokens/s over the whole run, p50/p99 time to first token, p50/p99 inter-token
   latency (gaps between a stream's deltas, all streams pooled);
2. shared system prompt: ``--prefix-requests`` requests of a ``--system``-token system prompt + a short user
   part, submitted at once, once with a distinct system prompt per request (nothing to share) and once
   with one shared system prompt already cached: TTFT p50/p99 of both and their ratio, prefill tokens the
   server ran (its /metrics) and the cached tokens it reported (usage.prompt_tokens_details);
3. identical outputs: ``--identical`` prompts (system + user part), each sent alone cold and then again
   alone (a prefix-cache hit): the greedy texts must be equal; TTFT of both.

Usage: python bench/engine_server_gpu.py [--json out.json]          (GPU, bf16)
       python bench/engine_server_gpu.py --tiny                       (CPU smoke run, a few seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * (len(ys) - 1) + 0.5))]


def model_config(args: argparse.Namespace):  # noqa: ANN201
    from local_model.config import JambaConfig

    if args.tiny:
        return JambaConfig.preset("tiny", vocab_size=args.vocab, max_position_embeddings=args.max_model_len)
    return JambaConfig(
        vocab_size=args.vocab, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=16, num_key_value_heads=4, attn_layer_period=8, attn_layer_offset=4,
        expert_layer_period=2, expert_layer_offset=1, num_experts=8, num_experts_per_tok=2,
        max_position_embeddings=args.max_model_len, tie_word_embeddings=False,
    )  # fmt: skip


def write_tokenizer(path: Path, vocab: int) -> None:
    """A word-level tokenizer over ``vocab`` words ``w0 .. w{vocab-1}`` (id i decodes to ``wi``)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w2", "bos_token": "w1"}))


def build_checkpoint(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from local_model.model import JambaForCausalLM
    from local_model.weights import save_checkpoint

    cfg = model_config(args)
    dev = "cuda" if args.device == "cuda" else "cpu"
    with torch.device("meta"):
        model = JambaForCausalLM(cfg).to(getattr(torch, args.dtype))
    model = model.to_empty(device=dev)
    model.reset_parameters(0, on_device=True)
    save_checkpoint(model, out, dtype=getattr(torch, args.dtype))
    write_tokenizer(out, cfg.vocab_size)
    n = sum(p.numel() for p in model.parameters())
    del model
    return {"params_m": round(n / 1e6, 1), "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers}


class Client:
    """Streamed /v1/completions with token-id prompts; one record per request."""

    def __init__(self, base_url: str, model: str, concurrency: int) -> None:
        import httpx

        self.model = model
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(600.0),
            # A fresh loopback connection per request: a pooled one that the server closes after its
            # keep-alive timeout, just as the client reuses it, fails the request (seen with 256 at once).
            limits=httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=0),
        )

    async def one(self, prompt: list[int], max_tokens: int) -> dict[str, Any]:
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        t0 = time.perf_counter()
        times: list[float] = []
        text: list[str] = []
        usage: dict[str, Any] = {}
        async with self.http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    raise RuntimeError(str(ev["error"]))
                if ev.get("usage"):
                    usage = ev["usage"]
                for ch in ev.get("choices") or []:
                    if ch.get("text"):
                        times.append(time.perf_counter())
                        text.append(ch["text"])
        end = time.perf_counter()
        return {
            "ttft": (times[0] - t0) if times else end - t0,
            "gaps": [b - a for a, b in zip(times, times[1:], strict=False)],
            "tokens": int(usage.get("completion_tokens", len(times))),
            "cached": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)),
            "text": "".join(text),
            "end": end,
            "start": t0,
        }

    async def many(self, jobs: list[tuple[list[int], int]]) -> list[dict[str, Any]]:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="requests", leave=False, file=sys.stderr)

        async def run(p: list[int], n: int) -> dict[str, Any]:
            res = await self.one(p, n)
            bar.update()
            return res

        try:
            return list(await asyncio.gather(*(run(p, n) for p, n in jobs)))
        finally:
            bar.close()

    async def metrics(self) -> dict[str, float]:
        text = (await self.http.get("/metrics")).text
        out = {}
        for line in text.splitlines():
            if line.startswith("local_model_") and " " in line:
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    async def close(self) -> None:
        await self.http.aclose()


def summarize(recs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = max(r["end"] for r in recs) - min(r["start"] for r in recs)
    toks = sum(r["tokens"] for r in recs)
    ttft = [r["ttft"] for r in recs]
    gaps = [g for r in recs for g in r["gaps"]]
    return {
        "requests": len(recs),
        "output_tokens": toks,
        "wall_s": round(wall, 2),
        "output_tok_s": round(toks / wall, 1),
        "ttft_p50_ms": round(1000 * quantile(ttft, 0.5), 1),
        "ttft_p99_ms": round(1000 * quantile(ttft, 0.99), 1),
        "itl_p50_ms": round(1000 * quantile(gaps, 0.5), 2),
        "itl_p99_ms": round(1000 * quantile(gaps, 0.99), 2),
        "itl_mean_ms": round(1000 * statistics.fmean(gaps), 2) if gaps else None,
    }


def show(out: dict[str, Any], key: str, value: Any) -> None:
    out[key] = value
    print(json.dumps({key: value}), flush=True)


async def measure(args: argparse.Namespace, base_url: str, model: str, out: dict[str, Any]) -> None:
    rng = random.Random(0)
    v = args.vocab

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, v) for _ in range(n)]

    client = Client(base_url, model, max(args.requests, args.prefix_requests))
    try:
        # Warm-up: every decode bucket's CUDA graph and the prefill kernels' shapes, outside the figures.
        t = time.perf_counter()
        n_warm = min(args.requests, args.max_num_seqs)
        await client.many([(ids(rng.randint(16, 300)), i + 1) for i in range(n_warm)])
        await client.many([(ids(n), 4) for n in (args.min_prompt, args.max_prompt // 2, args.max_prompt)])
        show(out, "warmup_s", round(time.perf_counter() - t, 1))

        # 1. mixed load
        jobs = [
            (ids(rng.randint(args.min_prompt, args.max_prompt)), rng.randint(args.min_out, args.max_out))
            for _ in range(args.requests)
        ]
        m0 = await client.metrics()
        recs = await client.many(jobs)
        m1 = await client.metrics()
        mixed = summarize(recs)
        mixed["prompt_tokens"] = sum(len(p) for p, _ in jobs)
        mixed["engine_steps"] = int(
            m1["local_model_engine_steps_total"] - m0["local_model_engine_steps_total"]
        )
        mixed["preemptions"] = int(m1["local_model_preemptions_total"] - m0["local_model_preemptions_total"])
        show(out, "mixed", mixed)

        # 2. shared system prompt: distinct system prompts (no sharing) vs one shared, cached system prompt
        users = [ids(rng.randint(args.user_min, args.user_max)) for _ in range(args.prefix_requests)]
        distinct = [(ids(args.system) + u, args.prefix_out) for u in users]
        m0 = await client.metrics()
        cold = await client.many(distinct)
        m1 = await client.metrics()
        shared_sys = ids(args.system)
        await client.one(shared_sys + ids(args.user_min), 1)  # caches the shared system prompt
        m2 = await client.metrics()
        warm = await client.many([(shared_sys + u, args.prefix_out) for u in users])
        m3 = await client.metrics()
        c, w = summarize(cold), summarize(warm)
        for d, a, b, recs_ in ((c, m0, m1, cold), (w, m2, m3, warm)):
            d["prefill_tokens_run"] = int(
                b["local_model_prefill_tokens_total"] - a["local_model_prefill_tokens_total"]
            )
            d["cached_tokens_reported"] = sum(r["cached"] for r in recs_)
        show(out, "prefix_distinct_system", c)
        show(out, "prefix_shared_system", w)
        show(out, "prefix_ttft_p50_ratio", round(c["ttft_p50_ms"] / max(w["ttft_p50_ms"], 1e-9), 2))
        show(out, "prefix_ttft_p99_ratio", round(c["ttft_p99_ms"] / max(w["ttft_p99_ms"], 1e-9), 2))

        # 3. identical outputs, one request at a time: cold, then a prefix-cache hit
        same = []
        for _ in range(args.identical):
            prompt = ids(args.system) + ids(rng.randint(args.user_min, args.user_max))
            a = await client.one(prompt, args.prefix_out)
            b = await client.one(prompt, args.prefix_out)
            same.append({
                "equal": a["text"] == b["text"], "cold_ttft_ms": round(1000 * a["ttft"], 1),
                "hit_ttft_ms": round(1000 * b["ttft"], 1), "hit_cached_tokens": b["cached"],
                "prompt_tokens": len(prompt),
            })  # fmt: skip
        show(out, "identical_alone", same)
        show(out, "identical_all_equal", all(s["equal"] for s in same))
        show(
            out,
            "alone_ttft_ratio_median",
            round(statistics.median(s["cold_ttft_ms"] / max(s["hit_ttft_ms"], 1e-9) for s in same), 2),
        )
    finally:
        await client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU, few short requests")
    ap.add_argument("--device", default=None)
    ap.add_argument("--eager", action="store_true", help="serve with eager decode steps (no CUDA graphs)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--min-prompt", type=int, default=100)
    ap.add_argument("--max-prompt", type=int, default=8192)
    ap.add_argument("--min-out", type=int, default=50)
    ap.add_argument("--max-out", type=int, default=500)
    ap.add_argument("--system", type=int, default=4096)
    ap.add_argument("--user-min", type=int, default=50)
    ap.add_argument("--user-max", type=int, default=400)
    ap.add_argument("--prefix-requests", type=int, default=64)
    ap.add_argument("--prefix-out", type=int, default=64)
    ap.add_argument("--identical", type=int, default=4)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--memory-mb", type=float, default=6000.0)
    ap.add_argument("--prefill-chunk", type=int, default=8192)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.vocab, args.requests, args.min_prompt, args.max_prompt = 512, 12, 10, 200
        args.min_out, args.max_out, args.system, args.user_min, args.user_max = 4, 16, 64, 5, 20
        args.prefix_requests, args.prefix_out, args.identical, args.max_num_seqs = 6, 8, 2, 8
        args.max_model_len, args.memory_mb, args.prefill_chunk = 512, 64.0, 256
    args.device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")

    from backends.local_subprocess import LocalServerProcess, _free_port

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dtype": args.dtype,
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "random-jamba"
        t = time.perf_counter()
        out["model"] = build_checkpoint(args, ckpt)
        print(json.dumps({"model": out["model"], "build_s": round(time.perf_counter() - t, 1)}), flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
        port = _free_port()
        argv = [
            sys.executable, "-m", "local_model.cli", "serve", "--checkpoint", str(ckpt), "--port", str(port),
            "--device", args.device, "--dtype", args.dtype, "--model-name", "bench",
            "--memory-mb", str(args.memory_mb), "--max-num-seqs", str(args.max_num_seqs),
            "--max-queue", str(4 * args.requests), "--prefill-chunk", str(args.prefill_chunk),
            "--max-model-len", str(args.max_model_len), "--log-level", "warning",
        ] + (["--no-cuda-graphs"] if args.eager else [])  # fmt: skip
        t = time.perf_counter()
        server = LocalServerProcess(argv, port).start(startup_timeout_s=600)
        show(out, "server_start_s", round(time.perf_counter() - t, 1))
        try:
            asyncio.run(measure(args, server.base_url, "bench", out))
        except Exception:
            print(f"server running: {server.running}; its stderr:\n{server.stderr_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    print(json.dumps(out, indent=1))
    path = args.json or (
        os.path.join(os.environ["OUT"], "engine_server.json") if os.environ.get("OUT") else None
    )
    if path:
        Path(path).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
