"""Local model on a GPU: bf16 (PyTorch SDPA attention, reference PyTorch scan) vs CPU fp32, and
tokens/s against Hugging Face transformers' JambaForCausalLM on the same random checkpoint.

Builds a random Jamba config with transformers, saves it, then:
  1. parity: our CUDA bf16 logits vs our CPU fp32 logits on the same ids (and transformers' CUDA
     bf16 vs its CPU fp32, to show what bf16 alone costs), as max |diff| / max |logit| and top-1
     agreement;
  2. speed (CUDA bf16): prefill tokens/s (1×PREFILL), greedy decode tokens/s (batch 1 and 8,
     prompt 128, 128 new tokens) for ours (explicit caches) and for transformers' generate().
This is the baseline the kernel issue beats: no Triton kernels yet, the Mamba scan is the
PyTorch reference path in both implementations.

Usage: python bench/local_model_gpu.py [--hidden 1024 --layers 8 --experts 8 --prefill 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def hf_config(args: argparse.Namespace):  # noqa: ANN201
    from transformers import JambaConfig

    return JambaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 256),
        attn_layer_period=8, attn_layer_offset=4, expert_layer_period=2, expert_layer_offset=1,
        num_experts=args.experts, num_experts_per_tok=2, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
        max_position_embeddings=8192, use_mamba_kernels=False, tie_word_embeddings=False,
    )


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int = 3) -> float:  # noqa: ANN001
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def ours_decode(lm, ids: torch.Tensor, new: int) -> None:  # noqa: ANN001
    b, p = ids.shape
    cache = lm.new_cache(b, p + new)
    with torch.inference_mode():
        nxt = lm.module(ids, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        for _ in range(new - 1):
            nxt = lm.module(nxt, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from transformers import JambaForCausalLM

    import local_model

    out: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__}
    torch.manual_seed(0)
    cfg = hf_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        hf_cpu = JambaForCausalLM(cfg).eval()
        hf_cpu.save_pretrained(tmp)
        n_params = sum(p.numel() for p in hf_cpu.parameters())
        out["config"] = {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_experts",
                                                         "num_attention_heads", "num_key_value_heads", "vocab_size")}
        out["params_m"] = round(n_params / 1e6, 1)
        ids = torch.randint(0, args.vocab, (2, 256), generator=torch.Generator().manual_seed(1))

        ours_cpu = local_model.load(tmp, device="cpu", dtype=torch.float32)
        ref = ours_cpu.logits(ids).float()
        with torch.inference_mode():
            hf_ref = hf_cpu(ids).logits.float()
        out["cpu_fp32_ours_vs_hf_max_abs_rel"] = float((ref - hf_ref).abs().max() / hf_ref.abs().max())
        del ours_cpu

        dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of this script only
        ours = local_model.load(tmp, device=dev, dtype=torch.bfloat16)
        got = ours.logits(ids.to(dev)).float().cpu()
        scale = float(ref.abs().max())
        out["parity_ours_bf16_cuda_vs_fp32_cpu"] = {
            "max_abs_over_logit_scale": float((got - ref).abs().max() / scale),
            "mean_abs_over_logit_scale": float((got - ref).abs().mean() / scale),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
        }
        hf = JambaForCausalLM.from_pretrained(tmp, torch_dtype=torch.bfloat16, attn_implementation="sdpa").to(dev).eval()
        with torch.inference_mode():
            hf_got = hf(ids.to(dev)).logits.float().cpu()
        out["parity_hf_bf16_cuda_vs_fp32_cpu"] = {
            "max_abs_over_logit_scale": float((hf_got - hf_ref).abs().max() / scale),
            "top1_agreement": float((hf_got.argmax(-1) == hf_ref.argmax(-1)).float().mean()),
        }
        print(json.dumps(out, indent=1), flush=True)

        long_ids = torch.randint(0, args.vocab, (1, args.prefill), device=dev)
        t = timed(lambda: ours.logits(long_ids))
        out["ours_prefill_tok_s"] = round(args.prefill / t)
        with torch.inference_mode():
            t = timed(lambda: hf(long_ids, use_cache=False))
        out["hf_prefill_tok_s"] = round(args.prefill / t)
        print(json.dumps({k: out[k] for k in ("ours_prefill_tok_s", "hf_prefill_tok_s")}), flush=True)

        for b in (1, 8):
            prompt = torch.randint(0, args.vocab, (b, 128), device=dev)
            t = timed(lambda prompt=prompt: ours_decode(ours, prompt, args.new), reps=2)
            out[f"ours_decode_b{b}_tok_s"] = round(b * args.new / t)
            with torch.inference_mode():
                t = timed(lambda prompt=prompt: hf.generate(prompt, max_new_tokens=args.new, min_new_tokens=args.new,
                                                           do_sample=False, use_cache=True), reps=2)
            out[f"hf_decode_b{b}_tok_s"] = round(b * args.new / t)
            print(json.dumps({k: v for k, v in out.items() if "decode" in k}), flush=True)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
