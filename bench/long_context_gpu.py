"""Long context on one card: a Jamba-1.5-Mini-shaped layer stack (hidden 4096, attention 1 layer in 8, GQA
32/8, 16 experts top-2 on every other layer, expert width 14336, vocab 65536; random bf16 weights drawn on the
GPU) served by the engine with chunked prefill, up to a 256K-token prompt.

Reports:
1. memory: KV and SSM bytes of one sequence at 32K / 128K / 256K tokens, for this stack and for a pure-attention
   stack of the same width and depth (every layer attention): computed from the cache shapes, and measured
   (``torch.cuda.memory_allocated`` around allocating each cache, where it fits); plus the peak memory the
   engine used over the weights while serving the longest prompt (``max_memory_allocated``);
2. prefill: time to the first token of one prompt at each ``--lengths`` size (chunked prefill through the
   engine, ``--chunk`` tokens per step), tokens/s, and time per token relative to the shortest prompt
   (linear = 1.0; the issue asks for <= 1.3 from 8K to 128K); decode tokens/s after the prompt;
3. a check of the mask-free attention over a long context against SDPA with a dense mask.

``--blocks``: 8-layer blocks in the stack (default: as many as fit beside the caches and activations).

Usage: python bench/long_context_gpu.py [--json out.json]     (GPU)
       python bench/long_context_gpu.py --tiny                 (CPU smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30


def show(out: dict[str, Any], key: str, value: Any) -> None:
    out[key] = value
    print(json.dumps({key: value}), flush=True)


def stack_config(args: argparse.Namespace, layers: int, pure_attention: bool = False):  # noqa: ANN201
    from local_model.config import JambaConfig

    base: dict[str, Any] = {"max_position_embeddings": args.max_len, "tie_word_embeddings": False}
    if args.tiny:
        base.update(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=8,
                    num_key_value_heads=2, num_experts=4)  # fmt: skip
    if pure_attention:
        base.update(attn_layer_period=1, attn_layer_offset=0)
    return JambaConfig(num_hidden_layers=layers, **base)  # the defaults are Jamba-1.5-Mini's shape


def block_bytes(args: argparse.Namespace) -> tuple[int, int]:
    """(bytes of one 8-layer block, bytes of embedding + lm_head + final norm) in bf16."""
    from local_model.model import JambaForCausalLM

    with torch.device("meta"):
        m = JambaForCausalLM(stack_config(args, 8))
    per_layer = sum(p.numel() for n, p in m.named_parameters() if n.startswith("model.layers."))
    rest = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("model.layers."))
    return 2 * per_layer, 2 * rest


def cache_bytes(cfg, length: int, dtype: torch.dtype) -> dict[str, int]:  # noqa: ANN001
    from local_model.cache import kv_bytes_per_token, mamba_state_bytes_per_sequence

    return {"kv": kv_bytes_per_token(cfg, dtype) * length, "ssm": mamba_state_bytes_per_sequence(cfg, dtype)}


def measured_cache_bytes(cfg, length: int, device: str, dtype: torch.dtype) -> int | None:  # noqa: ANN001
    """Bytes allocated by one sequence's cache of ``length`` tokens (None if it does not fit)."""
    from local_model.cache import HybridCache

    if device != "cuda":
        c = HybridCache.allocate(cfg, 1, length, device=device, dtype=dtype)
        return c.nbytes
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    try:
        c = HybridCache.allocate(cfg, 1, length, device=device, dtype=dtype)
    except torch.cuda.OutOfMemoryError:
        return None
    torch.cuda.synchronize()
    got = torch.cuda.memory_allocated() - before
    del c
    torch.cuda.empty_cache()
    return got


