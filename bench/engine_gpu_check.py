"""The serving engine on a GPU with the Triton kernel bundle (paged decode attention over the engine's KV
blocks, Triton conv/scan/state-update/MoE) against the same engine on the CPU with the PyTorch references:
greedy token agreement on prompts of mixed lengths, batched together by the engine's scheduler; then the GPU
engine with eager decode steps (no CUDA graphs) and with each prompt alone, to locate a disagreement.

Usage: python bench/engine_gpu_check.py [--new 48]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sharp_tiny_model(seed: int = 0):  # noqa: ANN201
    """The tiny preset with weights redrawn at O(1) scale, so greedy logits are far from ties."""
    from local_model.config import JambaConfig
    from local_model.model import JambaForCausalLM

    cfg = JambaConfig.preset("tiny", vocab_size=320, tie_word_embeddings=False, eos_token_id=2)
    model = JambaForCausalLM(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "conv1d" not in name and "A_log" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model.eval()


def run(model, prompts: list[list[int]], new: int, **config: object) -> list[list[int]]:  # noqa: ANN001
    from local_model.engine import Engine, EngineConfig
    from local_model.engine.sampler import SamplingParams

    engine = Engine(model, None, EngineConfig(**config))  # type: ignore[arg-type]
    streams = [
        engine.submit_sync(p, SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True))
        for p in prompts
    ]
    try:
        engine.start()
        return [s.result().choices[0].token_ids for s in streams]
    finally:
        engine.shutdown()


def leading_equal(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def reference_margins(model, prompt: list[int], tokens: list[int]) -> list[float]:  # noqa: ANN001
    """The CPU model's top-1 minus top-2 logit before each generated token: where it is small, a greedy
    disagreement can be a near-tie flipped by rounding rather than a wrong computation."""
    margins = []
    for j in range(len(tokens)):
        logits = model(torch.tensor([prompt + tokens[:j]]))
        logits = logits.logits if hasattr(logits, "logits") else logits
        top = torch.topk(logits[0, -1].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return margins


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=48)
    args = ap.parse_args()
    from local_model.kernels import triton_bundle

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in (5, 17, 40, 100, 260)]
    cpu = run(sharp_tiny_model(), prompts, args.new)
    gpu_model = sharp_tiny_model().to("cuda")
    gpu_model.set_kernels(triton_bundle())
    # The engine's default on CUDA: `DecodeStep` per batch bucket, run eagerly.
    gpu = run(gpu_model, prompts, args.new)
    match = [leading_equal(a, b) for a, b in zip(cpu, gpu, strict=True)]
    # The same with the buckets replayed from CUDA graphs (opt-in), with the decode steps through the
    # model's forward (no DecodeStep), and each prompt alone with CUDA graphs: where a disagreement is.
    graphs = run(gpu_model, prompts, args.new, cuda_graphs=True)
    eager = run(gpu_model, prompts, args.new, decode_step=False)
    alone = [run(gpu_model, [p], args.new, cuda_graphs=True)[0] for p in prompts]
    out = {
        "device": torch.cuda.get_device_name(),
        "prompt_lens": [len(p) for p in prompts],
        "new": args.new,
        "leading_tokens_equal_cpu_reference_vs_gpu_triton": match,
        "same_gpu_cuda_graphs_vs_cpu": [leading_equal(a, b) for a, b in zip(cpu, graphs, strict=True)],
        "same_gpu_eager_decode_vs_cpu": [leading_equal(a, b) for a, b in zip(cpu, eager, strict=True)],
        "same_gpu_graphs_each_alone_vs_cpu": [leading_equal(a, b) for a, b in zip(cpu, alone, strict=True)],
    }
    # Each disagreement beside the reference's margin at that token and its smallest margin before it.
    ref_model = sharp_tiny_model()
    runs = {"gpu": gpu, "cuda_graphs": graphs, "eager_forward": eager, "graphs_alone": alone}
    out["first_disagreement"] = {}
    for name, got in runs.items():
        for i, (a, b) in enumerate(zip(cpu, got, strict=True)):
            j = leading_equal(a, b)
            if j < len(a):
                m = reference_margins(ref_model, prompts[i], a)
                out["first_disagreement"][f"{name}/prompt{i}"] = {
                    "token": j,
                    "reference_margin": round(m[j], 5),
                    "smallest_margin_of_the_prompt": round(min(m), 5),
                }
    print(json.dumps(out))
    return 0 if all(m == args.new for m in match) else 1


if __name__ == "__main__":
    raise SystemExit(main())
