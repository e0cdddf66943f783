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

Usage: python bench/engine_gpu_check.py [--new 48] [--smoke]
  --smoke: everything on the CPU (reference kernels, eager buckets standing in for graphs), few tokens: checks
  the script's own machinery (the shadow's save/restore must leave the outputs equal to the reference's).
Writes $OUT/engine_gpu_check.json when $OUT is set.
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
        from local_model.cache import MambaState
        from local_model.decode import PagedPool

        slots, pos, table = bufs["slots"], bufs["positions"], bufs["block_table"]
        saved = []
        for layer in self.bd.step.cache.layers:
            if isinstance(layer, MambaState):
                pools = [layer.conv, layer.ssm]
                index = slots
            elif isinstance(layer, PagedPool):
                bs = layer.block_size
                index = table.gather(1, (pos // bs)[:, None])[:, 0] * bs + pos % bs
                pools = [layer.k, layer.v]
            else:
                raise TypeError(f"no save for {type(layer).__name__}")
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
    args = ap.parse_args()
    new = min(args.new, 8) if args.smoke else args.new

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in (5, 17, 40, 100, 260)]
    cpu = run(sharp_tiny_model(), prompts, new)
    if args.smoke:
        gpu_model = sharp_tiny_model()
        bucketed = {"decode_step": True}  # eager buckets on the CPU; cuda_graphs is ignored there
    else:
        from local_model.kernels import triton_bundle

        gpu_model = sharp_tiny_model().to("cuda")
        gpu_model.set_kernels(triton_bundle())
        bucketed = {}  # the engine's default on CUDA: `DecodeStep` per batch bucket, run eagerly
    gpu = run(gpu_model, prompts, new, **bucketed)
    match = [leading_equal(a, b) for a, b in zip(cpu, gpu, strict=True)]
    # The same with the buckets replayed from CUDA graphs (opt-in), with the decode steps through the
    # model's forward (no DecodeStep), and each prompt alone with CUDA graphs: where a disagreement is.
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
    shared_eager = run(gpu_model, prompts, new, setup=shared_logits, **bucketed)

    def vs_cpu(got: list[list[int]]) -> list[int]:
        return [leading_equal(a, b) for a, b in zip(cpu, got, strict=True)]

    out: dict[str, Any] = {
        "device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(),
        "prompt_lens": [len(p) for p in prompts],
        "new": new,
        "leading_tokens_equal_cpu_reference_vs_gpu_triton": match,
        "same_gpu_cuda_graphs_vs_cpu": vs_cpu(graphs),
        "same_gpu_eager_decode_vs_cpu": vs_cpu(eager),
        "same_gpu_graphs_each_alone_vs_cpu": vs_cpu(alone),
        "shadowed_graphs_vs_cpu": vs_cpu(shadowed),
        "shared_logits_buffer_graphs_vs_cpu": vs_cpu(shared_graphs),
        "shared_logits_buffer_eager_vs_cpu": vs_cpu(shared_eager),
        "shadow": shadows[0].summary(),
        "shadow_steps": shadows[0].steps,
    }
    # Each disagreement beside the reference's margin at that token and its smallest margin before it.
    ref_model = sharp_tiny_model()
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
        Path(os.environ["OUT"], "engine_gpu_check.json").write_text(json.dumps(out, indent=1))
    return 0 if all(m == new for m in match) else 1


def print_summary(out: dict[str, Any]) -> None:
    n = out["new"]
    print(f"\n== engine_gpu_check on {out['device']}: leading tokens equal to the CPU reference (of {n}) ==")
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
