"""Mamba-2 hybrid throughput: our Bamba path against transformers' BambaForCausalLM on the same random
weights, in one run, plus our Triton SSD scan beside mamba-ssm's ``mamba_chunk_scan_combined``.

    python bench/mamba2_gpu.py                  # on the GPU machine: ~400M Bamba-shaped model, bf16
    python bench/mamba2_gpu.py --smoke          # a tiny config on CPU (checks the script, no figures)
    python bench/mamba2_gpu.py --ssd-only --anchor DIR   # only the SSD scan beside mamba-ssm (~1 min)
    python bench/mamba2_gpu.py --ssd-only --ssd-sweep --anchor DIR   # and our launch alternatives
    python bench/mamba2_gpu.py --engine-decode-only   # only the serving engine's decode, forward vs CUDA graphs

Reports prefill and decode tokens/s at batch 1 and 64 for both implementations, our decode also through the
serving engine (each decode step the model's forward, or `FamilyDecodeStep` replayed from a CUDA graph per batch
bucket), logit agreement and
greedy agreement, and SSD-scan milliseconds (device time, median) on the anchor shapes (mamba-ssm from
shared/bench/mamba_ssm_anchor, installed to the ``--anchor`` directory; skipped otherwise). JSON goes to
``$OUT/mamba2_gpu.json`` (or --json PATH) and a summary table to stdout. transformers runs the path its own
import chose (mamba-ssm is put on sys.path only after it ran); the JSON records which path and version.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import local_model  # noqa: E402
from local_model.mamba2 import Mamba2Kernels  # noqa: E402

BAMBA_400M = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
    num_key_value_heads=4, attn_layer_indices=[5, 12, 19], mamba_n_heads=32, mamba_n_groups=1,
    mamba_d_state=128, mamba_chunk_size=256, max_position_embeddings=16384,
)  # fmt: skip
BAMBA_SMOKE = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=16,
    mamba_chunk_size=32, max_position_embeddings=4096,
)  # fmt: skip
SSD_SHAPES = [
    (1, 2048, 64, 64, 1, 128),
    (1, 8192, 64, 64, 1, 128),
    (8, 2048, 64, 64, 8, 128),
    (1, 8192, 128, 64, 8, 128),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def our_kernels(device: torch.device) -> tuple[Mamba2Kernels, str]:
    if device.type != "cuda":
        return Mamba2Kernels(), "reference (PyTorch)"
    from local_model.kernels.ssd import ssd_chunk_scan, ssd_state_update

    kernels = Mamba2Kernels(chunk_scan=ssd_chunk_scan, state_update=ssd_state_update)
    try:  # the kernel bundle's Triton causal conv, when present (same keywords as the reference)
        from local_model.kernels import triton_ops

        kernels = Mamba2Kernels(
            causal_conv1d=triton_ops.causal_conv1d, causal_conv1d_update=triton_ops.causal_conv1d_update,
            chunk_scan=ssd_chunk_scan, state_update=ssd_state_update,
        )  # fmt: skip
        return kernels, "triton (ssd + conv)"
    except (ImportError, AttributeError):
        return kernels, "triton (ssd), reference conv"


def transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def transformers_path() -> str:
    """Which Mamba-2 path transformers' Bamba runs: the CUDA-kernel path needs mamba-ssm and causal-conv1d."""
    from transformers.models.bamba import modeling_bamba

    fast = getattr(modeling_bamba, "is_fast_path_available", None)
    if fast is None:  # versions that load the kernels lazily: the packages decide
        import importlib.util

        fast = all(importlib.util.find_spec(m) is not None for m in ("mamba_ssm", "causal_conv1d"))
    return "cuda kernels (mamba-ssm + causal-conv1d)" if fast else "pytorch (torch_forward)"


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, tmp: Path) -> tuple[Any, Any]:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BambaConfig(**(BAMBA_SMOKE if args.smoke else BAMBA_400M))
    hf_cpu = transformers.BambaForCausalLM(cfg).eval()
    hf_cpu.to(dtype).save_pretrained(tmp)
    del hf_cpu
    hf = transformers.BambaForCausalLM.from_pretrained(tmp, dtype=dtype).to(device).eval()
    ours = local_model.load(tmp, device=device, dtype=dtype)
    return hf, ours


