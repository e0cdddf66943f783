"""The local hybrid model on a GPU: ours (Triton kernel bundle, CUDA-graph decode) against Hugging Face
transformers' JambaForCausalLM on the same random checkpoint, in one process on one card.

Builds a random Jamba config with transformers (426M parameters by default), saves it, then measures:
  1. parity: our CUDA bf16 logits (Triton bundle) vs our CPU fp32 logits on the same ids, as max |diff| /
     max |logit| and top-1 agreement (transformers' CUDA bf16 vs its CPU fp32 beside it: what bf16 costs);
  2. greedy: 64 greedy tokens from our CUDA-graph decode vs our GPU reference path (the model's own forward
     with the PyTorch reference kernels), in bf16 and in fp32: number of leading tokens that agree;
  3. prefill tokens/s at ``--prefill`` tokens (one sequence, no cache), ours vs transformers;
  4. decode tokens/s at each ``--batches`` size (prompt 128, ``--new`` tokens): ours = CUDA-graph replays
     of the decode step (prefill excluded); transformers = generate(new) - generate(1) (prefill excluded);
  5. the decode roofline at batch 1: bytes one step must read (weights of the layers and the 2 chosen
     experts, lm_head, Mamba state read+write, KV) over the measured copy bandwidth.
``--big`` adds decode at batch 1 for a ~1.5B config (hidden 2048, 16 layers, 16 experts top-2; ours only).
``--splitk SPEC`` routes the projections above one row through the split-K GEMM (SPEC: ``default`` = every
weight with the shape heuristic's launch, or the JSON of ``bench/kernels_gpu.py --gemm-sweep`` = its best
launches that beat cuBLAS by >= 5%); with ``--splitk-ab`` only our decode is timed, cuBLAS and split-K
alternately on one random model (no transformers), plus greedy agreement in bf16 and fp32.

Usage: python bench/local_model_gpu.py [--json out.json] [--big] [--splitk SPEC [--splitk-ab]] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def hf_config(args: argparse.Namespace, hidden: int, layers: int, experts: int, inter: int | None = None):  # noqa: ANN201
    from transformers import JambaConfig

    return JambaConfig(
        vocab_size=args.vocab,
        hidden_size=hidden,
        intermediate_size=inter or hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        attn_layer_period=8,
        attn_layer_offset=4,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=experts,
        num_experts_per_tok=2,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        max_position_embeddings=65536,
        use_mamba_kernels=False,
        tie_word_embeddings=False,
    )


def sync() -> None:
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


def copy_bandwidth() -> float:
    a = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = timed(lambda: [b.copy_(a) for _ in range(10)], reps=3) / 10
    return 2 * a.numel() / t


def step_bytes(module, batch: int, context: int) -> int:  # noqa: ANN001
    """Bytes one decode step must move at this batch: every weight it reads once (MoE: the distinct experts
    the batch can hit, at most top-k per row), the embedding rows, Mamba state read + write, K/V read."""
    from local_model.model import Experts

    cfg = module.config
    total = 0
    for name, p in module.named_parameters():
        if "embed_tokens" in name:
            continue
        total += p.numel() * p.element_size()
    for m in module.modules():
        if isinstance(m, Experts):
            per = (m.gate_up_proj.numel() + m.down_proj.numel()) * m.gate_up_proj.element_size()
            hit = min(cfg.num_experts, batch * cfg.num_experts_per_tok)
            total -= per * (cfg.num_experts - hit) // cfg.num_experts
    d = cfg.mamba_d_inner
    per_row_state = (
        len(cfg.mamba_layer_ids) * (d * cfg.mamba_d_state * 4 + d * (cfg.mamba_d_conv - 1) * 2) * 2
    )
    kv = len(cfg.attention_layer_ids) * 2 * cfg.num_key_value_heads * cfg.attn_head_dim * 2 * context
    return total + batch * (per_row_state + kv + cfg.hidden_size * 2)


def host_cpu() -> str:
    """The host's CPU model (transformers' decode step is host-bound, so its figures depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def bundle_of(module):  # noqa: ANN001, ANN201
    """The kernel bundle a model runs (every kernel-using module holds the same one)."""
    return next(m.kernels for m in module.modules() if hasattr(m, "kernels"))


