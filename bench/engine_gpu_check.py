"""The serving engine on a GPU with the Triton kernel bundle (paged decode attention over the engine's KV
blocks, Triton conv/scan/state-update/MoE) against the same engine on the CPU with the PyTorch references:
greedy token agreement on prompts of mixed lengths, batched together by the engine's scheduler; then the GPU
engine with eager decode steps (no CUDA graphs) and with each prompt alone, to locate a disagreement.

Then, with CUDA graphs, a shadow check of every graph-replayed decode step: the step is first run eagerly
(twice) on the same buffers and the same state (the rows' SSM slots and the KV rows the step writes are saved
before and restored after each run), replayed twice the same way, and the logits of the live rows compared:
max |graph - eager|, whether any row's argmax differs, and the eager-vs-eager and graph-vs-graph differences
(the noise floor). Last, the engine with the bucketed step returning its output buffer itself rather than a
copy (as it did before), graphs and eager: a one-token prefill chunk in the same engine step replays the same
bucket and overwrites the decode rows' logits before they are sampled.

With ``--family NAME`` (bamba, granitemoehybrid, falcon_h1) the model is a tiny random Mamba-2 family model
instead of Jamba, and its decode steps go through `FamilyDecodeStep` (``decode_step=True``: the families are
not bucketed by default until this check has passed): the CPU engine (model forward) against the GPU
engine's buckets run eagerly, replayed from CUDA graphs, shadowed, and the GPU engine's plain forward; then
engine decode tokens/s at batch 1 and 8 for the plain forward, eager buckets and graphs.

Usage: python bench/engine_gpu_check.py [--new 48] [--smoke] [--family bamba [--kernels reference|triton]]
  --smoke: everything on the CPU (reference kernels, eager buckets standing in for graphs), few tokens: checks
  the script's own machinery (the shadow's save/restore must leave the outputs equal to the reference's).
  --kernels (families): the Mamba-2 kernels on the GPU: ``reference`` (what `local_model.load` serves) or
  ``triton`` (the Triton SSD scan/state update and causal conv).
Writes $OUT/engine_gpu_check.json (with --family: engine_gpu_check_<family>.json) when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# Tiny configs in the families' config.json vocabulary; head_dim 32 (the paged decode kernel's sizes).
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "bamba": dict(
        model_type="bamba", num_hidden_layers=4, attn_layer_indices=[1], num_attention_heads=4,
        num_key_value_heads=2, mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=16, mamba_chunk_size=32,
    ),
    "granitemoehybrid": dict(
        model_type="granitemoehybrid", num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"],
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
        shared_intermediate_size=96, mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=16,
        mamba_chunk_size=32, position_embedding_type="rope", embedding_multiplier=2.0,
        residual_multiplier=0.7, attention_multiplier=0.2, logits_scaling=2.5,
    ),
    "falcon_h1": dict(
        model_type="falcon_h1", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        mamba_d_ssm=192, mamba_n_heads=6, mamba_n_groups=2, mamba_d_state=16, mamba_chunk_size=32,
        embedding_multiplier=1.5, lm_head_multiplier=0.8, key_multiplier=0.7, ssm_in_multiplier=1.3,
        ssm_multipliers=[0.9, 1.1, 0.8, 1.2, 0.7],
    ),
}  # fmt: skip


def family_tiny_model(family: str, seed: int = 0):  # noqa: ANN201
    """A tiny random model of a Mamba-2 family (vocab 320, hidden 128), weights redrawn at O(1) scale with
    the Mamba parameters in their usual ranges (dt well above the prefill clamp), so greedy logits are far
    from ties."""
    from local_model.families import config_from_dict
    from local_model.families import family as family_module

    d = dict(
        vocab_size=320, hidden_size=128, intermediate_size=256, eos_token_id=2, tie_word_embeddings=False
    )
    config = config_from_dict({**d, **FAMILY_CONFIGS[family]})
    torch.manual_seed(seed)
    model = family_module(config.model_type).MODEL(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty(p.shape).uniform_(0.5, 4.0, generator=gen)))
            elif name.endswith("dt_bias"):
                p.copy_(torch.empty(p.shape).uniform_(-3.0, 0.0, generator=gen))
            elif name.endswith(".D") or "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model.eval()


def family_kernels(name: str) -> Any:  # noqa: ANN401
    from local_model.mamba2 import Mamba2Kernels

    if name == "reference":
        return Mamba2Kernels()
    from local_model.kernels import triton_ops
    from local_model.kernels.ssd import ssd_chunk_scan, ssd_state_update

    return Mamba2Kernels(
        causal_conv1d=triton_ops.causal_conv1d,
        causal_conv1d_update=triton_ops.causal_conv1d_update,
        chunk_scan=ssd_chunk_scan,
        state_update=ssd_state_update,
    )


def decode_tps(model, batch: int, new: int, **config: object) -> float:  # noqa: ANN001
    """Engine decode tokens/s: ``batch`` 8-token prompts, ``new`` greedy tokens each, timed from the engine's
    start (after any graph capture) to the last result; the one prefill step is inside the time."""
    import time

    from local_model.engine import Engine, EngineConfig
    from local_model.engine.sampler import SamplingParams

    engine = Engine(model, None, EngineConfig(**config))  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(3, 320, (8,), generator=gen).tolist() for _ in range(batch)]
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    streams = [engine.submit_sync(p, params) for p in prompts]
    try:
        t0 = time.perf_counter()
        engine.start()
        n = sum(len(s.result().choices[0].token_ids) for s in streams)
        return n / (time.perf_counter() - t0)
    finally:
        engine.shutdown()


def run(
    model,  # noqa: ANN001
    prompts: list[list[int]],
    new: int,
    setup: Callable[[Any], None] | None = None,
    **config: object,
) -> list[list[int]]:
    """Greedy ``new`` tokens of each prompt, all submitted together; ``setup(engine)`` before it starts."""
    from local_model.engine import Engine, EngineConfig
    from local_model.engine.sampler import SamplingParams

    engine = Engine(model, None, EngineConfig(**config))  # type: ignore[arg-type]
    if setup is not None:
        setup(engine)
    streams = [
        engine.submit_sync(p, SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True))
        for p in prompts
    ]
    try:
        engine.start()
        return [s.result().choices[0].token_ids for s in streams]
    finally:
        engine.shutdown()


def step_pools(step: Any) -> list[tuple[str, list[torch.Tensor], int]]:  # noqa: ANN401
    """The tensors a bucketed decode step writes: ("mamba", [conv, ssm], 0) per Mamba layer, ("kv", [k, v],
    block_size) per attention layer; for `DecodeStep` (its cache's layers) and `FamilyDecodeStep` (its
    pools)."""
    from local_model.cache import MambaState
    from local_model.decode import PagedPool

    if hasattr(step, "cache"):
        out: list[tuple[str, list[torch.Tensor], int]] = []
        for layer in step.cache.layers:
            if isinstance(layer, MambaState):
                out.append(("mamba", [layer.conv, layer.ssm], 0))
            elif isinstance(layer, PagedPool):
                out.append(("kv", [layer.k, layer.v], layer.block_size))
            else:
                raise TypeError(f"no save for {type(layer).__name__}")
        return out
    return [("mamba", [s.conv, s.ssm], 0) for s in step.mamba.values()] + [
        ("kv", [k, v], step.block_size) for k, v in step.kv_pools.values()
    ]


class ShadowCheck:
    """Wraps a `BucketedDecode`'s ``run``: before the step the engine uses, the same step eagerly twice and
    replayed once, each on the same inputs and state (restored after each), and the live rows' logits
    compared. The engine's outputs are the last replay's, so they are what the unwrapped engine computes."""

    def __init__(self, bucketed: Any) -> None:  # noqa: ANN401
        self.bd = bucketed
        self.inner = bucketed.run
        self.steps: list[dict[str, Any]] = []
        bucketed.run = self.run

    def _save(self, bufs: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(pool, index, saved rows) for every tensor the step writes: each Mamba layer's conv and SSM state
        at the rows' slots (the padding rows' scratch slot included), each attention layer's K and V at
        the pool row of each row's new token."""
        slots, pos, table = bufs["slots"], bufs["positions"], bufs["block_table"]
        saved = []
        for kind, pools, bs in step_pools(self.bd.step):
            # Mamba layers: the rows' slots; attention layers: the pool row of each row's new token
            index = slots if kind == "mamba" else table.gather(1, (pos // bs)[:, None])[:, 0] * bs + pos % bs
            saved += [(t, index.clone(), t[index].clone()) for t in pools]
        return saved

    @staticmethod
    def _restore(saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        for t, index, rows in saved:
            t[index] = rows  # repeated indices (padding rows) carry equal saved rows

    def run(self, bucket: int, bufs: dict[str, torch.Tensor], batch: int) -> None:
        step = self.bd.step
        saved = self._save(bufs)
        eager = []
        for _ in range(2):
            eager.append(step.forward(bufs["ids"], bufs["slots"], bufs["positions"], bufs["block_table"]))
            eager[-1] = eager[-1][:batch].float().clone()
            self._restore(saved)
        self.inner(bucket, bufs, batch)
        replay = bufs["logits"][:batch].float().clone()
        self._restore(saved)
        self.inner(bucket, bufs, batch)  # the step the engine goes on with
        graph = bufs["logits"][:batch].float()
        top2 = torch.topk(eager[0], 2, dim=-1).values
        flipped = (graph.argmax(-1) != eager[0].argmax(-1)).nonzero()[:, 0].tolist()
        self.steps.append(
            {
                "bucket": bucket,
                "batch": batch,
                "positions": bufs["positions"][:batch].tolist(),
                "graph_vs_eager": float((graph - eager[0]).abs().max()),
                "argmax_differs_rows": flipped,
                "eager_vs_eager": float((eager[1] - eager[0]).abs().max()),
                "graph_vs_graph": float((graph - replay).abs().max()),
                "smallest_eager_margin": float((top2[:, 0] - top2[:, 1]).min()),
            }
        )

    def summary(self) -> dict[str, Any]:
        s = self.steps
        return {
            "steps": len(s),
            "max_graph_vs_eager": max((x["graph_vs_eager"] for x in s), default=0.0),
            "steps_graph_ne_eager": sum(x["graph_vs_eager"] > 0 for x in s),
            "steps_argmax_differs": [i for i, x in enumerate(s) if x["argmax_differs_rows"]],
            "max_eager_vs_eager": max((x["eager_vs_eager"] for x in s), default=0.0),
            "max_graph_vs_graph": max((x["graph_vs_graph"] for x in s), default=0.0),
        }


class SharedLogits:
    """The bucketed decode returning a view of the bucket's output buffer instead of a copy (what it did
    before): a later step of the same bucket before sampling rewrites the logits it returned."""

    def __init__(self, bucketed: Any) -> None:  # noqa: ANN401
        self.bd = bucketed

    def supports(self, meta: Any) -> bool:  # noqa: ANN401
        return self.bd.supports(meta)

    def __call__(self, meta: Any) -> torch.Tensor:  # noqa: ANN401
        bucket = self.bd.step.bucket(meta.batch)
        bufs = self.bd.load(meta, bucket)
        self.bd.run(bucket, bufs, meta.batch)
        return bufs["logits"][: meta.batch]


def shared_logits(engine: Any) -> None:  # noqa: ANN401
    engine.runner.bucketed = SharedLogits(engine.runner.bucketed)


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
    ap.add_argument("--smoke", action="store_true", help="CPU only, reference kernels (checks the script)")
    ap.add_argument(
        "--family", choices=sorted(FAMILY_CONFIGS), default=None, help="a tiny Mamba-2 family model"
    )
    ap.add_argument("--kernels", choices=["reference", "triton"], default="reference", help="with --family")
    args = ap.parse_args()
    new = min(args.new, 8) if args.smoke else args.new

    def build():  # noqa: ANN202
        return family_tiny_model(args.family) if args.family else sharp_tiny_model()

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in (5, 17, 40, 100, 260)]
    cpu = run(build(), prompts, new)
    if args.smoke:
        gpu_model = build()
        bucketed: dict[str, Any] = {
            "decode_step": True
        }  # eager buckets on the CPU; cuda_graphs is ignored there
    elif args.family:
        gpu_model = build().to("cuda")
        gpu_model.set_kernels(family_kernels(args.kernels))
        bucketed = {"decode_step": True}  # the families are not bucketed by default (yet)
    else:
        from local_model.kernels import triton_bundle

        gpu_model = build().to("cuda")
        gpu_model.set_kernels(triton_bundle())
        bucketed = {}  # the engine's default on CUDA: `DecodeStep` per batch bucket
    # families: the buckets run eagerly first (graphs come next)
    gpu = run(gpu_model, prompts, new, **({"cuda_graphs": False} if args.family else {}), **bucketed)
    match = [leading_equal(a, b) for a, b in zip(cpu, gpu, strict=True)]
    # The same with the buckets replayed from CUDA graphs, with the decode steps through the model's forward
    # (no bucketed step), and each prompt alone with CUDA graphs: where a disagreement is.
    graphs = run(gpu_model, prompts, new, cuda_graphs=True, **bucketed)
    eager = run(gpu_model, prompts, new, decode_step=False)
    alone = [run(gpu_model, [p], new, cuda_graphs=True, **bucketed)[0] for p in prompts]
    # Every graph step beside the eager step on the same state.
    shadows: list[ShadowCheck] = []
    shadowed = run(
        gpu_model,
        prompts,
        new,
        setup=lambda e: shadows.append(ShadowCheck(e.runner.bucketed)),
        cuda_graphs=True,
        **bucketed,
    )
    # The bucketed step handing out its output buffer (no copy): graphs, and eager steps.
    shared_graphs = run(gpu_model, prompts, new, setup=shared_logits, cuda_graphs=True, **bucketed)
    shared_eager = run(gpu_model, prompts, new, setup=shared_logits, cuda_graphs=False, **bucketed)
    # Engine decode tokens/s: the model's forward, the buckets eagerly, the buckets from CUDA graphs.
    steps = 8 if args.smoke else 128
    tps = {
        f"{name}_b{b}": round(decode_tps(gpu_model, b, steps, decode_step=ds, cuda_graphs=cg), 1)
        for b in (1, 8)
        for name, ds, cg in (
            ("forward", False, False),
            ("buckets_eager", True, False),
            ("graphs", True, True),
        )
    }

    def vs_cpu(got: list[list[int]]) -> list[int]:
        return [leading_equal(a, b) for a, b in zip(cpu, got, strict=True)]

    out: dict[str, Any] = {
        "device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(),
        "model": f"{args.family} (tiny, {args.kernels} Mamba-2 kernels)" if args.family else "jamba tiny",
        "gpu_run": "buckets eager" if args.family else "engine default (DecodeStep buckets, CUDA graphs)",
        "prompt_lens": [len(p) for p in prompts],
        "new": new,
        "leading_tokens_equal_cpu_reference_vs_gpu_triton": match,
        "same_gpu_cuda_graphs_vs_cpu": vs_cpu(graphs),
        "same_gpu_eager_decode_vs_cpu": vs_cpu(eager),
        "same_gpu_graphs_each_alone_vs_cpu": vs_cpu(alone),
        "shadowed_graphs_vs_cpu": vs_cpu(shadowed),
        "shared_logits_buffer_graphs_vs_cpu": vs_cpu(shared_graphs),
        "shared_logits_buffer_eager_vs_cpu": vs_cpu(shared_eager),
        "decode_tok_s": tps,
        "shadow": shadows[0].summary(),
        "shadow_steps": shadows[0].steps,
    }
    # Each disagreement beside the reference's margin at that token and its smallest margin before it.
    ref_model = build()
    runs = {
        "gpu": gpu,
        "cuda_graphs": graphs,
        "eager_forward": eager,
        "graphs_alone": alone,
        "shadowed_graphs": shadowed,
        "shared_logits_graphs": shared_graphs,
        "shared_logits_eager": shared_eager,
    }
    out["first_disagreement"] = {}
    margins: dict[int, list[float]] = {}
    for name, got in runs.items():
        for i, (a, b) in enumerate(zip(cpu, got, strict=True)):
            j = leading_equal(a, b)
            if j < len(a):
                if i not in margins:
                    margins[i] = reference_margins(ref_model, prompts[i], a)
                m = margins[i]
                out["first_disagreement"][f"{name}/prompt{i}"] = {
                    "token": j,
                    "reference_margin": round(m[j], 5),
                    "smallest_margin_of_the_prompt": round(min(m), 5),
                }
    print(json.dumps({k: v for k, v in out.items() if k != "shadow_steps"}))  # the steps: $OUT and below
    print_summary(out)
    if os.environ.get("OUT"):
        name = f"engine_gpu_check_{args.family}.json" if args.family else "engine_gpu_check.json"
        Path(os.environ["OUT"], name).write_text(json.dumps(out, indent=1))
    return 0 if all(m == new for m in match + vs_cpu(graphs)) else 1


def print_summary(out: dict[str, Any]) -> None:
    n = out["new"]
    print(
        f"\n== engine_gpu_check on {out['device']}, {out['model']} (gpu run: {out['gpu_run']}): "
        f"leading tokens equal to the CPU reference (of {n}) =="
    )
    for key in (
        "leading_tokens_equal_cpu_reference_vs_gpu_triton",
        "same_gpu_cuda_graphs_vs_cpu",
        "same_gpu_eager_decode_vs_cpu",
        "same_gpu_graphs_each_alone_vs_cpu",
        "shadowed_graphs_vs_cpu",
        "shared_logits_buffer_graphs_vs_cpu",
        "shared_logits_buffer_eager_vs_cpu",
    ):
        print(f"  {key:52s} {out[key]}")
    print("engine decode tok/s:", ", ".join(f"{k} {v}" for k, v in out["decode_tok_s"].items()))
    sh = out["shadow"]
    print(
        f"shadow over {sh['steps']} bucketed decode steps: max |graph - eager| {sh['max_graph_vs_eager']:.3g} "
        f"({sh['steps_graph_ne_eager']} steps nonzero), argmax differs at steps {sh['steps_argmax_differs']}; "
        f"noise floor: max |eager - eager| {sh['max_eager_vs_eager']:.3g}, "
        f"max |graph - graph| {sh['max_graph_vs_graph']:.3g}"
    )
    for i, x in enumerate(out["shadow_steps"]):
        if x["graph_vs_eager"] > 0 or x["argmax_differs_rows"] or x["eager_vs_eager"] > 0:
            print(
                f"  step {i:3d} bucket {x['bucket']:3d} batch {x['batch']:3d} |g-e| {x['graph_vs_eager']:.3g} "
                f"|e-e| {x['eager_vs_eager']:.3g} |g-g| {x['graph_vs_graph']:.3g} argmax-differs rows "
                f"{x['argmax_differs_rows']} smallest margin {x['smallest_eager_margin']:.3g}"
            )
    for k, v in out["first_disagreement"].items():
        print(f"  first disagreement {k}: {v}")


if __name__ == "__main__":
    raise SystemExit(main())