@torch.inference_mode()
def prefill_tps(
    model: Callable[[torch.Tensor], Any], ids: torch.Tensor, device: torch.device, reps: int
) -> float:
    return ids.numel() / timed(lambda: model(ids), device, reps)


@torch.inference_mode()
def decode_tps_ours(lm: Any, batch: int, prompt: int, steps: int, device: torch.device) -> float:
    m = lm.module
    ids = torch.randint(3, m.config.vocab_size, (batch, prompt), device=device)

    def run() -> None:
        cache = m.allocate_cache(batch, prompt + steps + 1)
        nxt = m(ids, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        sync(device)
        run.t0 = time.perf_counter()  # type: ignore[attr-defined]
        for _ in range(steps):
            nxt = m(nxt, cache)[:, -1].argmax(-1, keepdim=True)
        sync(device)
        run.dt = time.perf_counter() - run.t0  # type: ignore[attr-defined]

    run()
    secs = []
    for _ in range(3):
        run()
        secs.append(run.dt)  # type: ignore[attr-defined]
    return batch * steps / statistics.median(secs)


def decode_tps_engine(lm: Any, batch: int, prompt: int, steps: int, graphs: bool) -> float:
    """The serving engine's decode tokens/s: ``batch`` prompts of ``prompt`` tokens, greedy, each decode step
    the model's forward (``graphs=False``) or the bucketed `FamilyDecodeStep` replayed from CUDA graphs
    (captured at engine start, outside the time). Two runs of 16 and 16 + ``steps`` tokens; their time
    difference leaves the prefill and the first tokens out."""
    from local_model.engine import Engine, EngineConfig, SamplingParams

    m = lm.module
    cfg = EngineConfig(
        memory_budget_mb=4096, max_num_seqs=max(batch, 1), prefix_caching=False, max_model_len=2048,
        prefill_chunk_tokens=max(batch * prompt, 256), decode_step=graphs, cuda_graphs=graphs,
    )  # fmt: skip
    engine = Engine(m, None, cfg)
    ids = torch.randint(3, m.config.vocab_size, (batch, prompt)).tolist()

    def timed_run(new: int) -> float:
        params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
        sync(m.lm_head.weight.device)
        t0 = time.perf_counter()
        streams = [engine.submit_sync(p, params) for p in ids]
        engine.run_until_idle()
        assert all(len(s.result().choices[0].token_ids) == new for s in streams)
        return time.perf_counter() - t0

    timed_run(4)  # warm-up
    secs = [timed_run(16 + steps) - timed_run(16) for _ in range(2)]
    return batch * steps / statistics.median(secs)


class _Live(dict):
    """The results, each printed as it is measured (a run cut short still shows what it got)."""

    def __setitem__(self, key: str, value: Any) -> None:
        print(f"  {key} = {value}", flush=True)
        super().__setitem__(key, value)


@torch.inference_mode()
def decode_tps_hf(hf: Any, batch: int, prompt: int, steps: int, device: torch.device) -> float:
    ids = torch.randint(3, hf.config.vocab_size, (batch, prompt), device=device)

    def gen(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync(device)
        return time.perf_counter() - t0

    def run() -> float:
        # generate() builds the family's own hybrid cache in every transformers version; decode time is
        # the whole generation less a one-token generation (the prefill).
        return gen(steps + 1) - gen(1)

    run()
    return batch * steps / statistics.median([run() for _ in range(2)])


def device_ms(fn: Callable[[], Any]) -> tuple[float, float | None]:
    """Median milliseconds of ``fn``: eagerly with triton.testing.do_bench (CUDA events around each call, L2
    flushed between calls; a host-bound call shows its launch overhead) and replayed from a CUDA graph
    with do_bench_cudagraph (device time only; None if the capture fails)."""
    import triton.testing

    eager = float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    try:
        graph: float | None = float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    except Exception as exc:  # noqa: BLE001 - a capture failure is a result to report, not a crash
        print(f"  (CUDA-graph timing failed: {type(exc).__name__}: {exc})", flush=True)
        graph = None
    return eager, graph


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Disagreement of ``a`` with ``b``: max |a-b| over max |b|, and ||a-b|| / ||b||."""
    a, b = a.float(), b.float()
    return {
        "max_over_scale": round(float((a - b).abs().max() / b.abs().max()), 6),
        "rel_l2": round(float((a - b).norm() / b.norm()), 6),
    }


def ssd_timing_inputs(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword inputs of `ssd_chunk_scan` on one anchor shape (B, L, H, P, G, N), chunk 256, zero state."""
    b, seqlen, h, p, g, n = shape
    return dict(
        x=torch.randn(b, seqlen, h, p, device=device, dtype=dtype),
        dt=torch.rand(b, seqlen, h, device=device) * 0.1,
        A=-torch.rand(h, device=device) - 0.5,
        B=torch.randn(b, seqlen, g, n, device=device, dtype=dtype),
        C=torch.randn(b, seqlen, g, n, device=device, dtype=dtype),
        D=torch.randn(h, device=device),
        z=torch.randn(b, seqlen, h, p, device=device, dtype=dtype),
        ssm_state=torch.zeros(b, h, p, n, device=device),
        chunk_size=256,
    )


def ssd_case(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, anchor_fn: Any
) -> dict[str, Any]:
    """Our Triton SSD scan (and mamba-ssm's, if given) on one anchor shape (B, L, H, P, G, N), chunk 256.

    Both sides compute the same thing: y = (SSD(x, dt, A, B, C) from the initial state h0 + D x) * silu(z)
    with dt used as given (no bias, no softplus; mamba-ssm's default dt_limit (0, inf) leaves dt >= 0
    alone), and both return the final state. Ours reads h0 from and writes the final state to a pool row,
    so the comparison runs on a fresh copy of h0 (the timing loop keeps feeding the pool back in, which
    does not change the work). Agreement is reported against mamba-ssm and, for both, against our fp32
    PyTorch reference on the same (bf16-rounded) inputs.
    """
    from local_model.kernels.ssd import ssd_chunk_scan
    from local_model.mamba2 import ssd_chunk_scan_ref

    b, seqlen, h, p, g, n = shape
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, seqlen, h, p, device=device, dtype=dtype, generator=gen)
    dt = torch.rand(b, seqlen, h, device=device, generator=gen) * 0.1
    A = -torch.rand(h, device=device, generator=gen) - 0.5
    B = torch.randn(b, seqlen, g, n, device=device, dtype=dtype, generator=gen)
    C = torch.randn(b, seqlen, g, n, device=device, dtype=dtype, generator=gen)
    D = torch.randn(h, device=device, generator=gen)
    z = torch.randn(b, seqlen, h, p, device=device, dtype=dtype, generator=gen)
    h0 = torch.randn(b, h, p, n, device=device, generator=gen) * 0.5
    key = f"B{b}_L{seqlen}_H{h}_P{p}_G{g}_N{n}"
    common = dict(x=x, dt=dt, A=A, B=B, C=C, chunk_size=256, D=D, z=z)

    pool = h0.clone()
    ours_eager, ours_graph = device_ms(lambda: ssd_chunk_scan(**common, ssm_state=pool))
    out: dict[str, Any] = {f"ours_{key}_ms": _ms(ours_graph), f"ours_{key}_eager_ms": _ms(ours_eager)}
    ours_state = h0.clone()
    y_ours = ssd_chunk_scan(**common, ssm_state=ours_state)
    ref_state = h0.clone()
    wide = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in common.items()}
    y_ref = ssd_chunk_scan_ref(**wide, ssm_state=ref_state)  # fp32 math and output on the same inputs
    out[f"ours_vs_fp32ref_y_{key}"] = _rel(y_ours, y_ref)
    out[f"ours_vs_fp32ref_state_{key}"] = _rel(ours_state, ref_state)
    out[f"nan_{key}"] = bool(y_ours.isnan().any())
    if anchor_fn is not None:

        def anchor() -> Any:
            return anchor_fn(
                x, dt, A, B, C, chunk_size=256, D=D, z=z, initial_states=h0, return_final_states=True
            )

        y_anchor, anchor_state = anchor()  # autotunes on first use
        anchor_eager, anchor_graph = device_ms(anchor)
        out[f"mamba_ssm_{key}_ms"] = _ms(anchor_graph)
        out[f"mamba_ssm_{key}_eager_ms"] = _ms(anchor_eager)
        if ours_graph and anchor_graph:
            out[f"speedup_vs_mamba_ssm_{key}"] = round(anchor_graph / ours_graph, 3)
        out[f"speedup_vs_mamba_ssm_{key}_eager"] = round(anchor_eager / ours_eager, 3)
        out[f"ours_vs_mamba_ssm_y_{key}"] = _rel(y_ours, y_anchor)
        out[f"ours_vs_mamba_ssm_state_{key}"] = _rel(ours_state, anchor_state)
        out[f"mamba_ssm_vs_fp32ref_y_{key}"] = _rel(y_anchor, y_ref)
    return out