# the Mamba state's dtype in `ours_greedy_graph`'s cache: float32 (the engine's) unless a --splitk-ab mode
# asks for the model dtype (``ssm16=1``: what transformers' and mamba-ssm's decode caches hold)
SSM_STATE_DTYPE = [torch.float32]


def ours_greedy_graph(
    lm, prompt: torch.Tensor, steps: int, graphs: bool = True
) -> tuple[torch.Tensor, float]:  # noqa: ANN001
    """Prefill through the model (Triton bundle), then ``steps - 1`` decode steps replayed from a CUDA graph.
    Returns (tokens [B, steps], seconds of the decode steps alone)."""
    from local_model.decode import DecodeStep

    b, p = prompt.shape
    pool = lm.module.allocate_cache(b, p + steps + 8, num_slots=b + 1, ssm_dtype=SSM_STATE_DTYPE[0])
    slots = torch.arange(b, device=prompt.device)
    step = DecodeStep(lm.module, pool, bundle_of(lm.module))
    with torch.inference_mode():
        first = lm.module(prompt, pool.view(slots, torch.zeros(b, dtype=torch.long)), last_only=True)[:, -1]
        nxt = first.argmax(-1)
        bucket = step.start(nxt, slots, torch.full((b,), p, device=prompt.device), graphs=graphs)
        sync()
        t0 = time.perf_counter()
        hist = step.run(bucket, steps - 1, graphs=graphs)
        sync()
        dt = time.perf_counter() - t0
    return torch.cat([nxt[:, None], hist[:, :b].t()], dim=1), dt


