"""CPU speed of the local hybrid model through the serving engine (no HTTP).

    .venv/bin/python bench/local_model_cpu.py                       # preset small-20m, random weights
    .venv/bin/python bench/local_model_cpu.py --checkpoint DIR|shipped --threads 2 --json
    .venv/bin/python bench/local_model_cpu.py --set hidden_size=192 --set intermediate_size=512 \
        --set num_attention_heads=6 --set expert_layer_period=2 --set vocab_size=8192   # train.py's shipped shape

What it measures (greedy, ``ignore_eos``, engine driven step by step on this thread):

* **prefill tok/s**: one ``--prompt-len`` prompt, chunked as the engine chunks it, until its first token;
* **decode tok/s, single stream**: the next ``--decode-tokens`` tokens of that one sequence
  (this is the number the shipped model must keep >= 20 on a 2-core machine);
* **decode tok/s, batched**: aggregate over ``--streams`` concurrent sequences;
* **engine overhead**: per decode step, the time outside the model forward (scheduling, paged-KV index
  building, sampling, detokenization, events), next to the forward itself;
* **raw model decode**: the model's own contiguous-cache decode loop, i.e. the floor the engine adds to.

Run pinned to two cores for numbers comparable to the target machine (``taskset -c 0,1``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_model.config import JambaConfig  # noqa: E402
from local_model.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from local_model.model import JambaForCausalLM  # noqa: E402


def load(args: argparse.Namespace) -> tuple[JambaForCausalLM, Any, str]:
    if args.checkpoint:
        import local_model
        from local_model.engine.checkpoint import resolve_checkpoint

        path = resolve_checkpoint(args.checkpoint)
        lm = local_model.load(path, dtype=getattr(torch, args.dtype))
        return lm.module, lm.tokenizer, str(path)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    config = JambaConfig.preset(args.preset, **overrides)
    model = JambaForCausalLM(config, seed=0).eval().to(getattr(torch, args.dtype))
    return model, None, f"preset:{args.preset}" + "".join(f" {kv}" for kv in args.set)


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class ForwardTimer:
    """Wraps Engine._forward to split step time into model forward vs everything else."""

    def __init__(self, engine: Engine) -> None:
        self.seconds = 0.0
        inner = engine._forward

        def timed(*a: Any, **k: Any) -> torch.Tensor:
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t

        engine._forward = timed  # type: ignore[method-assign]


def run_engine(model: JambaForCausalLM, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    cfg = EngineConfig(memory_budget_mb=args.memory_mb, max_num_seqs=max(args.streams + [1]),
                       prefill_chunk_tokens=args.chunk, snapshot_interval=args.chunk, prefix_caching=False)
    engine = Engine(model, tok, cfg)
    timer = ForwardTimer(engine)
    vocab = model.config.vocab_size
    out: dict[str, Any] = {}
    with torch.inference_mode():
        # warm-up (allocator, kernels, caches)
        engine.submit_sync(prompt_ids(32, vocab, 99), SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        engine.run_until_idle()

        params = SamplingParams(max_tokens=args.decode_tokens + 1, temperature=0, ignore_eos=True)
        stream = engine.submit_sync(prompt_ids(args.prompt_len, vocab), params)
        t0 = time.perf_counter()
        while engine.stats.generated_tokens == 0 or not engine.running_sequences() or \
                engine.running_sequences()[0].num_generated < 1:
            engine.step()
        t_prefill = time.perf_counter() - t0
        out["prefill_tok_s"] = args.prompt_len / t_prefill
        out["ttft_ms"] = 1000 * t_prefill
        step_times, fwd_times = [], []
        while engine.running_sequences():
            f0, s0 = timer.seconds, time.perf_counter()
            engine.step()
            step_times.append(time.perf_counter() - s0)
            fwd_times.append(timer.seconds - f0)
        assert stream.result().usage.completion_tokens == args.decode_tokens + 1
        mean_step = statistics.fmean(step_times)
        out["decode_tok_s_single"] = 1.0 / mean_step
        out["decode_step_ms"] = 1000 * mean_step
        out["decode_step_p50_ms"] = 1000 * statistics.median(step_times)
        out["engine_overhead_ms"] = 1000 * (mean_step - statistics.fmean(fwd_times))

        for n in args.streams:
            if n <= 1:
                continue
            ps = SamplingParams(max_tokens=args.decode_tokens, temperature=0, ignore_eos=True)
            for i in range(n):
                engine.submit_sync(prompt_ids(16, vocab, i), ps)
            while len(engine.running_sequences()) < n or any(s.num_generated < 1 for s in engine.running_sequences()):
                engine.step()
            g0, f0, t0 = engine.stats.generated_tokens, timer.seconds, time.perf_counter()
            steps0 = engine.stats.steps
            engine.run_until_idle()
            dt = time.perf_counter() - t0
            steps = max(1, engine.stats.steps - steps0)
            out[f"decode_tok_s_batch{n}"] = (engine.stats.generated_tokens - g0) / dt
            out[f"engine_overhead_ms_batch{n}"] = 1000 * (dt - (timer.seconds - f0)) / steps
    return out


def raw_decode(model: JambaForCausalLM, args: argparse.Namespace) -> float:
    cache = model.allocate_cache(1, args.prompt_len + args.decode_tokens + 8)
    ids = torch.tensor([prompt_ids(args.prompt_len, model.config.vocab_size)])
    with torch.inference_mode():
        nxt = model(ids, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(args.decode_tokens):
            nxt = model(nxt, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        return args.decode_tokens / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help='checkpoint directory or "shipped" (default: --preset)')
    p.add_argument("--preset", default="small-20m")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a preset field, e.g. --set hidden_size=192 (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--streams", default="8", help="comma-separated batch sizes for batched decode")
    p.add_argument("--memory-mb", type=float, default=256)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.streams = [int(x) for x in args.streams.split(",") if x]
    torch.set_num_threads(args.threads)
    model, tok, source = load(args)
    n_params = sum(t.numel() for t in model.parameters())
    res: dict[str, Any] = {"model": source, "params_m": round(n_params / 1e6, 2), "threads": args.threads,
                           "dtype": args.dtype}
    res.update(run_engine(model, tok, args))
    res["raw_model_decode_tok_s"] = raw_decode(model, args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:28s} {v:.2f}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