def check_attention(device: str, dtype: torch.dtype) -> float:
    """Relative error of `attention_over_context` against SDPA with the dense mask it avoids."""
    import torch.nn.functional as F

    from local_model.model import attention_over_context, repeat_kv

    g = torch.Generator(device).manual_seed(0)
    t, s, h, hkv, hd = 300, 1000, 32, 8, 128
    q = torch.randn(1, h, t, hd, device=device, dtype=dtype, generator=g)
    k = torch.randn(1, hkv, s, hd, device=device, dtype=dtype, generator=g)
    v = torch.randn(1, hkv, s, hd, device=device, dtype=dtype, generator=g)
    got = attention_over_context(q, k, v, hd**-0.5).float()
    mask = torch.arange(s, device=device)[None, :] <= (s - t + torch.arange(t, device=device))[:, None]
    ref = F.scaled_dot_product_attention(
        q.float(), repeat_kv(k, 4).float(), repeat_kv(v, 4).float(), attn_mask=mask, scale=hd**-0.5
    )
    return float((got - ref).norm() / ref.norm())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny stack on the CPU, short prompts")
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--lengths", default="8192,16384,32768,65536,131072,262144")
    ap.add_argument("--memory-lengths", default="32768,131072,262144")
    ap.add_argument("--chunk", type=int, default=16384, help="prefill tokens per engine step")
    ap.add_argument("--new", type=int, default=16, help="tokens generated after each prompt")
    ap.add_argument("--reserve-gib", type=float, default=12.0, help="kept free for activations")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.lengths, args.memory_lengths, args.chunk, args.new = "64,128,256", "128,256", 64, 4
    lengths = [int(x) for x in args.lengths.split(",")]
    args.max_len = max(lengths) + 1024
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16

    from local_model.cache import kv_bytes_per_token, mamba_state_bytes_per_sequence
    from local_model.engine import Engine, EngineConfig
    from local_model.engine.sampler import SamplingParams
    from local_model.kernels import bundle_for
    from local_model.model import JambaForCausalLM

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    show(out, "attention_over_context_rel_err", check_attention(device, dtype))

    per_block, rest = block_bytes(args)
    if args.blocks is None and device != "cuda":
        args.blocks = 1
    if args.blocks is None:
        free = torch.cuda.mem_get_info()[0]
        kv_block = (
            kv_bytes_per_token(stack_config(args, 8), dtype) * args.max_len
        )  # one block's KV at max_len
        args.blocks = max(1, int((free - rest - args.reserve_gib * GIB) // (per_block + kv_block)))
    layers = 8 * args.blocks
    cfg = stack_config(args, layers)
    pure = stack_config(args, layers, pure_attention=True)
    show(out, "stack", {
        "blocks": args.blocks, "layers": layers, "attention_layers": len(cfg.attention_layer_ids),
        "mamba_layers": len(cfg.mamba_layer_ids), "block_gib": round(per_block / GIB, 2),
        "params_b": round((per_block * args.blocks + rest) / 2 / 1e9, 2),
    })  # fmt: skip

    # 1. memory per sequence, computed and measured (before the weights take the card)
    mem = {}
    for n in [int(x) for x in args.memory_lengths.split(",")]:
        h, p = cache_bytes(cfg, n, dtype), cache_bytes(pure, n, dtype)
        mem[n] = {
            "hybrid_kv_gib": round(h["kv"] / GIB, 3), "hybrid_ssm_mib": round(h["ssm"] / 2**20, 1),
            "hybrid_total_gib": round((h["kv"] + h["ssm"]) / GIB, 3),
            "pure_attention_kv_gib": round(p["kv"] / GIB, 3),
            "hybrid_measured_gib": _gib(measured_cache_bytes(cfg, n, device, dtype)),
            "pure_attention_measured_gib": _gib(measured_cache_bytes(pure, n, device, dtype)),
        }  # fmt: skip
        mem[n]["ratio_pure_over_hybrid"] = round(p["kv"] / (h["kv"] + h["ssm"]), 2)
        print(json.dumps({f"memory_{n}": mem[n]}), flush=True)
    out["memory_per_sequence"] = mem

    # 2. the stack, random weights drawn on the card
    t = time.perf_counter()
    with torch.device("meta"):
        model = JambaForCausalLM(cfg).to(dtype)
    model = model.to_empty(device=device)
    model.reset_parameters(0, on_device=True)
    model.eval().set_kernels(bundle_for(device))
    if device == "cuda":
        torch.cuda.synchronize()
    show(out, "init_s", round(time.perf_counter() - t, 1))
    kv_tok = kv_bytes_per_token(cfg, dtype)
    ssm = mamba_state_bytes_per_sequence(cfg, dtype)
    budget = (kv_tok * args.max_len * 1.03 + 4 * ssm) / 2**20 + 8
    ecfg = EngineConfig(
        memory_budget_mb=budget, max_num_seqs=1, prefix_caching=False, snapshot_slots=0,
        prefill_chunk_tokens=args.chunk, snapshot_interval=args.chunk, max_model_len=args.max_len,
    )  # fmt: skip
    engine = Engine(model, None, ecfg)
    if device == "cuda":
        torch.cuda.synchronize()
        weights_and_pools = torch.cuda.memory_allocated()
        show(out, "allocated_after_load_gib", round(weights_and_pools / GIB, 2))
    engine.start()
    gen = torch.Generator().manual_seed(1)

    def serve(n: int) -> dict[str, float]:
        ids = torch.randint(3, cfg.vocab_size, (n,), generator=gen).tolist()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        stream = engine.submit_sync(
            ids, SamplingParams(max_tokens=args.new, temperature=0.0, ignore_eos=True)
        )
        first = None
        for _ in stream:
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        assert first is not None
        res = {"prefill_s": round(first - t0, 3), "prefill_tok_s": round(n / (first - t0)),
               "decode_tok_s": round((args.new - 1) / max(end - first, 1e-9), 1)}  # fmt: skip
        if device == "cuda":
            res["peak_over_load_gib"] = round(
                (torch.cuda.max_memory_allocated() - weights_and_pools) / GIB, 2
            )
        return res

    try:
        # Warm-up: kernel compilation for the shortest prompt's shapes and for a chunk over cached context,
        # and the decode graph (a cold first run of a shape costs ~1 s inside the figure).
        serve(lengths[0])
        serve(2 * args.chunk)
        runs = {}
        for n in lengths:
            runs[n] = serve(n)
            print(json.dumps({f"serve_{n}": runs[n]}), flush=True)
        base = runs[lengths[0]]["prefill_s"] / lengths[0]
        for n in lengths:
            runs[n]["time_per_token_vs_shortest"] = round(runs[n]["prefill_s"] / n / base, 3)
        out["serve"] = runs
        show(out, "linearity", {n: runs[n]["time_per_token_vs_shortest"] for n in lengths})
    finally:
        engine.shutdown()
    print(json.dumps(out, indent=1))
    path = args.json or (
        os.path.join(os.environ["OUT"], "long_context.json") if os.environ.get("OUT") else None
    )
    if path:
        Path(path).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _gib(n: int | None) -> float | None:
    return None if n is None else round(n / GIB, 3)


if __name__ == "__main__":
    raise SystemExit(main())