def reference_greedy(module, prompt: torch.Tensor, steps: int) -> torch.Tensor:  # noqa: ANN001
    """Our GPU reference path: the model's own cached forward with the PyTorch reference kernels."""
    from local_model.kernels import DEFAULT_KERNELS

    saved = bundle_of(module)
    module.set_kernels(DEFAULT_KERNELS)
    try:
        b, p = prompt.shape
        cache = module.allocate_cache(b, p + steps + 8)
        out = []
        with torch.inference_mode():
            nxt = module(prompt, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            for _ in range(steps - 1):
                nxt = module(nxt, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
        return torch.cat(out, dim=1)
    finally:
        module.set_kernels(saved)


def leading_agreement(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    eq = (a == b).cpu()
    return [int(row.cumprod(0).sum()) for row in eq]


_SHIPPED_SPLITK: dict = {}


def shipped_splitk() -> dict:
    """`triton_gemm.SPLITK_SHAPES` as the module ships it (snapshot taken before the bench first changes it)."""
    from local_model.kernels import triton_gemm as tg

    if not _SHIPPED_SPLITK:
        _SHIPPED_SPLITK.update(tg.SPLITK_SHAPES)
    return dict(_SHIPPED_SPLITK)


def apply_splitk(spec: str | None, module) -> dict:  # noqa: ANN001
    """Fill `triton_gemm.SPLITK_SHAPES` from ``spec`` (None/"off": empty; "default": every 2-D weight of
    ``module`` with the heuristic launch; a path: the sweep JSON's best launches beating cuBLAS by 5%;
    "all:PATH": every swept shape at its best launch; "better:PATH": the shipped launches, each replaced by
    the sweep's best where it beat the shipped one in the sweep's run)."""
    from local_model.kernels import triton_gemm as tg

    shipped = shipped_splitk()
    tg.SPLITK_SHAPES.clear()
    if spec in (None, "off"):
        return {}
    if spec == "default":
        for p in module.parameters():
            if p.dim() == 2:
                tg.SPLITK_SHAPES[tuple(p.shape)] = tg.SplitKConfig()
    elif spec.startswith("better:"):
        # the shipped launches, each replaced by the sweep's best where that was faster in the same run
        tg.SPLITK_SHAPES.update(shipped)
        for r in json.loads(Path(spec.removeprefix("better:")).read_text()).get("gemm_sweep", []):
            if r.get("best_config") and (r.get("speedup_vs_shipped") or 0) > 1.0:
                tg.SPLITK_SHAPES[(r["n"], r["k"])] = tg.SplitKConfig(**r["best_config"])
    else:
        # "all:PATH": every swept shape at its best launch, faster than cuBLAS or not
        every = spec.startswith("all:")
        for r in json.loads(Path(spec.removeprefix("all:")).read_text()).get("gemm_sweep", []):
            if r.get("best_config") and (every or (r.get("speedup_vs_cublas") or 0) >= 1.05):
                tg.SPLITK_SHAPES[(r["n"], r["k"])] = tg.SplitKConfig(**r["best_config"])
    return {f"{n}x{k}": str(c) for (n, k), c in tg.SPLITK_SHAPES.items()}


_OVERRIDE_FIELDS = {
    "bn": "block_n",
    "bk": "block_k",
    "split": "split_k",
    "stages": "num_stages",
    "warps": "num_warps",
    "bm": "block_m",
}


_MOE_FIELDS = {
    "bm": "block_m",
    "bn": "block_n",
    "bk": "block_k",
    "warps": "num_warps",
    "stages": "num_stages",
    "split": "split_k",
    "pf": "prefetch_lines",
}


def mode_overrides(spec: str) -> dict[str, int]:
    """The ``key=value+...`` tail of a --splitk-ab mode: ``smem`` (KB), ``wide``, ``moestages``, ``cublas``
    (a weight's row count N: that projection back on cuBLAS), ``gch`` (at most this many vocabulary
    chunks a row in the greedy argmax), ``ssm16`` (1: the Mamba state in bf16, not fp32), ``fold`` (the
    decode step folds its RMSNorms into the neighbouring projections up to this many rows, 0: never;
    `DecodeStep.FOLD_MAX_ROWS`), MoeGemmConfig
    fields of every MoE launch as ``gu.field`` / ``dn.field`` (`_MOE_FIELDS`; ``pf``: prefetch lines) and
    SplitKConfig fields by their short names (`_OVERRIDE_FIELDS`), for every launch or, as ``NxK.field``,
    for one weight shape's."""
    out = {}
    for item in filter(None, spec.split("+")):
        key, _, value = item.partition("=")
        head, dot, field = key.rpartition(".")
        if head in ("gu", "dn"):
            ok = field in _MOE_FIELDS
        elif dot:
            ok = field in _OVERRIDE_FIELDS
        else:
            ok = field in ("smem", "wide", "moestages", "cublas", "gch", "ssm16", "fold", *_OVERRIDE_FIELDS)
        if not ok:
            raise SystemExit(f"unknown mode override {key!r}")
        out[key] = int(value)
    return out


def override_launches(over: dict[str, int], swiglu: set[tuple[int, int]], rows: int = 64) -> None:
    """Apply `mode_overrides` to `triton_gemm.SPLITK_SHAPES` and `triton_moe.MOE_SHAPES` in place: ``wide=F``
    multiplies every split-K launch's block_n and split_k by F (the same program count, F x fewer re-reads
    of the activations); ``smem=KB`` cuts each split-K launch's stages (then its K block) until its pipeline
    fits KB at ``rows`` rows (``swiglu``: the weight shapes whose launch computes gate and up tiles), so the
    next kernel's programs fit beside it under PDL; ``moestages=N`` caps the MoE GEMMs' stages."""
    from local_model.decode import DecodeStep
    from local_model.kernels import triton_decode as td
    from local_model.kernels import triton_gemm as tg
    from local_model.kernels import triton_moe as tm

    if "fold" in over:
        DecodeStep.FOLD_MAX_ROWS = over["fold"]
    if "gch" in over:
        td.GREEDY_MAX_CHUNKS = over["gch"]
    SSM_STATE_DTYPE[0] = torch.bfloat16 if over.get("ssm16") else torch.float32
    fields = {_OVERRIDE_FIELDS[k]: v for k, v in over.items() if k in _OVERRIDE_FIELDS}
    for shape in [s for s in tg.SPLITK_SHAPES if s[0] == over.get("cublas")]:
        del tg.SPLITK_SHAPES[shape]
    moe = {
        part: {_MOE_FIELDS[key[3:]]: v for key, v in over.items() if key.startswith(part + ".")}
        for part in ("gu", "dn")
    }
    if moe["gu"] or moe["dn"]:
        for key, mc in tm.MOE_SHAPES.items():
            tm.MOE_SHAPES[key] = replace(
                mc, gate_up=replace(mc.gate_up, **moe["gu"]), down=replace(mc.down, **moe["dn"])
            )
    for (n, k), cfg in tg.SPLITK_SHAPES.items():
        cfg = replace(cfg, **fields)
        own = {
            _OVERRIDE_FIELDS[key.rpartition(".")[2]]: v
            for key, v in over.items()
            if key.partition(".")[0] == f"{n}x{k}" and "." in key
        }
        cfg = replace(cfg, **own)
        if "wide" in over:
            cfg = replace(cfg, block_n=cfg.block_n * over["wide"], split_k=cfg.split_k * over["wide"])
        if "smem" in over:
            bm = cfg.block_m or tg.block_m_for(rows)
            stages, bk = tg.fit_pipeline(
                cfg.num_stages, cfg.block_k, bm, cfg.block_n, (n, k) in swiglu, 2, limit=over["smem"] * 1024
            )
            cfg = replace(cfg, num_stages=stages, block_k=bk)
        tg.SPLITK_SHAPES[(n, k)] = cfg
    if "moestages" in over:
        for key, mc in tm.MOE_SHAPES.items():
            cap = over["moestages"]
            tm.MOE_SHAPES[key] = replace(
                mc,
                gate_up=replace(mc.gate_up, num_stages=min(mc.gate_up.num_stages, cap)),
                down=replace(mc.down, num_stages=min(mc.down.num_stages, cap)),
            )


def splitk_ab(args: argparse.Namespace) -> int:
    """Decode tok/s of one random model (our bundle, CUDA graphs) with the projections on cuBLAS and on the
    split-K GEMM, alternating (two rounds); greedy tokens of the two paths and, in fp32, of the split-K path
    against our GPU reference path."""
    from types import SimpleNamespace

    from local_model.decode import DecodeStep
    from local_model.kernels import triton_decode as td
    from local_model.kernels import triton_gemm as tg
    from local_model.kernels import triton_moe as tm

    shipped = shipped_splitk()
    moe_shipped = dict(tm.MOE_SHAPES)
    gch_shipped = td.GREEDY_MAX_CHUNKS
    fold_shipped = DecodeStep.FOLD_MAX_ROWS  # after --fold-max-rows
    if args.big:
        module = random_gpu_model(args, 2048, 16, 16, args.big_inter)
    else:
        module = random_gpu_model(args, args.hidden, args.layers, args.experts)
    lm = SimpleNamespace(module=module)
    # the dense MLPs' gate/up weights, which the decode step runs as one SwiGLU projection of 2 x intermediate
    swiglu = {
        (2 * layer.feed_forward.gate_proj.out_features, layer.feed_forward.gate_proj.in_features)
        for layer in module.model.layers
        if not layer.is_moe
    }

    def use(mode: str) -> None:
        """cublas*: no split-K; splitk*: ``--splitk``'s; default*: the shipped SPLITK_SHAPES; a ``:key=value+...``
        tail overrides launches (`override_launches`)."""
        base, _, spec = mode.partition(":")
        apply_splitk(args.splitk if base.startswith("splitk") else None, module)
        if base.startswith("default"):
            tg.SPLITK_SHAPES.update(shipped)
        tm.MOE_SHAPES.clear()
        tm.MOE_SHAPES.update(moe_shipped)
        td.GREEDY_MAX_CHUNKS = gch_shipped
        DecodeStep.FOLD_MAX_ROWS = fold_shipped
        override_launches(mode_overrides(spec), swiglu)

    dev = next(module.parameters()).device
    out: dict = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "splitk": args.splitk,
    }
    out["splitk_shapes"] = apply_splitk(args.splitk, module) if args.splitk else "shipped"
    pdl_env = os.environ.get("HYBRIDGATE_PDL", "1")  # what the greedy checks below run with
    for b in [int(x) for x in args.batches.split(",")]:
        prompt = torch.randint(
            0, args.vocab, (b, 128), device=dev, generator=torch.Generator(dev).manual_seed(b)
        )
        toks = {}
        for _ in range(2):
            for mode in args.modes.split(","):
                # "-nopdl": every kernel launched without programmatic dependent launch (read at capture)
                os.environ["HYBRIDGATE_PDL"] = "0" if mode.partition(":")[0].endswith("-nopdl") else "1"
                use(mode)
                try:
                    ours_greedy_graph(lm, prompt, 8)  # capture this bucket's graph, warm up
                    toks[mode], t = ours_greedy_graph(lm, prompt, args.new + 1)
                except Exception as exc:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
                    out[f"b{b}_{mode}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                out.setdefault(f"b{b}_{mode}_tok_s", []).append(round(b * args.new / t))
        os.environ["HYBRIDGATE_PDL"] = pdl_env
        if "splitk" in toks and "cublas" in toks:
            out[f"b{b}_greedy_splitk_vs_cublas_bf16_leading_match_min"] = min(
                leading_agreement(toks["splitk"], toks["cublas"])
            )
        modes = [m for m in args.modes.split(",") if m in toks]
        for mode in modes[1:]:
            # bf16 rounding differs between launch variants, so rows may part after a few dozen tokens
            out[f"b{b}_greedy_{mode}_vs_{modes[0]}_bf16_leading_match_min"] = min(
                leading_agreement(toks[mode], toks[modes[0]])
            )
        print(json.dumps({k: v for k, v in out.items() if k.startswith(f"b{b}_")}), flush=True)
    module.float()
    # fp32 greedy tokens of every split-K mode (launch overrides included) against our GPU reference path
    checked = [m for m in args.modes.split(",") if not m.startswith("cublas")]
    for b in (2, 16):
        prompt = torch.randint(
            0, args.vocab, (b, 32), device=dev, generator=torch.Generator(dev).manual_seed(7)
        )
        g_ref = reference_greedy(module, prompt, args.greedy_steps)
        for mode in checked:
            use(mode)
            g, _ = ours_greedy_graph(lm, prompt, args.greedy_steps)
            out[f"greedy_fp32_b{b}_{mode}_vs_reference_leading_match"] = leading_agreement(g, g_ref)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prefill", type=int, default=8192)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--greedy-steps", type=int, default=64)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--big-inter", type=int, default=1184, help="expert width of the --big config (~1.5B)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument(
        "--profile", action="store_true", help="only: per-kernel device times of eager decode steps"
    )
    ap.add_argument("--splitk", default=None, help="'default' or a --gemm-sweep JSON (see the docstring)")
    ap.add_argument(
        "--splitk-ab", action="store_true", help="only: our decode, cuBLAS vs split-K projections"
    )
    ap.add_argument(
        "--modes",
        default="cublas,splitk",
        help="--splitk-ab: modes to alternate (cublas, splitk, default = shipped SPLITK_SHAPES; '-nopdl' suffix: "
        "without programmatic launch; ':key=value+...' launch overrides, see override_launches); with --big, "
        "on the ~1.5B config",
    )
    ap.add_argument(
        "--fold-max-rows",
        type=int,
        default=None,
        help="our decode step folds its RMSNorms into the split-K projections up to this many rows (0: never; "
        "default: the shipped DecodeStep.FOLD_MAX_ROWS; with --splitk-ab a mode's fold=N overrides it)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.fold_max_rows is not None:
        from local_model.decode import DecodeStep

        DecodeStep.FOLD_MAX_ROWS = args.fold_max_rows

    if args.splitk_ab:
        return splitk_ab(args)
    if args.profile:
        return profile_decode(args)

    from transformers import JambaForCausalLM

    import local_model

    dev = "cuda"
    out: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host_cpu": host_cpu(),
    }
    out["copy_TBps"] = round(copy_bandwidth() / 1e12, 2)
    torch.manual_seed(0)
    cfg = hf_config(args, args.hidden, args.layers, args.experts)
    with tempfile.TemporaryDirectory() as tmp:
        hf_cpu = JambaForCausalLM(cfg).eval()
        hf_cpu.save_pretrained(tmp)
        out["params_m"] = round(sum(p.numel() for p in hf_cpu.parameters()) / 1e6, 1)
        ids = torch.randint(0, args.vocab, (2, 256), generator=torch.Generator().manual_seed(1))
        ours_cpu = local_model.load(tmp, device="cpu", dtype=torch.float32)
        ref = ours_cpu.logits(ids).float()
        del ours_cpu

        ours = local_model.load(tmp, device=dev, dtype=torch.bfloat16)
        out["bundle"] = bundle_of(ours.module).name
        if args.splitk:  # else the shipped SPLITK_SHAPES
            out["splitk_shapes"] = apply_splitk(args.splitk, ours.module)
        got = ours.logits(ids.to(dev)).float().cpu()
        scale = float(ref.abs().max())
        out["parity_ours_bf16_cuda_vs_fp32_cpu"] = {
            "max_abs_over_logit_scale": float((got - ref).abs().max() / scale),
            "mean_abs_over_logit_scale": float((got - ref).abs().mean() / scale),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
        }
        hf = None
        if not args.skip_hf:
            hf = (
                JambaForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16, attn_implementation="sdpa")
                .to(dev)
                .eval()
            )
            with torch.inference_mode():
                hf_got = hf(ids.to(dev)).logits.float().cpu()
                hf_ref = hf_cpu(ids).logits.float()
            out["parity_hf_bf16_cuda_vs_fp32_cpu"] = {
                "max_abs_over_logit_scale": float((hf_got - hf_ref).abs().max() / scale),
                "top1_agreement": float((hf_got.argmax(-1) == hf_ref.argmax(-1)).float().mean()),
            }
        del hf_cpu
        print(json.dumps(out), flush=True)

        # greedy agreement with our own GPU reference path, bf16 and fp32
        prompt = torch.randint(
            0, args.vocab, (2, 32), device=dev, generator=torch.Generator(dev).manual_seed(2)
        )
        g_ours, _ = ours_greedy_graph(ours, prompt, args.greedy_steps)
        g_ref = reference_greedy(ours.module, prompt, args.greedy_steps)
        out["greedy_bf16_leading_match"] = leading_agreement(g_ours, g_ref)
        ours32 = local_model.load(tmp, device=dev, dtype=torch.float32)
        g32, _ = ours_greedy_graph(ours32, prompt, args.greedy_steps)
        g32_ref = reference_greedy(ours32.module, prompt, args.greedy_steps)
        out["greedy_fp32_leading_match"] = leading_agreement(g32, g32_ref)
        out["greedy_steps"] = args.greedy_steps
        del ours32
        torch.cuda.empty_cache()
        print(json.dumps({k: v for k, v in out.items() if "greedy" in k}), flush=True)

        # prefill
        long_ids = torch.randint(0, args.vocab, (1, args.prefill), device=dev)
        t = timed(lambda: ours.logits(long_ids))
        out["ours_prefill_tok_s"] = round(args.prefill / t)
        if hf is not None:
            with torch.inference_mode():
                t = timed(lambda: hf(long_ids, use_cache=False, logits_to_keep=1), reps=1)
            out["hf_prefill_tok_s"] = round(args.prefill / t)
            out["prefill_speedup"] = round(out["ours_prefill_tok_s"] / out["hf_prefill_tok_s"], 1)
        print(json.dumps({k: v for k, v in out.items() if "prefill" in k}), flush=True)

        # decode
        for b in [int(x) for x in args.batches.split(",")]:
            prompt = torch.randint(0, args.vocab, (b, 128), device=dev)
            ours_greedy_graph(ours, prompt, 8)  # capture this bucket's graph, warm up
            t = min(ours_greedy_graph(ours, prompt, args.new + 1)[1] for _ in range(2))
            out[f"ours_decode_b{b}_tok_s"] = round(b * args.new / t)
            if hf is not None:
                with torch.inference_mode():

                    def gen(n: int, prompt: torch.Tensor = prompt) -> None:
                        hf.generate(
                            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True
                        )

                    # best of 2 after a warm-up (transformers' step is host-bound and varies by call)
                    t_all = timed(lambda: gen(args.new + 1), reps=2)
                    t_one = timed(lambda: gen(1), reps=2)
                out[f"hf_decode_b{b}_tok_s"] = round(b * args.new / max(t_all - t_one, 1e-9))
                # transformers' step is set by the host's CPU (Python per op), ours by the card
                out[f"hf_decode_b{b}_step_ms"] = round((t_all - t_one) / args.new * 1e3, 2)
                out[f"decode_b{b}_speedup"] = round(
                    out[f"ours_decode_b{b}_tok_s"] / out[f"hf_decode_b{b}_tok_s"], 1
                )
            # the step's bandwidth roofline: every byte it must move, once, at the measured copy rate
            bytes_ = step_bytes(ours.module, b, 128 + args.new)
            roof = b * out["copy_TBps"] * 1e12 / bytes_
            out[f"ours_decode_b{b}_step_us"] = round(b / out[f"ours_decode_b{b}_tok_s"] * 1e6, 1)
            out[f"decode_b{b}_bytes_per_step_mb"] = round(bytes_ / 1e6, 1)
            out[f"decode_b{b}_roofline_tok_s"] = round(roof)
            out[f"decode_b{b}_roofline_share"] = round(out[f"ours_decode_b{b}_tok_s"] / roof, 3)
            print(json.dumps({k: v for k, v in out.items() if "decode" in k}), flush=True)
        hf = ours = None
        torch.cuda.empty_cache()

    if args.big:
        out["big"] = big_decode(args, out["copy_TBps"])
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def random_gpu_model(
    args: argparse.Namespace, hidden: int, layers: int, experts: int, inter: int | None = None
):  # noqa: ANN201
    """Our model with random weights made on the GPU (bf16, Triton bundle): for speed runs only."""
    from local_model.config import JambaConfig
    from local_model.kernels import triton_bundle
    from local_model.model import JambaForCausalLM

    cfg = JambaConfig.from_dict(hf_config(args, hidden, layers, experts, inter).to_dict())
    with torch.device("meta"):
        module = JambaForCausalLM(cfg)
    module = module.to_empty(device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.arange(1, cfg.mamba_d_state + 1, device="cuda").float()).expand_as(p))
            elif name.endswith(("norm.weight", "layernorm.weight")) or name.endswith(".D"):
                p.fill_(1.0)
            elif name.endswith("dt_proj.bias"):
                p.fill_(-4.0)
            else:
                p.normal_(0.0, 0.02)
    module.eval().set_kernels(triton_bundle())
    return module