def ssd_kernel_breakdown(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> dict[str, float]:
    """Device microseconds per launch of our scan's kernels on one shape (torch.profiler, 20 calls)."""
    from torch.profiler import ProfilerActivity, profile

    from local_model.kernels.ssd import ssd_chunk_scan

    kw = ssd_timing_inputs(shape, device, dtype)
    for _ in range(3):
        ssd_chunk_scan(**kw)
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            ssd_chunk_scan(**kw)
        sync(device)
    us: dict[str, float] = {}
    for ev in prof.key_averages():
        own = getattr(ev, "self_device_time_total", None)
        if own is None:
            own = getattr(ev, "self_cuda_time_total", 0.0)
        if own > 0:  # kernels (and copies) themselves, not the host ops that launched them
            us[ev.key[:60]] = round(own / 20, 2)
    return dict(sorted(us.items(), key=lambda kv: -kv[1]))


def ssd_bench(device: torch.device, dtype: torch.dtype, smoke: bool, anchor: str | None) -> dict[str, Any]:
    if device.type != "cuda":
        return {"skipped": "needs CUDA"}
    if anchor:  # only now: transformers' Bamba has already chosen its path without mamba-ssm
        sys.path.insert(0, anchor)
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as anchor_fn
    except ImportError:
        anchor_fn = None
    out: dict[str, Any] = {}
    for shape in SSD_SHAPES[:1] if smoke else SSD_SHAPES:
        case = ssd_case(shape, device, dtype, anchor_fn)
        print(f"  ssd {json.dumps(case)}", flush=True)
        out.update(case)
    shape = SSD_SHAPES[1]
    try:
        out[f"kernel_us_B{shape[0]}_L{shape[1]}_H{shape[2]}"] = ssd_kernel_breakdown(shape, device, dtype)
    except Exception as exc:  # noqa: BLE001 - the breakdown is a diagnostic; the figures above stand
        print(f"  (kernel breakdown failed: {type(exc).__name__}: {exc})", flush=True)
    return out


SSD_SWEEP: dict[str, dict[str, int]] = {
    "default": {},
    "inline_cb": dict(shared_cb=0),
    "out_stages2": dict(out_stages=2),
    "out_k32": dict(out_k=32),
    "out_w4": dict(out_warps=4),
    "out_w4_k32": dict(out_warps=4, out_k=32),
    "out_w4_k32_s2": dict(out_warps=4, out_k=32, out_stages=2),
    "state_n64": dict(state_n=64),
    "state_warps8": dict(state_warps=8),
    "pass_block512": dict(pass_block=512),
    "pass_block2048": dict(pass_block=2048),
}


def ssd_sweep(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Graph-replayed ms of our scan per shape with single launch choices changed from the defaults
    (``local_model.kernels.ssd.SCAN_TUNING``), to pick the defaults on the card."""
    from local_model.kernels import ssd

    kind = "half" if dtype in (torch.bfloat16, torch.float16) else "f32"
    base = dict(ssd.SCAN_TUNING[kind])
    out: dict[str, Any] = {"tuning_default": base}
    try:
        for shape in SSD_SHAPES:
            kw = ssd_timing_inputs(shape, device, dtype)
            row: dict[str, float | None] = {}
            for name, change in SSD_SWEEP.items():
                ssd.SCAN_TUNING[kind] = {**base, **change}
                try:
                    row[name] = _ms(device_ms(lambda kw=kw: ssd.ssd_chunk_scan(**kw))[1])
                except Exception as exc:  # noqa: BLE001 - a config that fails to compile is a result
                    print(f"  sweep {name} {shape}: {type(exc).__name__}: {exc}", flush=True)
                    row[name] = None
            key = "B{}_L{}_H{}_P{}_G{}_N{}".format(*shape)
            print(f"  sweep {key} {json.dumps(row)}", flush=True)
            out[key] = row
    finally:
        ssd.SCAN_TUNING[kind] = base
    return out


def ssd_summary(res: dict[str, Any]) -> None:
    """One line per SSD shape: graph-replayed and eager ms for both, speedup, agreement."""
    print(
        f"\n{'ssd shape (B,L,H,P,G,N)':24s} {'ours':>7s} {'mssm':>7s} {'x':>6s} | {'ours':>7s} {'mssm':>7s} {'x':>6s}"
        "  y rel L2 / max-over-scale: ours~fp32ref  mssm~fp32ref  ours~mssm"
    )
    print(f"{'':24s} {'graph-replayed ms':^22s} | {'eager ms (do_bench)':^22s}")

    def num(v: Any, width: int = 7, prec: int = 3) -> str:
        return f"{v:{width}.{prec}f}" if isinstance(v, (int, float)) else f"{'-':>{width}s}"

    for shape in SSD_SHAPES:
        key = "B{}_L{}_H{}_P{}_G{}_N{}".format(*shape)
        if f"ours_{key}_eager_ms" not in res:
            continue

        def rel(name: str, key: str = key) -> str:
            r = res.get(f"{name}_{key}")
            return f"{r['rel_l2']:.1e}/{r['max_over_scale']:.1e}" if r else "-"

        print(
            f"{str(shape):24s} {num(res[f'ours_{key}_ms'])} {num(res.get(f'mamba_ssm_{key}_ms'))} "
            f"{num(res.get(f'speedup_vs_mamba_ssm_{key}'), 6, 2)} | {num(res[f'ours_{key}_eager_ms'])} "
            f"{num(res.get(f'mamba_ssm_{key}_eager_ms'))} {num(res.get(f'speedup_vs_mamba_ssm_{key}_eager'), 6, 2)}"
            f"  {rel('ours_vs_fp32ref_y'):>15s} {rel('mamba_ssm_vs_fp32ref_y'):>15s} {rel('ours_vs_mamba_ssm_y'):>15s}"
        )
    sweep = res.get("sweep")
    if sweep:
        names = list(SSD_SWEEP)
        print(f"\nsweep, graph-replayed ms  {' '.join(f'{nm:>14s}' for nm in names)}")
        for key, row in sweep.items():
            if key != "tuning_default":
                print(f"{key:26s} {' '.join(f'{num(row.get(nm), 14, 4)}' for nm in names)}")
    for k, v in res.items():
        if k.startswith("kernel_us_"):
            print(f"our kernels, us per call ({k[10:]}): " + ", ".join(f"{n} {t}" for n, t in v.items()))


def engine_decode(res: dict[str, Any], ours: Any, smoke: bool) -> None:
    """Engine decode tokens/s at batch 1 and 64: forward vs CUDA-graph buckets (eager buckets on the CPU)."""
    prompt, steps = (8, 4) if smoke else (128, 64)
    for batch in (1, 64):
        print(f"engine decode batch {batch} ...", flush=True)
        for name, graphs in (("forward", False), ("graphs", True)):
            res[f"engine_decode_b{batch}_tps_{name}"] = round(
                decode_tps_engine(ours, batch, prompt, steps, graphs), 1
            )
        res[f"engine_decode_b{batch}_graphs_speedup"] = round(
            res[f"engine_decode_b{batch}_tps_graphs"] / res[f"engine_decode_b{batch}_tps_forward"], 2
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny config on CPU: checks the script")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--anchor", default=None,
        help="directory holding mamba_ssm, put on sys.path only for the SSD-scan comparison (after transformers ran)",
    )  # fmt: skip
    ap.add_argument(
        "--ssd-only", action="store_true",
        help="only the SSD-scan comparison with mamba-ssm (no model build, about a minute)",
    )  # fmt: skip
    ap.add_argument("--ssd-sweep", action="store_true", help="with --ssd-only: also time launch alternatives")
    ap.add_argument(
        "--engine-decode-only", action="store_true",
        help="only the engine's decode tokens/s (forward vs CUDA-graph buckets) at batch 1 and 64",
    )  # fmt: skip
    args = ap.parse_args()
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    res: dict[str, Any] = _Live({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "dtype": str(dtype), "date": time.strftime("%Y-%m-%d")})  # fmt: skip
    path = Path(args.json or os.path.join(os.environ.get("OUT", tempfile.gettempdir()), "mamba2_gpu.json"))
    if args.ssd_only:
        res["ssd_scan"] = ssd_bench(device, dtype, args.smoke, args.anchor)
        if args.ssd_sweep and device.type == "cuda":
            res["ssd_scan"]["sweep"] = ssd_sweep(device, dtype)
        path.write_text(json.dumps(res, indent=1) + "\n")
        ssd_summary(res["ssd_scan"])
        print(f"(json: {path})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print("building and saving the random Bamba checkpoint ...", flush=True)
        hf, ours = build(args, device, dtype, Path(tmp))
    res["transformers_version"] = transformers_version()
    res["transformers_path"] = transformers_path()
    kernels, res["our_kernels"] = our_kernels(device)
    ours.module.set_kernels(kernels)
    res["params_M"] = round(sum(p.numel() for p in ours.module.parameters()) / 1e6, 1)
    if args.engine_decode_only:
        del hf
        engine_decode(res, ours, args.smoke)
        path.write_text(json.dumps(res, indent=1) + "\n")
        print(f"(json: {path})")
        return 0

    with torch.inference_mode():
        ids = torch.randint(3, ours.config.vocab_size, (1, 64), device=device)
        a, b = ours.module(ids).float(), hf(ids).logits.float()
        res["logits_max_diff_over_scale"] = float((a - b).abs().max() / b.abs().max())
        hf_greedy = hf.generate(
            ids[:, :16], max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        res["greedy_agree_16"] = (
            ours.greedy(ids[0, :16].tolist(), 16, stop_ids=[]) == hf_greedy[0, 16:].tolist()
        )

    long_len, short_len, steps = (64, 16, 4) if args.smoke else (2048, 256, 64)
    for name, impl in (
        ("ours", lambda x: ours.module(x, last_only=True)),
        ("transformers", lambda x: hf(x, logits_to_keep=1)),
    ):
        print(f"prefill {name} ...", flush=True)
        res[f"prefill_b1_L{long_len}_tps_{name}"] = round(
            prefill_tps(impl, torch.randint(3, 200, (1, long_len), device=device), device, 3), 1
        )
        res[f"prefill_b64_L{short_len}_tps_{name}"] = round(
            prefill_tps(impl, torch.randint(3, 200, (64, short_len), device=device), device, 3), 1
        )
    for key in (f"prefill_b1_L{long_len}", f"prefill_b64_L{short_len}"):
        res[f"{key}_speedup"] = round(res[f"{key}_tps_ours"] / res[f"{key}_tps_transformers"], 2)
    for batch in (1, 64):
        print(f"decode batch {batch} ...", flush=True)
        res[f"decode_b{batch}_tps_ours"] = round(
            decode_tps_ours(ours, batch, 128 if not args.smoke else 8, steps, device), 1
        )
        res[f"decode_b{batch}_tps_transformers"] = round(
            decode_tps_hf(hf, batch, 128 if not args.smoke else 8, steps, device), 1
        )
        res[f"decode_b{batch}_speedup"] = round(
            res[f"decode_b{batch}_tps_ours"] / res[f"decode_b{batch}_tps_transformers"], 2
        )
    engine_decode(res, ours, args.smoke)
    # Last: mamba-ssm's Triton kernels autotune on first use, which takes a while.
    print("SSD scan beside mamba_chunk_scan_combined ...", flush=True)
    res["ssd_scan"] = ssd_bench(device, dtype, args.smoke, args.anchor)

    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{'metric':48s} value")
    for k, v in res.items():
        if k != "ssd_scan":
            print(f"{k:48s} {v}")
    ssd_summary(res["ssd_scan"])
    print(f"(json: {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