def profile_decode(args: argparse.Namespace) -> int:
    """Per-kernel device time of eager decode steps (what a CUDA-graph replay runs, minus launch gaps)."""

    runs = [(random_gpu_model(args, args.hidden, args.layers, args.experts), args.batches, "")]
    if args.big:
        runs.append((random_gpu_model(args, 2048, 16, 16, args.big_inter), "1", " (~1.5B config)"))
    for module, batches, label in runs:
        if args.splitk:
            apply_splitk(args.splitk, module)
        _profile_one(module, batches, label, args.vocab)
    return 0


def _profile_one(module, batches: str, label: str, vocab: int) -> None:  # noqa: ANN001
    """Eager steps' kernels by total device time, then the replayed CUDA graph's own timeline: kernels per
    step, their summed device time and the step's span (the difference is launch gaps between graph nodes)."""
    from torch.profiler import ProfilerActivity, profile

    from local_model.decode import DecodeStep

    for b in [int(x) for x in batches.split(",")]:
        pool = module.allocate_cache(b, 512, num_slots=b + 1)
        step = DecodeStep(module, pool, bundle_of(module))
        ids = torch.randint(0, vocab, (b,), device="cuda")
        slots = torch.arange(b, device="cuda")
        pos = torch.full((b,), 100, device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                step.forward(ids, slots, pos)
            sync()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step.forward(ids, slots, pos)
                sync()
        print(f"=== batch {b}{label}: 5 eager decode steps ===")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
        bucket = step.start(ids[:b], slots, pos)
        with torch.inference_mode():
            step.run(bucket, 3)
            sync()
            t0 = time.perf_counter()
            step.run(bucket, 50)
            sync()
            wall_us = (time.perf_counter() - t0) / 50 * 1e6
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                step.run(bucket, 5)
                sync()
        print(json.dumps({f"b{b}_graph": graph_timeline(prof, 5, wall_us)}), flush=True)


def graph_timeline(prof, steps: int, wall_us: float) -> dict:  # noqa: ANN001
    """Kernels of ``steps`` replays from a profiler's trace: per step, the kernel count, their summed
    device time, the span first start -> last end, and the largest kernels' share."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text())["traceEvents"]
    kern = sorted(
        (e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"), key=lambda e: e["ts"]
    )
    if not kern:
        return {"error": "no kernel events in the trace (graph nodes not reported by CUPTI)"}
    by_name: dict[str, float] = {}
    for e in kern:
        by_name[e["name"][:80]] = by_name.get(e["name"][:80], 0.0) + e["dur"] / steps
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(kern, kern[1:], strict=False)]
    gaps.sort()
    span = (kern[-1]["ts"] + kern[-1]["dur"] - kern[0]["ts"]) / steps
    busy = sum(e["dur"] for e in kern) / steps
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:25]
    exclusive, idle = critical_time(kern, steps)
    # one whole step in launch order (the middle replay): start offset, duration and what each kernel
    # added to the step's end, to attribute the span to layers
    per = len(kern) // steps
    one = kern[per * (steps // 2) : per * (steps // 2 + 1)]
    order = [
        [e["name"][:48], round(e["ts"] - one[0]["ts"], 1), round(e["dur"], 1), round(added, 1)]
        for e, added in zip(one, added_times(one)[0], strict=True)
    ]
    return {
        "wall_us_per_step": round(wall_us, 1),
        "kernels_per_step": round(len(kern) / steps, 1),
        "kernel_us_per_step": round(busy, 1),
        "span_us_per_step": round(span, 1),
        "gap_us_median": round(gaps[len(gaps) // 2], 2) if gaps else 0.0,
        "gap_us_p90": round(gaps[int(len(gaps) * 0.9)], 2) if gaps else 0.0,
        "top_kernels_us_per_step": {k: round(v, 1) for k, v in top},
        # what each kernel adds to the step's end (its end past every earlier kernel's end): under PDL
        # kernels overlap, so these, not the durations, add up to the span (with the idle time)
        "idle_us_per_step": round(idle, 1),
        "exclusive_us_per_step": {
            k: round(v, 1) for k, v in sorted(exclusive.items(), key=lambda kv: -kv[1])[:25]
        },
        "one_step_in_order": order if len(kern) % steps == 0 else "kernel count differs between steps",
    }


def added_times(kern: list[dict]) -> tuple[list[float], float]:
    """For each kernel, the time by which it pushed the timeline's end out beyond every kernel that started
    before it; and the time no kernel ran. Kernels are trace events (``ts``, ``dur``) sorted by start."""
    added = []
    idle = 0.0
    end = kern[0]["ts"]
    for e in kern:
        idle += max(0.0, e["ts"] - end)
        stop = e["ts"] + e["dur"]
        added.append(max(0.0, stop - max(end, e["ts"])))
        end = max(end, stop)
    return added, idle


def critical_time(kern: list[dict], steps: int) -> tuple[dict[str, float], float]:
    """Per kernel name, `added_times` summed (µs per step), and the time no kernel ran (µs per step)."""
    added, idle = added_times(kern)
    exclusive: dict[str, float] = {}
    for e, t in zip(kern, added, strict=True):
        exclusive[e["name"][:80]] = exclusive.get(e["name"][:80], 0.0) + t / steps
    return exclusive, idle / steps


def big_decode(args: argparse.Namespace, copy_tbps: float) -> dict:
    """A bigger config (hidden 2048, 16 layers, 16 experts top-2, intermediate ``--big-inter``), random weights
    made on the GPU: decode at batch 1 and its share of the bandwidth roofline."""
    from local_model import LocalModel

    module = random_gpu_model(args, 2048, 16, 16, args.big_inter)
    lm = LocalModel(module, None)
    res = {"params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 1)}
    prompt = torch.randint(0, args.vocab, (1, 128), device="cuda")
    ours_greedy_graph(lm, prompt, 8)
    _, t = ours_greedy_graph(lm, prompt, args.new + 1)
    res["ours_decode_b1_tok_s"] = round(args.new / t)
    bytes_ = step_bytes(module, 1, 128 + args.new)
    res["bytes_per_step_mb"] = round(bytes_ / 1e6, 1)
    res["roofline_tok_s"] = round(copy_tbps * 1e12 / bytes_)
    res["roofline_share"] = round(res["ours_decode_b1_tok_s"] / res["roofline_tok_s"], 3)
    print(json.dumps({"big": res}), flush=True)
    return res


if __name__ == "__main__":
    raise SystemExit(main())
