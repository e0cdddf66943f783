"""Our Triton Mamba kernels beside mamba-ssm's CUDA/Triton ones, same tensors, same card, same process.

Prefill: `selective_scan` against `mamba_ssm.ops.selective_scan_interface.selective_scan_fn` on the anchor
table's shapes (u, delta, z bf16 [B, D, L]; B, C bf16 [B, 16, L]; A, D, delta_bias fp32; softplus; final
state returned). Ours runs twice: on the anchor's L-contiguous tensors, and on token-major tensors (unit
channel stride: the layout our model's projections produce). Both outputs are checked against mamba-ssm's
(‖ours − theirs‖ / ‖theirs‖) on the same inputs. Decode: `selective_state_update` against mamba-ssm's Triton
one, each captured in a CUDA graph (so launch overhead is out of both). Each scan row also gives the
device time of our kernels (profiler) and both scans replayed from a CUDA graph. Also the card's copy
bandwidth. ``--gemm``: the decode projections beside cuBLAS at 1, 16 and 64 rows (``--gemm-rows``): our GEMV
(plain and with the residual add + RMSNorm fused) at 1-4 rows, the split-K GEMM above; ``--gemm-sweep``: the
best split-K launch per projection of the 426M step (prints a ready `SPLITK_SHAPES`). ``--mamba-step``: the
Mamba decode sublayer between in_proj and out_proj (conv window + x_proj, SSM step) at 1, 16 and 64 rows,
the SSM step's launch shapes with and without PDL, cold state and weights (`mamba_step`).

Needs mamba-ssm importable (see the anchor's README); without it only our timings are printed.
Usage: python bench/kernels_gpu.py [--json out.json] [--quick] [--sweep] [--gemm] [--gemm-sweep] [--gemm-rows 16,64]
       [--moe-sweep] [--moe-tokens 64,16]
       [--mamba-step [--mamba-rows 1,16,64]]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_skeleton import arrive_and_wait  # noqa: E402
from local_model.decode import capture_graph  # noqa: E402
from local_model.kernels import triton_ops as tk  # noqa: E402

SHAPES = [(1, 2048, 2048), (1, 2048, 8192), (1, 8192, 8192), (8, 2048, 2048), (1, 8192, 32768)]


def bench(fn) -> float:  # noqa: ANN001
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def graph_bench(fn) -> float:  # noqa: ANN001
    """Median ms of one call, replayed from a CUDA graph of 20 calls."""
    g, _ = capture_graph(lambda: [fn() for _ in range(20)])
    return bench(g.replay) / 20


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def copy_bandwidth() -> float:
    a = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return round(2 * a.numel() / bench(lambda: b.copy_(a)) / 1e9, 2)


# (block_d, num_warps, chunk multiplier; 0: one chunk, a single pass); channels per thread =
# block_d / (32 * num_warps)
SWEEP = [
    (64, 1, 1),
    (64, 1, 2),
    (64, 1, 0.5),
    (64, 2, 1),
    (128, 2, 1),
    (256, 4, 1),
    (256, 8, 1),
    (64, 1, 0),
]


def _graph_ms(fn) -> float | str:  # noqa: ANN001
    """`graph_bench` in ms, or the error's text if ``fn`` cannot be captured."""
    try:
        return round(graph_bench(fn), 4)
    except RuntimeError as exc:  # capture not supported by the callee
        torch.cuda.synchronize()
        return f"not captured: {exc}"[:200]


def kernel_times(fn, reps: int = 5) -> dict[str, float]:  # noqa: ANN001
    """Mean device microseconds per call of each kernel ``fn`` launches (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            out[e.key[:48]] = round(t / reps, 1)
    return out


def scan_row(batch: int, dim: int, length: int, selective_scan_fn, sweep: bool = False) -> dict:  # noqa: ANN001
    dev, dt, n = "cuda", torch.bfloat16, 16
    torch.manual_seed(0)
    u = torch.randn(batch, dim, length, device=dev, dtype=dt)
    delta = torch.randn(batch, dim, length, device=dev, dtype=dt)
    A = -torch.rand(dim, n, device=dev) - 0.5
    Bm = torch.randn(batch, n, length, device=dev, dtype=dt)
    Cm = torch.randn(batch, n, length, device=dev, dtype=dt)
    Dv = torch.randn(dim, device=dev)
    z = torch.randn(batch, dim, length, device=dev, dtype=dt)
    db = torch.randn(dim, device=dev)
    state = torch.empty(batch, dim, n, device=dev)

    def tm(x: torch.Tensor) -> torch.Tensor:  # same values, unit channel stride (our model's layout)
        return x.transpose(1, 2).contiguous().transpose(1, 2)

    u2, d2, z2, B2, C2 = tm(u), tm(delta), tm(z), tm(Bm), tm(Cm)
    state2 = torch.empty_like(state)

    def ours():  # noqa: ANN202
        return tk.selective_scan(
            u=u, delta=delta, A=A, B=Bm, C=Cm, D=Dv, z=z, delta_bias=db, delta_softplus=True, ssm_state=state
        )

    def ours_tm():  # noqa: ANN202
        return tk.selective_scan(
            u=u2, delta=d2, A=A, B=B2, C=C2, D=Dv, z=z2, delta_bias=db, delta_softplus=True, ssm_state=state2
        )

    row: dict = {"shape": f"B={batch} D={dim} L={length}"}
    if sweep:
        from local_model.kernels.triton_scan import _pick_chunks

        base_chunks, _ = _pick_chunks(batch, dim, length, None)
        tried = {}
        from local_model.kernels.triton_scan import LAST_LAUNCH

        for bd, nw, mult in SWEEP:
            nc = max(1, min(length // 16, int(base_chunks * mult)))

            def cfg(bd=bd, nw=nw, nc=nc):  # noqa: ANN202
                return tk.selective_scan(
                    u=u2,
                    delta=d2,
                    A=A,
                    B=B2,
                    C=C2,
                    D=Dv,
                    z=z2,
                    delta_bias=db,
                    delta_softplus=True,
                    ssm_state=state2,
                    n_chunks=nc,
                    block_d=bd,
                    num_warps=nw,
                )

            key = f"bd{bd}_w{nw}_c{nc}"
            tried[key] = _graph_ms(cfg)
            k_out = LAST_LAUNCH.get("output")
            if k_out is not None and batch == 1 and dim == 2048 and length == 8192:
                regs = [getattr(k_out, "n_regs", None), getattr(k_out, "n_spills", None)]
                row.setdefault("output_kernel_regs_spills", {})[key] = regs
        row["sweep_token_major_ms"] = tried
        timed = {k: v for k, v in tried.items() if isinstance(v, float)}
        row["best_config"] = min(timed, key=timed.get) if timed else None
    state.zero_()
    state2.zero_()
    y, y2 = ours(), ours_tm()
    row["ours_ms"] = round(bench(ours), 4)
    row["ours_token_major_ms"] = round(bench(ours_tm), 4)
    row["ours_token_major_kernels_us"] = kernel_times(ours_tm)
    # the same call replayed from a CUDA graph: device time without the host's launch overhead (a slow host
    # made the 2K-token wall medians host-bound on one machine)
    row["ours_token_major_graph_ms"] = _graph_ms(ours_tm)
    if selective_scan_fn is not None:

        def theirs():  # noqa: ANN202
            return selective_scan_fn(
                u, delta, A, Bm, Cm, Dv, z=z, delta_bias=db, delta_softplus=True, return_last_state=True
            )

        ref_y, ref_state = theirs()
        row["mamba_ssm_ms"] = round(bench(theirs), 4)
        row["mamba_ssm_graph_ms"] = _graph_ms(theirs)
        row["rel_err_y"] = rel(y, ref_y)
        row["rel_err_y_token_major"] = rel(y2, ref_y)
        row["rel_err_state"] = rel(state, ref_state)
        row["speedup"] = round(row["mamba_ssm_ms"] / row["ours_ms"], 2)
        row["speedup_token_major"] = round(row["mamba_ssm_ms"] / row["ours_token_major_ms"], 2)
    bytes_ = 2 * (4 * batch * dim * length + 2 * batch * n * length)
    row["ours_GBps"] = round(bytes_ / row["ours_ms"] / 1e6, 1)
    return row


def decode_row(batch: int, ssu_ref) -> dict:  # noqa: ANN001
    dev, dt, dim, n = "cuda", torch.bfloat16, 2048, 16
    st = torch.randn(batch, dim, n, device=dev)
    st2 = st.clone()
    x = torch.randn(batch, dim, device=dev, dtype=dt)
    dtt = torch.randn(batch, dim, device=dev, dtype=dt)
    A = -torch.rand(dim, n, device=dev)
    Bm = torch.randn(batch, n, device=dev, dtype=dt)
    Cm = torch.randn(batch, n, device=dev, dtype=dt)
    Dv = torch.randn(dim, device=dev)
    z = torch.randn(batch, dim, device=dev, dtype=dt)
    db = torch.randn(dim, device=dev)
    idx = torch.arange(batch, device=dev)

    def ours_dec():  # noqa: ANN202
        return tk.selective_state_update(
            ssm_state=st,
            x=x,
            dt=dtt,
            A=A,
            B=Bm,
            C=Cm,
            D=Dv,
            z=z,
            dt_bias=db,
            dt_softplus=True,
            state_indices=idx,
        )

    row: dict = {"batch": batch, "ours_graph_us": round(graph_bench(ours_dec) * 1000, 2)}
    if ssu_ref is not None:

        def theirs_dec():  # noqa: ANN202
            return ssu_ref(st2, x, dtt, A, Bm, Cm, Dv, z=z, dt_bias=db, dt_softplus=True)

        row["mamba_ssm_graph_us"] = round(graph_bench(theirs_dec) * 1000, 2)
        st.copy_(st2)
        row["rel_err"] = rel(ours_dec(), theirs_dec())
    return row


# Decode-step projections (N, K) of the 426M config (in_proj, out_proj, MLP gate/up, MLP down, lm_head, then
# x_proj, attention qkv and o) and of the ~1.5B one (in_proj, out_proj, lm_head).
GEMM_SHAPES = [(4096, 1024), (1024, 2048), (5632, 1024), (1024, 2816), (32000, 1024), (8192, 2048), (2048, 4096),
               (32000, 2048), (96, 2048), (1536, 1024), (1024, 1024)]  # fmt: skip
# The 426M step's projections above one row, as the step calls them (MLP gate/up with SwiGLU fused).
SWEEP_SHAPES = [(4096, 1024, False), (96, 2048, False), (1024, 2048, False), (1536, 1024, False),
                (1024, 1024, False), (5632, 1024, True), (1024, 2816, False), (32000, 1024, False)]  # fmt: skip
# In the decode step every weight is read once between ~550 MB of other weights, so the timed calls cycle
# through copies of the weight totalling more than the 50 MB L2 (a replay of one weight would be L2-served).
ROTATE_BYTES = 160e6
GRAPH_CALLS = 20


def weight_copies(n: int, k: int) -> list[torch.Tensor]:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    copies = min(GRAPH_CALLS, max(1, int(ROTATE_BYTES // w.nbytes) + 1))
    return [w] + [w.clone() for _ in range(copies - 1)]


def rotating_us(call, weights: list[torch.Tensor], rep: int = 200) -> float | str:  # noqa: ANN001
    """Median µs of ``call(w)``, replayed from a CUDA graph of GRAPH_CALLS calls cycling through
    ``weights``; an error text if the call fails or cannot be captured."""
    try:
        g, _ = capture_graph(lambda: [call(weights[i % len(weights)]) for i in range(GRAPH_CALLS)])
        ms = triton.testing.do_bench(g.replay, warmup=max(10, rep // 10), rep=rep, return_mode="median")
        return round(ms / GRAPH_CALLS * 1000, 2)
    except Exception as exc:  # noqa: BLE001 - a config that fails to compile or launch is reported, not fatal
        torch.cuda.synchronize()
        return f"failed: {type(exc).__name__}: {exc}"[:200]


def _gbps(nbytes: int, us: float | str) -> int | None:
    return round(nbytes / (us * 1e-6) / 1e9) if isinstance(us, float) else None


def _tbps(nbytes: int, us: float | str) -> float | None:
    return round(nbytes / (us * 1e-6) / 1e12, 2) if isinstance(us, float) else None


def _cublas(swiglu: bool):  # noqa: ANN202
    import torch.nn.functional as F

    def call(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, w)
        if swiglu:
            g, u = y.chunk(2, dim=-1)
            y = F.silu(g) * u
        return y

    return call


def _splitk(swiglu: bool, **kw):  # noqa: ANN003, ANN202
    def call(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return tk.linear_splitk(x=x, weight=w, swiglu=swiglu, **kw)

    return call


def _split_facts(x: torch.Tensor, w: torch.Tensor, swiglu: bool, kw: dict) -> dict:
    """Correctness and determinism of one split-K launch: rel error against cuBLAS (+ SwiGLU in PyTorch),
    bit-identical over 10 repeats, fixup and two-pass reductions bit-identical, and the split it ran."""
    from local_model.kernels.triton_gemm import splitk_config

    ref = _cublas(swiglu)(x, w)
    first = tk.linear_splitk(x=x, weight=w, swiglu=swiglu, **kw)
    same = all(torch.equal(first, tk.linear_splitk(x=x, weight=w, swiglu=swiglu, **kw)) for _ in range(10))
    other = {**kw, "reduce": "launch" if kw.get("reduce", "fixup") == "fixup" else "fixup"}
    n_out = w.shape[0] // 2 if swiglu else w.shape[0]
    return {
        "rel_err_vs_cublas": rel(first, ref),
        "bitwise_repeatable": same,
        "fixup_equals_two_pass": torch.equal(first, tk.linear_splitk(x=x, weight=w, swiglu=swiglu, **other)),
        "default_split_k": splitk_config(x.shape[0], n_out, x.shape[1]).split_k,
    }


def gemm_rows(rows_list: tuple[int, ...] = (1, 16, 64), save=None) -> list[dict]:  # noqa: ANN001
    """Per projection and row count (``save(rows so far)`` after each), CUDA-graph-replayed over rotating
    weight copies (cold L2), µs per call and GB/s of weight: cuBLAS (F.linear); at 1-4 rows our GEMV (plain
    and with residual + RMSNorm); above,
    the split-K GEMM with its default launch (one-launch fixup and two-pass reductions), at half and twice
    the default split, and with one split (plain dot tiles, no reduction). The MLP gate/up shape is also
    timed with SwiGLU (cuBLAS + PyTorch silu * up vs the fused epilogue)."""
    from local_model.kernels.triton_gemm import splitk_config

    out = []
    for n, k in GEMM_SHAPES:
        ws = weight_copies(n, k)
        nbytes = ws[0].nbytes
        for rows in rows_list:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            row: dict = {"n": n, "k": k, "rows": rows, "weight_copies": len(ws)}
            row["cublas_us"] = rotating_us(lambda w, x=x: _cublas(False)(x, w), ws)
            if rows <= 4:
                nw = torch.rand(k, device="cuda", dtype=torch.bfloat16)
                res = torch.randn_like(x)
                row["ours_gemv_us"] = rotating_us(lambda w, x=x: tk.linear(x=x, weight=w), ws)
                row["ours_gemv_norm_residual_us"] = rotating_us(
                    lambda w, x=x, nw=nw, res=res: tk.norm_linear(
                        x=x, weight=w, norm_weight=nw, residual=res
                    ),
                    ws,
                )
            if rows > 1:
                split = splitk_config(rows, n, k).split_k or 1
                variants = {
                    "splitk_us": {},
                    "splitk_two_pass_us": {"reduce": "launch"},
                    "splitk_half_split_us": {"split_k": max(1, split // 2)},
                    "splitk_double_split_us": {"split_k": min(32, 2 * split)},
                    "dot_split1_us": {"split_k": 1},
                }
                for name, kw in variants.items():
                    row[name] = rotating_us(lambda w, x=x, kw=kw: _splitk(False, **kw)(x, w), ws)
                row.update(_split_facts(x, ws[0], False, {}))
                if (n, k) == (5632, 1024):
                    row["cublas_swiglu_us"] = rotating_us(lambda w, x=x: _cublas(True)(x, w), ws)
                    row["splitk_swiglu_us"] = rotating_us(lambda w, x=x: _splitk(True)(x, w), ws)
                    row["swiglu_rel_err_vs_cublas"] = _split_facts(x, ws[0], True, {})["rel_err_vs_cublas"]
            for key in [key for key in row if key.endswith("_us")]:
                row[key.replace("_us", "_GBps")] = _gbps(nbytes, row[key])
            out.append(row)
            print(json.dumps(row), flush=True)
            if save:
                save(out)
        del ws
        torch.cuda.empty_cache()
    return out


def _smem_fits(rows: int, cfg: dict, swiglu: bool) -> bool:
    """The pipeline's shared memory (stages x (x tile + weight tile(s)), bf16) within the H100's 227 KB."""
    from local_model.kernels.triton_gemm import block_m_for

    bm = cfg.get("block_m") or block_m_for(rows)
    tile = bm * cfg["block_k"] + cfg["block_k"] * cfg["block_n"] * (2 if swiglu else 1)
    return cfg["num_stages"] * tile * 2 <= 220 * 1024


def _sweep_candidates(
    rows: int, n_out: int, k: int, swiglu: bool = False, m_tiles_only: bool = False
) -> list[dict]:
    """Stage one of the sweep: rows a program (every row, or 16 / 32 of them) x output block x K block x
    split, 4 warps, 3 stages, one-launch reduction; only launches with 0.5-8 programs per SM whose splits
    hold at least one K block and whose pipeline fits in shared memory. ``m_tiles_only``: only launches of
    16 or 32 rows a program, with 32-64 output columns, K blocks of 128-256 and at most 4 splits."""
    from local_model.kernels.triton_gemm import NUM_SMS, block_m_for, splitk_config

    cands = []
    splits = sorted({1, 2, 4, 8, 16, splitk_config(rows, n_out, k).split_k or 1})
    all_rows = block_m_for(rows)
    for bm in sorted({all_rows, *(b for b in (16, 32) if b < all_rows)}, reverse=True):
        for bn in (32, 64, 128, 256):
            for bk in (64, 128, 256):
                for split in splits:
                    if (
                        bk * split > triton.cdiv(k, bk) * bk
                        or (bn >= 128 and bk == 256)
                        or (bn == 256 and n_out < 4096)
                        or (bm < all_rows and (bn == 256 or split > 4))
                        or (m_tiles_only and (bm == all_rows or bn > 64 or bk < 128))
                    ):
                        continue
                    programs = triton.cdiv(n_out, bn) * split * triton.cdiv(rows, bm)
                    nw = 8 if bn == 256 else 4
                    cfg = {"block_n": bn, "block_k": bk, "split_k": split, "num_warps": nw, "num_stages": 3}
                    if bm < all_rows:
                        cfg["block_m"] = bm
                    few = (split == 1 or m_tiles_only) and programs < NUM_SMS // 2
                    if (NUM_SMS // 2 <= programs <= 8 * NUM_SMS or few) and _smem_fits(rows, cfg, swiglu):
                        cands.append(cfg)
    return cands


def _cfg_key(cfg: dict) -> str:
    key = "bn{block_n}_bk{block_k}_s{split_k}_w{num_warps}_st{num_stages}_".format(**cfg) + cfg.get(
        "reduce", "fixup"
    )
    return key + (f"_bm{cfg['block_m']}" if cfg.get("block_m") else "")


def _cfg_of_key(key: str) -> dict:
    """The launch configuration `_cfg_key` names."""
    parts = key.split("_")
    cfg = {
        "block_n": int(parts[0][2:]),
        "block_k": int(parts[1][2:]),
        "split_k": int(parts[2][1:]),
        "num_warps": int(parts[3][1:]),
        "num_stages": int(parts[4][2:]),
        "reduce": parts[5],
    }
    if len(parts) > 6:
        cfg["block_m"] = int(parts[6][2:])
    return cfg


def _sweep_tried(
    x: torch.Tensor, ws: list[torch.Tensor], swiglu: bool, cands: list[dict], refine: int = 2
) -> dict:
    """µs per launch configuration (key `_cfg_key`): the candidates; warps {4, 8} x stages {2, 3, 4} on the
    best ``refine`` of them; then the best so far with the other reduction (two-pass)."""
    tried: dict[str, float | str] = {}
    configs: dict[str, dict] = {}

    def run(cfg: dict) -> None:
        if _cfg_key(cfg) not in tried and _smem_fits(x.shape[0], cfg, swiglu):
            configs[_cfg_key(cfg)] = cfg
            tried[_cfg_key(cfg)] = rotating_us(lambda w: _splitk(swiglu, **cfg)(x, w), ws, rep=40)

    def best(count: int) -> list[dict]:
        return [
            configs[key]
            for _, key in sorted((v, key) for key, v in tried.items() if isinstance(v, float))[:count]
        ]

    for cfg in cands:
        run(cfg)
    for base in best(refine):
        for nw in (4, 8):
            for st in (2, 3, 4):
                run({**base, "num_warps": nw, "num_stages": st})
    for base in best(1):
        if base["split_k"] > 1:
            run({**base, "reduce": "launch"})
    return tried


def gemm_sweep(rows_list: tuple[int, ...] = (64,), save=None, m_tiles_only: bool = False) -> list[dict]:  # noqa: ANN001
    """Best split-K launch per 426M projection (SWEEP_SHAPES) and row count (``save`` as in `gemm_rows`),
    against cuBLAS, timed as `gemm_rows` (the launches tried: `_sweep_candidates`, then `_sweep_tried`)."""
    from local_model.kernels.triton_gemm import SPLITK_SHAPES, splitk_config

    out = []
    for n, k, swiglu in SWEEP_SHAPES:
        ws = weight_copies(n, k)
        nbytes = ws[0].nbytes
        n_out = n // 2 if swiglu else n
        for rows in rows_list:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            cublas = rotating_us(lambda w, x=x, sw=swiglu: _cublas(sw)(x, w), ws)
            default = rotating_us(lambda w, x=x, sw=swiglu: _splitk(sw)(x, w), ws)
            ship = SPLITK_SHAPES.get((n, k))
            shipped = (
                rotating_us(lambda w, x=x, sw=swiglu, c=ship: _splitk(sw, config=c)(x, w), ws)
                if ship
                else None
            )
            cands = _sweep_candidates(rows, n_out, k, swiglu, m_tiles_only)
            tried = _sweep_tried(x, ws, swiglu, cands, refine=1 if m_tiles_only else 2)
            timed = sorted((v, key) for key, v in tried.items() if isinstance(v, float))
            best_us, best_key = timed[0] if timed else (None, None)
            best_cfg = _cfg_of_key(best_key) if best_key else None
            facts = _split_facts(x, ws[0], swiglu, best_cfg) if best_cfg else {}
            row = {
                "n": n,
                "k": k,
                "swiglu": swiglu,
                "rows": rows,
                "cublas_us": cublas,
                "default_us": default,
                "default_config": vars(splitk_config(rows, n_out, k)),
                "best_us": best_us,
                "best_config": best_cfg,
                "shipped_us": shipped,
                "shipped_config": vars(ship) if ship else None,
                "speedup_vs_shipped": round(shipped / best_us, 2) if shipped and best_us else None,
                "cublas_GBps": _gbps(nbytes, cublas),
                "best_GBps": _gbps(nbytes, best_us) if best_us else None,
                "speedup_vs_cublas": round(cublas / best_us, 2)
                if best_us and isinstance(cublas, float)
                else None,
                **facts,
                "tried_us": tried,
            }
            out.append(row)
            print(json.dumps({key: v for key, v in row.items() if key != "tried_us"}), flush=True)
            if save:
                save(out)
        del ws
        torch.cuda.empty_cache()
    return out


# (experts, hidden, expert width, top_k): the 426M random Jamba's MoE layers and a ~1.5B model's
MOE_SWEEP_SHAPES = [(8, 1024, 2816, 2), (16, 2048, 1184, 2)]
# the sweep stops trying new launches after this many seconds (the rows so far are reported)
MOE_SWEEP_SECONDS = 110.0


def moe_weight_copies(e: int, h: int, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of one layer's experts (gate/up [E, 2I, H], down [E, H, I], bf16), enough that the down
    weights alone total ROTATE_BYTES (so a launch timed alone also reads cold weights)."""
    gu = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) * 0.02
    dn = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) * 0.02
    copies = min(GRAPH_CALLS, max(2, int(ROTATE_BYTES // min(gu.nbytes, dn.nbytes)) + 1))
    return [(gu, dn)] + [(gu.clone(), dn.clone()) for _ in range(copies - 1)]


def _moe_candidates(stage: int, base: dict | None = None, down: bool = False, tokens: int = 64) -> list[dict]:
    """Stage 1: rows per program (up to the most pairs an expert can get, the token count) x output block
    x K block at 4 warps, 3 stages (K blocks of 256 only with 32-wide outputs). Stage 2 around ``base``:
    warps {4, 8} x stages {2, 3, 4}; for the down projection also 2 and 4 splits of K."""
    if stage == 1:
        return [
            {"block_m": bm, "block_n": bn, "block_k": bk, "num_warps": 4, "num_stages": 3, "split_k": 1}
            for bm in (16, 32, 64)
            if bm <= max(16, triton.next_power_of_2(tokens))
            for bn in (32, 64, 128)
            for bk in (64, 128, 256)
            if bk < 256 or bn == 32
        ]
    assert base is not None
    out = [{**base, "num_warps": nw, "num_stages": st} for nw in (4, 8) for st in (2, 3, 4)]
    if down:
        out += [{**base, "split_k": sp} for sp in (2, 4)]
    return out


def _moe_key(cfg: dict) -> str:
    return "m{block_m}_n{block_n}_k{block_k}_w{num_warps}_st{num_stages}_s{split_k}".format(**cfg)


@dataclass
class MoeCase:
    """One sweep case: a shape, its weight copies, tokens with random top-k routing, the heuristic launch."""

    e: int
    h: int
    i: int
    k: int
    tokens: int
    copies: list[tuple[torch.Tensor, torch.Tensor]]
    x: torch.Tensor
    idx: torch.Tensor
    w: torch.Tensor
    act: torch.Tensor  # the down projection's input when it is timed alone
    heur: object  # triton_moe.MoeConfig

    @classmethod
    def make(cls, e: int, h: int, i: int, k: int, tokens: int, copies: list) -> MoeCase:
        from local_model.kernels import triton_moe as tm

        gen = torch.Generator(device="cuda").manual_seed(tokens + e)
        x = torch.randn(tokens, h, device="cuda", dtype=torch.bfloat16, generator=gen)
        w, idx = torch.topk(
            torch.softmax(torch.randn(tokens, e, device="cuda", generator=gen), -1), k, dim=-1
        )
        act = torch.randn(tokens * k, i, device="cuda", dtype=torch.bfloat16, generator=gen)
        return cls(
            e, h, i, k, tokens, copies, x, idx, w.to(torch.bfloat16), act, tm.moe_config(tokens, k, e, h, i)
        )

    def kw(self, ws: tuple[torch.Tensor, torch.Tensor]) -> dict:
        import torch.nn.functional as F

        return {"x": self.x, "top_k_index": self.idx, "top_k_weights": self.w, "gate_up_proj": ws[0],
                "down_proj": ws[1], "act": F.silu}  # fmt: skip

    def whole_us(self, cfg, fused: bool, pdl: bool) -> float | str:  # noqa: ANN001
        """µs of one `moe_experts` call (align, both GEMMs, the token sum)."""
        from local_model.kernels import triton_moe as tm

        return rotating_us(
            lambda ws: tm.moe_experts(**self.kw(ws), config=cfg, fused_sum=fused, pdl=pdl), self.copies
        )

    def gemm_us(self, down: bool, c: dict) -> float | str:
        """µs of one grouped GEMM alone (no PDL; aligned to its own block_m; down with its token sum)."""
        from local_model.kernels import triton_moe as tm

        g = tm.MoeGemmConfig(**c)
        bm = g.block_m
        sid, bexp = tm.moe_align(self.idx, self.e, bm)
        rw = self.w.reshape(-1).contiguous()
        if down:
            return rotating_us(
                lambda ws: tm.moe_down(self.act, ws[1], sid, bexp, rw, self.tokens, g, bm, True, False),
                self.copies,
                rep=40,
            )
        return rotating_us(
            lambda ws: tm.moe_gate_up(self.x, ws[0], sid, bexp, self.k, g, bm, False), self.copies, rep=40
        )


def _moe_gemm_sweep(case: MoeCase, down: bool, deadline: float) -> dict:
    """The heuristic launch and the candidates of one grouped GEMM (stage 2 around stage 1's best); no new
    launch is tried past ``deadline`` (time.monotonic())."""
    import time

    heur = vars(case.heur.down if down else case.heur.gate_up)
    tried: dict[str, float | str] = {}
    configs: dict[str, dict] = {}

    def run(c: dict) -> None:
        if _moe_key(c) not in tried and time.monotonic() < deadline:
            configs[_moe_key(c)] = c
            tried[_moe_key(c)] = case.gemm_us(down, c)

    def best() -> dict | None:
        timed = sorted((v, key) for key, v in tried.items() if isinstance(v, float))
        return configs[timed[0][1]] if timed else None

    run(heur)
    for c in _moe_candidates(1, tokens=case.tokens):
        run(c)
    base = best()
    for c in _moe_candidates(2, base, down) if base else []:
        run(c)
    top = best()
    return {
        "default_us": tried.get(_moe_key(heur)),
        "best_us": tried[_moe_key(top)] if top else None,
        "best_config": top,
        "tried": len(tried),
        "tried_us": tried,
    }


def _moe_bits(case: MoeCase, best_cfg) -> dict:  # noqa: ANN001
    """The token sum in the down GEMM against ``.sum(1)`` over the same rows (heuristic and best launches),
    PDL on/off, repeats, counters at zero, error against the reference."""
    import torch.nn.functional as F

    from local_model.kernels import reference as ref
    from local_model.kernels import triton_gemm as tg
    from local_model.kernels import triton_moe as tm

    kw = case.kw(case.copies[0])
    expect = ref.moe_experts_ref(case.x, case.idx, case.w, kw["gate_up_proj"], kw["down_proj"], F.silu)
    fused = tm.moe_experts(**kw)
    out = {
        "fused_equals_sum1_bitwise": torch.equal(fused, tm.moe_experts(**kw, fused_sum=False)),
        "fused_pdl_equals_fused_bitwise": torch.equal(fused, tm.moe_experts(**kw, pdl=True)),
        "rel_err_vs_reference": rel(fused, expect),
    }
    if best_cfg is not None:
        b = tm.moe_experts(**kw, config=best_cfg)
        out["best_repeatable_bitwise"] = all(
            torch.equal(b, tm.moe_experts(**kw, config=best_cfg)) for _ in range(5)
        )
        if best_cfg.down.split_k == 1:
            out["best_equals_sum1_bitwise"] = torch.equal(
                b, tm.moe_experts(**kw, config=best_cfg, fused_sum=False)
            )
            # informational: other K blocks add the fp32 products in another order
            out["best_same_bits_as_heuristic"] = torch.equal(b, fused)
        out["best_rel_err_vs_reference"] = rel(b, expect)
    torch.cuda.synchronize()
    out["counters_at_zero"] = all(int(buf.abs().sum()) == 0 for buf in tg._LOCKS.values())
    return out


def moe_sweep(tokens_list: tuple[int, ...] = (64, 16), save=None) -> list[dict]:  # noqa: ANN001
    """Per MOE_SWEEP_SHAPES shape and token count (``save`` as in `gemm_rows`), random top-k routing, cold
    weights (`moe_weight_copies`), CUDA-graph replayed, µs per call: the whole `moe_experts` (today's path:
    heuristic launches, k rows summed by ``.sum(1)``, no PDL; the heuristic launches with the down GEMM's
    own token sum, without and with PDL; the best launches found, without and with PDL); each grouped GEMM
    alone (`_moe_gemm_sweep`); the bit checks (`_moe_bits`). Prints one JSON row per case;
    `print_moe_table` prints the table and a ready MOE_SHAPES."""
    import time

    from local_model.kernels import triton_moe as tm
    from local_model.kernels.pdl import pdl_enabled

    t_start = time.monotonic()
    out = []
    for e, h, i, k in MOE_SWEEP_SHAPES:
        copies = moe_weight_copies(e, h, i)
        nbytes = copies[0][0].nbytes + copies[0][1].nbytes
        for tokens in tokens_list:
            case = MoeCase.make(e, h, i, k, tokens, copies)
            row: dict = {
                "experts": e, "hidden": h, "inter": i, "top_k": k, "tokens": tokens,
                "weight_mb": round(nbytes / 1e6, 1), "weight_copies": len(copies),
                "pdl_available": pdl_enabled(case.x.device),
                "heuristic": {"gate_up": vars(case.heur.gate_up), "down": vars(case.heur.down)},
            }  # fmt: skip
            row["today_us"] = case.whole_us(None, False, False)
            row["fused_us"] = case.whole_us(None, True, False)
            row["fused_pdl_us"] = case.whole_us(None, True, True)
            # each case gets an equal share of what is left of the sweep's time
            left = len(MOE_SWEEP_SHAPES) * len(tokens_list) - len(out)
            share = (MOE_SWEEP_SECONDS - (time.monotonic() - t_start)) / left
            row["gate_up"] = _moe_gemm_sweep(case, False, time.monotonic() + share / 2)
            row["down"] = _moe_gemm_sweep(case, True, time.monotonic() + share / 2)
            bg, bd = row["gate_up"]["best_config"], row["down"]["best_config"]
            best_cfg = None
            if bg and bd:
                if max(bg["block_m"], bd["block_m"]) % min(bg["block_m"], bd["block_m"]):
                    bd = {**bd, "block_m": bg["block_m"]}
                best_cfg = tm.MoeConfig(tm.MoeGemmConfig(**bg), tm.MoeGemmConfig(**bd))
                row["best_config"] = {"gate_up": bg, "down": bd}
                row["best_us"] = case.whole_us(best_cfg, True, False)
                row["best_pdl_us"] = case.whole_us(best_cfg, True, True)
            row.update(_moe_bits(case, best_cfg))
            for key in ("today_us", "fused_us", "fused_pdl_us", "best_us", "best_pdl_us"):
                us = row.get(key)
                row[key.replace("_us", "_TBps")] = _tbps(nbytes, us)
            row["elapsed_s"] = round(time.monotonic() - t_start, 1)
            out.append(row)
            print(
                json.dumps({key: v for key, v in row.items() if key not in ("gate_up", "down")}), flush=True
            )
            for name in ("gate_up", "down"):
                print(
                    name,
                    json.dumps({key: v for key, v in row[name].items() if key != "tried_us"}),
                    flush=True,
                )
            if save:
                save(out)
        del copies
        torch.cuda.empty_cache()
    return out


def _moe_shapes_entry(r: dict) -> tuple[float, dict[str, dict]] | None:
    """The launches a sweep row recommends (with PDL where the card has it), if they beat the heuristic's
    by >= 3%."""
    pdl = r["pdl_available"]
    best, base = r.get("best_pdl_us" if pdl else "best_us"), r.get("fused_pdl_us" if pdl else "fused_us")
    if not (isinstance(best, float) and isinstance(base, float) and best <= 0.97 * base):
        return None
    return best, {n: r["best_config"][n] for n in ("gate_up", "down")}


@triton.jit
def _tile_read(
    w_ptr, out_ptr, k_blocks, s_n, TILED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    """Program n: the sum of a [BLOCK_N, K] weight slab read a [BLOCK_N, BLOCK_K] tile a step, as the
    grouped GEMMs read it (TILED: tiles stored contiguously, else rows of a row-major matrix)."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)[None, :]
    ks = tl.arange(0, BLOCK_K)[:, None]
    if TILED:
        base = w_ptr + pid * k_blocks * BLOCK_N * BLOCK_K + cols * BLOCK_K + ks
    else:
        base = w_ptr + (pid * BLOCK_N + cols) * s_n + ks
    acc = tl.zeros([BLOCK_K, BLOCK_N], tl.float32)
    for kb in range(k_blocks):
        if TILED:
            acc += tl.load(base + kb * BLOCK_N * BLOCK_K).to(tl.float32)
        else:
            acc += tl.load(base + kb * BLOCK_K).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def _tile_read_tma(desc, out_ptr, k_blocks, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """`_tile_read` of a row-major weight through a TMA descriptor with a [BLOCK_N, BLOCK_K] box."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for kb in range(k_blocks):
        acc += desc.load([pid * BLOCK_N, kb * BLOCK_K]).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def _hop(buf_ptr, r, P, BLOCK: tl.constexpr):
    """One round's work of a program: read its neighbour's BLOCK values of the last round, write its own."""
    pid = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    src = buf_ptr + ((pid + 1) % P) * BLOCK + (r % 2) * P * BLOCK
    v = tl.load(src + i)
    tl.store(buf_ptr + pid * BLOCK + ((r + 1) % 2) * P * BLOCK + i, v + 1)


@triton.jit
def _barrier_rounds(buf_ptr, count_ptr, rounds, P, BLOCK: tl.constexpr, SPIN_MAX: tl.constexpr):
    """A persistent grid of P co-resident programs: `rounds` times, a `_hop` then a grid barrier (arrive
    with a release atomic, spin on acquire loads of the counter; SPIN_MAX bounds the spin so a grid that is
    not co-resident ends instead of hanging)."""
    for r in range(rounds):
        _hop(buf_ptr, r, P, BLOCK)
        arrive_and_wait(count_ptr, (r + 1) * P, SPIN_MAX)


@triton.jit
def _hop_kernel(buf_ptr, r, P, BLOCK: tl.constexpr):
    tl.extra.cuda.gdc_launch_dependents()
    tl.extra.cuda.gdc_wait()
    _hop(buf_ptr, r, P, BLOCK)


def grid_barrier() -> list[dict]:
    """µs a dependency hand-off costs: a grid-wide barrier inside one persistent launch against one PDL
    launch per round, for 132-528 programs doing a `_hop` (read a neighbour's 16 KB... 64 B, write own)."""
    out = []
    for per_sm in (1, 2, 4):
        p = 132 * per_sm
        for block in (16, 4096):
            buf = torch.zeros(2 * p * block, device="cuda", dtype=torch.float32)
            count = torch.zeros(1, device="cuda", dtype=torch.int32)
            row: dict = {"programs": p, "values_a_program": block}
            for rounds in (1, 65):

                def persistent(
                    buf: torch.Tensor,
                    rounds: int = rounds,
                    p: int = p,
                    block: int = block,
                    count: torch.Tensor = count,
                ) -> None:
                    count.zero_()
                    _barrier_rounds[(p,)](buf, count, rounds, p, BLOCK=block, SPIN_MAX=1 << 22, num_warps=4)

                def chain(buf: torch.Tensor, rounds: int = rounds, p: int = p, block: int = block) -> None:
                    for r in range(rounds):
                        _hop_kernel[(p,)](buf, r, p, BLOCK=block, num_warps=4, launch_pdl=True)

                row[f"persistent_{rounds}_us"] = rotating_us(persistent, [buf], rep=50)
                row[f"pdl_chain_{rounds}_us"] = rotating_us(chain, [buf], rep=50)
            for kind in ("persistent", "pdl_chain"):
                a, b = row[f"{kind}_1_us"], row[f"{kind}_65_us"]
                row[f"{kind}_us_a_round"] = (
                    round((b - a) / 64, 3) if isinstance(a, float) and isinstance(b, float) else None
                )
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def read_pattern() -> list[dict]:
    """Read bandwidth of the MoE gate/up weights' bytes ([8 x 5632, 1024] bf16, 92 MB, cold: two copies
    alternate) streamed a [block_n, block_k] tile a step by one program per column block, from row-major
    rows (block_n runs of block_k elements a step) and from contiguous tiles, beside torch's sum."""
    n, k = 8 * 5632, 1024
    copies = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    nbytes = copies[0].nbytes
    torch_us = rotating_us(lambda w: w.sum(dtype=torch.float32), copies)
    out = [
        {
            "weight_mb": round(nbytes / 1e6, 1),
            "torch_sum_us": torch_us,
            "torch_sum_TBps": _tbps(nbytes, torch_us),
        }
    ]
    for bn, bk in ((32, 128), (32, 256), (64, 128)):
        tiled = [c.view(n // bn, bn, k // bk, bk).transpose(1, 2).contiguous() for c in copies]
        sums = torch.empty(n // bn, device="cuda", dtype=torch.float32)
        for stages in (2, 3, 4):
            row: dict = {"block_n": bn, "block_k": bk, "stages": stages}
            for name, ws, is_tiled in (("row_major", copies, False), ("tiled", tiled, True)):

                def call(
                    w: torch.Tensor,
                    is_tiled: bool = is_tiled,
                    stages: int = stages,
                    bn: int = bn,
                    bk: int = bk,
                    sums: torch.Tensor = sums,
                ) -> None:
                    _tile_read[(n // bn,)](
                        w,
                        sums,
                        k // bk,
                        k,
                        TILED=is_tiled,
                        BLOCK_N=bn,
                        BLOCK_K=bk,
                        num_warps=4,
                        num_stages=stages,
                    )

                us = rotating_us(call, ws)
                row[f"{name}_us"], row[f"{name}_TBps"] = us, _tbps(nbytes, us)
            descs = [TensorDescriptor.from_tensor(c, [bn, bk]) for c in copies]

            def call_tma(
                d, stages: int = stages, bn: int = bn, bk: int = bk, sums: torch.Tensor = sums
            ) -> None:  # noqa: ANN001
                _tile_read_tma[(n // bn,)](
                    d, sums, k // bk, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=stages
                )

            us = rotating_us(call_tma, descs)
            row["tma_us"], row["tma_TBps"] = us, _tbps(nbytes, us)
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def print_moe_table(rows: list[dict]) -> None:
    from local_model.kernels.triton_moe import token_bucket

    print("\n| E x H x I, top-k | tokens | today µs | fused sum µs | +PDL µs | best µs | best+PDL µs |"
          " gate/up µs default -> best | down µs default -> best | fused == .sum(1) | counters 0 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['experts']}x{r['hidden']}x{r['inter']}, {r['top_k']} | {r['tokens']} | {r['today_us']} | "
              f"{r['fused_us']} | {r['fused_pdl_us']} | {r.get('best_us')} | {r.get('best_pdl_us')} | "
              f"{r['gate_up']['default_us']} -> {r['gate_up']['best_us']} | "
              f"{r['down']['default_us']} -> {r['down']['best_us']} | {r['fused_equals_sum1_bitwise']} | "
              f"{r['counters_at_zero']} |")  # fmt: skip
    print("\n# triton_moe.MOE_SHAPES from this sweep (`_moe_shapes_entry`):")
    print("MOE_SHAPES = {")
    for r in rows:
        entry = _moe_shapes_entry(r)
        if entry:
            us, cfg = entry
            g, d = (", ".join(f"{key}={v}" for key, v in cfg[n].items()) for n in ("gate_up", "down"))
            base = r["fused_pdl_us"] if r["pdl_available"] else r["fused_us"]
            print(f"    ({r['experts']}, {r['hidden']}, {r['inter']}, {r['top_k']}, {token_bucket(r['tokens'])}): "
                  f"MoeConfig(\n        gate_up=MoeGemmConfig({g}),\n        down=MoeGemmConfig({d}),\n"
                  f"    ),  # {r['tokens']} tokens: {us} vs {base} µs (heuristic launches, fused sum)")  # fmt: skip
    print("}")


def attn_rows() -> list[dict]:
    """Paged decode attention at long contexts (Jamba-1.5-Mini's attention: 32 query / 8 kv heads, head 128,
    16-token pages, bf16), one row: the context walked by one program per kv head vs split over more
    (flash-decoding), each in a CUDA graph."""
    out = []
    heads, kv, hd, page = 32, 8, 128, 16
    for ctx in (32768, 262144):
        blocks = ctx // page
        k = torch.randn(blocks, kv, page, hd, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        table = torch.arange(blocks, device="cuda")[None, :]
        q = torch.randn(1, heads, hd, device="cuda", dtype=torch.bfloat16)
        lens = torch.tensor([ctx], device="cuda")
        row: dict = {"context": ctx, "default_splits": tk.decode_splits(kv, ctx)}
        kw = {"q": q, "k_cache": k, "v_cache": v, "context_lens": lens, "scale": 0.088, "block_table": table}
        ref = tk.attention_decode(num_splits=1, **kw)
        for splits in (1, 4, 8, 16):

            def fn(splits=splits, kw=kw):  # noqa: ANN202
                return tk.attention_decode(num_splits=splits, **kw)

            row[f"splits{splits}_us"] = round(graph_bench(fn) * 1000, 1)
            row[f"splits{splits}_rel_err"] = rel(fn(), ref)
        row["kv_GBps_best"] = round(
            2 * ctx * kv * hd * 2 / (min(row[f"splits{s}_us"] for s in (1, 4, 8, 16)) * 1e3), 1
        )
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def print_gemm_tables(rows: list[dict], sweep: list[dict]) -> None:
    if rows:
        print("\n| N x K | rows | cuBLAS µs | split-K µs (default / two-pass / half / double split) | dot, 1 split |"
              " GEMV µs | best GB/s | exact repeats |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            ours = [r.get(key, "-") for key in ("splitk_us", "splitk_two_pass_us", "splitk_half_split_us",
                                                "splitk_double_split_us")]  # fmt: skip
            best = max(
                (v for key, v in r.items() if key.endswith("_GBps") and isinstance(v, int)), default="-"
            )
            print(f"| {r['n']}x{r['k']} | {r['rows']} | {r['cublas_us']} | {' / '.join(map(str, ours))} | "
                  f"{r.get('dot_split1_us', '-')} | {r.get('ours_gemv_us', '-')} | {best} | "
                  f"{r.get('bitwise_repeatable', '-')} |")  # fmt: skip
            if "splitk_swiglu_us" in r:
                print(f"| {r['n']}x{r['k']} +SwiGLU | {r['rows']} | {r['cublas_swiglu_us']} (+silu*up) | "
                      f"{r['splitk_swiglu_us']} (fused) | | | | |")  # fmt: skip
    if sweep:
        print("\n| N x K | rows | cuBLAS µs | default µs | shipped µs | best µs | best GB/s | x cuBLAS | x shipped "
              "| best config |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in sweep:
            name = f"{r['n']}x{r['k']}" + (" +SwiGLU" if r["swiglu"] else "")
            print(f"| {name} | {r['rows']} | {r['cublas_us']} | {r['default_us']} | {r.get('shipped_us')} | "
                  f"{r['best_us']} | {r['best_GBps']} | {r['speedup_vs_cublas']} | {r.get('speedup_vs_shipped')} "
                  f"| {r['best_config']} |")  # fmt: skip
        print("\n# triton_gemm.SPLITK_SHAPES from this sweep (best launch where it beats cuBLAS by >= 5%):")
        print("SPLITK_SHAPES = {")
        for r in sweep:
            if r["best_config"] and (r["speedup_vs_cublas"] or 0) >= 1.05:
                c = r["best_config"]
                print(f"    ({r['n']}, {r['k']}): SplitKConfig(block_n={c['block_n']}, block_k={c['block_k']}, "
                      f"split_k={c['split_k']}, num_warps={c['num_warps']}, num_stages={c['num_stages']}, "
                      f"reduce={c['reduce']!r}" + (f", block_m={c['block_m']}" if c.get("block_m") else "") +
                      f"),  # {r['rows']} rows: {r['best_us']} vs cuBLAS "
                      f"{r['cublas_us']} µs")  # fmt: skip
        print("}")


# one Mamba-layer-like chain of the 426M step's projections at a few dozen rows (N, K, SwiGLU)
PDL_CHAIN = [(4096, 1024, False), (1024, 2048, False), (5632, 1024, True), (1024, 2816, False)]


def pdl_chain(
    rows_list: tuple[int, ...] = (64, 16), repeats: int = 8, sweep_json: str | None = None
) -> list[dict]:
    """``repeats`` x PDL_CHAIN projections (each repeat its own weights: ~240 MB in all, so every read is
    cold), captured in one CUDA graph and replayed: cuBLAS (+ PyTorch SwiGLU) against the split-K GEMM
    without PDL, with the L2 prefetch of each program's weight slab, with programmatic dependent launch,
    and with both. Reports µs per projection and the weight bytes' rate; the split-K variants must agree
    to the bit (PDL and prefetch change when loads happen, not what is computed)."""
    import torch.nn.functional as F

    from local_model.kernels.triton_gemm import SplitKConfig

    best: dict[tuple[int, int], SplitKConfig] = {}
    if sweep_json and Path(sweep_json).exists():
        for r in json.loads(Path(sweep_json).read_text()).get("gemm_sweep", []):
            if r.get("best_config"):
                best[(r["n"], r["k"])] = SplitKConfig(**r["best_config"])
    weights = [
        [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for n, k, _ in PDL_CHAIN]
        for _ in range(repeats)
    ]
    nbytes = sum(w.nbytes for ws in weights for w in ws)
    out = []
    for rows in rows_list:
        x0 = torch.randn(rows, 1024, device="cuda", dtype=torch.bfloat16)

        def run(mode: str, x0: torch.Tensor = x0) -> torch.Tensor:
            h = x0
            for ws in weights:
                for (n, k, swiglu), w in zip(PDL_CHAIN, ws, strict=True):
                    a = h[:, :k]
                    if mode == "cublas":
                        h = F.linear(a, w)
                        if swiglu:
                            g, u = h.chunk(2, dim=-1)
                            h = F.silu(g) * u
                    else:
                        h = tk.linear_splitk(
                            x=a,
                            weight=w,
                            swiglu=swiglu,
                            config=best.get((n, k)),
                            pdl="pdl" in mode,
                            prefetch="prefetch" in mode,
                        )
            return h

        row: dict = {
            "rows": rows,
            "projections": repeats * len(PDL_CHAIN),
            "weight_mb": round(nbytes / 1e6, 1),
        }
        results = {}
        for mode in ("cublas", "splitk", "splitk+prefetch", "splitk+pdl", "splitk+pdl+prefetch"):
            try:
                g, res = capture_graph(lambda mode=mode: run(mode))
                us = bench(g.replay) * 1e3
                results[mode] = res.clone()
                row[f"{mode}_us_per_proj"] = round(us / row["projections"], 2)
                row[f"{mode}_TBps"] = _tbps(nbytes, us)
            except Exception as exc:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
                torch.cuda.synchronize()
                row[f"{mode}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        base = results.get("splitk")
        if base is not None:
            row["splitk_variants_bitwise_equal"] = all(
                torch.equal(base, v) for m, v in results.items() if m != "cublas"
            )
            if "cublas" in results:
                row["rel_err_splitk_vs_cublas"] = rel(base, results["cublas"])
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


# The Mamba decode sublayer between in_proj and out_proj of the 426M Jamba (d_inner 2048, d_state 16,
# d_conv 4, dt_rank 64; bf16 weights, fp32 SSM state).
MAMBA = {"dim": 2048, "n": 16, "rank": 64, "width": 4}
# (BLOCK_D, num_warps, rows a program) of the SSM step tried beside the default (timed as ssm_us)
SSM_LAUNCHES = [
    (32, 4, 1),
    (32, 2, 1),
    (16, 2, 1),
    (64, 2, 1),
    (64, 4, 1),
    (128, 4, 1),
    (32, 2, 2),
    (32, 2, 4),
    (64, 2, 2),
]


def _mamba_layer(rows: int, gen: torch.Generator) -> dict:
    """One Mamba layer's decode-step tensors at ``rows`` rows: weights, a conv/SSM state pool of rows + 1
    slots (the rows on a random permutation of them), and the in_proj output x|z [rows, 2 * d_inner]."""
    from local_model.kernels.triton_scan import LOG2E

    d, n, r, w = MAMBA["dim"], MAMBA["n"], MAMBA["rank"], MAMBA["width"]
    bf = torch.bfloat16

    def rn(*s: int, scale: float = 1.0, dtype: torch.dtype = bf) -> torch.Tensor:
        return (torch.randn(*s, generator=gen) * scale).to("cuda", dtype)

    a = -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(d, n)).contiguous().cuda()
    xz = rn(rows, 2 * d)
    return {
        "xproj_weight": rn(r + 2 * n, d, scale=d**-0.5),
        "conv_weight": rn(d, w, scale=0.5),
        "conv_bias": rn(d, scale=0.1),
        "dt_norm_weight": rn(r, scale=0.1) + 1,
        "b_norm_weight": rn(n, scale=0.1) + 1,
        "c_norm_weight": rn(n, scale=0.1) + 1,
        "dt_proj_weight": rn(d, r, scale=r**-0.5),
        "dt_bias": rn(d, scale=0.5, dtype=torch.float32) - 4,
        "A": a,
        "a2": (a * LOG2E).contiguous(),
        "D": rn(d),
        "conv_state": rn(rows + 1, d, w - 1),
        "ssm_state": rn(rows + 1, d, n, scale=0.1, dtype=torch.float32),
        "state_indices": torch.randperm(rows + 1, generator=gen)[:rows].cuda(),
        "x": xz[:, :d],
        "z": xz[:, d:],
    }


def _layer_bytes(layer: dict, rows: int) -> int:
    """Bytes one sublayer step touches: weights, the rows' state (read and written), inputs."""
    rw = ("ssm_state", "conv_state")
    total = sum(v.nbytes for k, v in layer.items() if k not in rw and k not in ("x", "z", "state_indices"))
    total += sum(2 * layer[k][0].nbytes * rows for k in rw)
    return total + 2 * layer["x"].nbytes


_CONV_KEYS = ("conv_state", "conv_weight", "conv_bias", "state_indices")
_SSM_KEYS = (
    "x", "z", "ssm_state", "state_indices", "dt_norm_weight", "b_norm_weight", "c_norm_weight", "dt_proj_weight",
    "dt_bias", "A", "D", "conv_state", "conv_weight", "conv_bias",
)  # fmt: skip


def _conv_xproj(layer: dict) -> torch.Tensor:
    """x_proj of the conv window through the bundle (the conv kernel, then the projection)."""
    conv = {k: layer[k] for k in _CONV_KEYS}
    return tk.mamba_conv_xproj(x=layer["x"], xproj_weight=layer["xproj_weight"], activation="silu", **conv)


def _ssm(layer: dict, xp: torch.Tensor, launch=None, pdl=None) -> torch.Tensor:  # noqa: ANN001
    args = {k: layer[k] for k in _SSM_KEYS}
    return tk.mamba_decode_ssm(
        xproj=xp, eps=1e-6, activation="silu", a2=layer["a2"], launch=launch, pdl=pdl, **args
    )


def _graph_us(body, calls: int) -> float | str:  # noqa: ANN001
    """Median µs per call of ``body`` (which makes ``calls`` calls), replayed from one CUDA graph."""
    try:
        g, _ = capture_graph(body)
        return round(bench(g.replay) * 1e3 / calls, 2)
    except Exception as exc:  # noqa: BLE001 - a variant that fails to compile or capture is reported
        torch.cuda.synchronize()
        return f"failed: {type(exc).__name__}: {exc}"[:200]


def _mamba_checks(layer: dict) -> dict:
    """The new path against the references from the same state (rel errors, conv window equal), and its
    CUDA-graph replay against an eager call from the same state, bit for bit (output and both states)."""
    from local_model.kernels import reference as ref

    start = (layer["ssm_state"].clone(), layer["conv_state"].clone())

    def restore() -> None:
        layer["ssm_state"].copy_(start[0])
        layer["conv_state"].copy_(start[1])

    conv = {k: layer[k] for k in _CONV_KEYS}
    e_xp = ref.mamba_conv_xproj_ref(
        x=layer["x"], xproj_weight=layer["xproj_weight"], activation="silu", **conv
    )
    ssm_kw = {k: layer[k] for k in _SSM_KEYS if k not in ("ssm_state", "conv_state")}
    e_ssm, e_conv = start[0].clone(), start[1].clone()
    e_y = ref.mamba_decode_ssm_ref(
        xproj=e_xp, eps=1e-6, activation="silu", ssm_state=e_ssm, **{**ssm_kw, "conv_state": e_conv}
    )
    xp = _conv_xproj(layer)
    y = _ssm(layer, e_xp)
    out = {
        "rel_err_xproj": rel(xp, e_xp),
        "rel_err_y": rel(y, e_y),
        "rel_err_ssm_state": rel(layer["ssm_state"], e_ssm),
        "conv_window_equal": torch.equal(layer["conv_state"], e_conv),
    }
    restore()
    eager_y = _ssm(layer, _conv_xproj(layer)).clone()
    eager_state = (layer["ssm_state"].clone(), layer["conv_state"].clone())
    g, res = capture_graph(lambda: _ssm(layer, _conv_xproj(layer)))
    restore()
    g.replay()
    torch.cuda.synchronize()
    out["graph_equals_eager_bitwise"] = (
        torch.equal(res, eager_y)
        and torch.equal(layer["ssm_state"], eager_state[0])
        and torch.equal(layer["conv_state"], eager_state[1])
    )
    restore()
    return out


def mamba_row(rows: int) -> dict:
    """The Mamba decode sublayer (conv window + x_proj, then the fused SSM step) of the 426M Jamba at
    ``rows`` rows, CUDA-graph replayed over enough layers' state and weights (>= ROTATE_BYTES) that every
    read is cold. µs per layer: conv + x_proj (the conv kernel, then the projection), the SSM step in its
    shipped launch with and without PDL, the pair, the SSM step in other launch shapes; correctness and
    graph/eager bit equality."""
    from local_model.kernels.triton_scan import ssm_step_launch

    gen = torch.Generator().manual_seed(rows)
    first = _mamba_layer(rows, gen)
    per = _layer_bytes(first, rows)
    count = max(4, min(256, int(ROTATE_BYTES // per) + 1))
    layers = [first] + [_mamba_layer(rows, gen) for _ in range(count - 1)]
    xps = [_conv_xproj(lay) for lay in layers]
    row: dict = {
        "rows": rows,
        "layers_rotated": count,
        "mb_touched_per_layer": round(per / 1e6, 2),
        "floor_us_at_3TBps": round(per / 3.0e6, 2),
        "ssm_launch_default": list(ssm_step_launch(rows)),
    }
    row.update(_mamba_checks(first))

    def over(fn) -> float | str:  # noqa: ANN001
        return _graph_us(lambda: [fn(i, lay) for i, lay in enumerate(layers)], count)

    row["conv_xproj_us"] = over(lambda i, lay: _conv_xproj(lay))
    row["ssm_us"] = over(lambda i, lay: _ssm(lay, xps[i]))
    row["ssm_nopdl_us"] = over(lambda i, lay: _ssm(lay, xps[i], pdl=False))
    row["sublayer_us"] = over(lambda i, lay: _ssm(lay, _conv_xproj(lay)))
    row["ssm_launch_us"] = {
        str(lc): over(lambda i, lay, lc=lc: _ssm(lay, xps[i], launch=lc)) for lc in SSM_LAUNCHES
    }
    return row


def mamba_step(rows_list: tuple[int, ...] = (1, 16, 64), save=None) -> list[dict]:  # noqa: ANN001
    """`mamba_row` at each row count (printed, and ``save(rows so far)`` after each)."""
    out = []
    for rows in rows_list:
        out.append(mamba_row(rows))
        print(json.dumps(out[-1]), flush=True)
        if save:
            save(out)
        torch.cuda.empty_cache()
    return out


def save_only(path: str | None, key: str, rows: list[dict]) -> int:
    """The result of a single-measurement run, {"device", key: rows}, written to ``path`` if given; 0."""
    if path:
        Path(path).write_text(json.dumps({"device": torch.cuda.get_device_name(), key: rows}, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="first two shapes only")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="also time block/warp/chunk variants of our scan (graph-replayed)",
    )
    ap.add_argument("--gemm", action="store_true", help="only: decode projections, ours vs cuBLAS")
    ap.add_argument(
        "--attn", action="store_true", help="only: paged decode attention at 32K/256K, split or not"
    )
    ap.add_argument("--gemm-sweep", action="store_true", help="only: best split-K launch per 426M projection")
    ap.add_argument(
        "--gemm-sweep-mtiles",
        action="store_true",
        help="with --gemm-sweep: only launches of 16-32 rows a program (the shipped launch timed beside them)",
    )
    ap.add_argument("--gemm-rows", default=None, help="comma-separated rows (--gemm: 1,16,64; sweep: 64)")
    ap.add_argument(
        "--pdl", action="store_true", help="only: a chain of projections with/without PDL, prefetch"
    )
    ap.add_argument("--sweep-json", default="bench/results_gemm_h100.json", help="--pdl: split-K launches")
    ap.add_argument(
        "--moe-sweep", action="store_true", help="only: MoE grouped-GEMM launches at 64, 16 tokens"
    )
    ap.add_argument("--moe-tokens", default="64,16", help="--moe-sweep: comma-separated token counts")
    ap.add_argument(
        "--read-pattern",
        action="store_true",
        help="only: read bandwidth of row-major against tiled weight tiles (the MoE GEMMs' access pattern)",
    )
    ap.add_argument(
        "--grid-barrier",
        action="store_true",
        help="only: µs of a grid barrier in a persistent launch against a PDL launch a round",
    )
    ap.add_argument(
        "--mamba-step",
        action="store_true",
        help="only: Mamba decode sublayer (conv + x_proj, SSM), old vs new",
    )
    ap.add_argument("--mamba-rows", default="1,16,64", help="--mamba-step: comma-separated rows")
    args = ap.parse_args()
    if args.mamba_step:
        res_m: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__}

        def save_m(rows: list[dict]) -> None:
            res_m["mamba_step"] = rows
            if args.json:
                Path(args.json).write_text(json.dumps(res_m, indent=1))

        mamba_step(tuple(int(r) for r in args.mamba_rows.split(",")), save_m)
        return 0
    if args.grid_barrier:
        return save_only(args.json, "grid_barrier", grid_barrier())
    if args.read_pattern:
        return save_only(args.json, "read_pattern", read_pattern())
    if args.moe_sweep:
        res_moe: dict = {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
        }

        def save_moe(rows: list[dict]) -> None:
            res_moe["moe_sweep"] = rows
            if args.json:
                Path(args.json).write_text(json.dumps(res_moe, indent=1))

        rows_m = moe_sweep(tuple(int(t) for t in args.moe_tokens.split(",")), save_moe)
        print_moe_table(rows_m)
        save_moe(rows_m)
        return 0
    if args.pdl:
        return save_only(args.json, "pdl_chain", pdl_chain(sweep_json=args.sweep_json))
    if args.attn:
        return save_only(args.json, "attn", attn_rows())
    if args.gemm or args.gemm_sweep:
        rows_arg = tuple(int(r) for r in args.gemm_rows.split(",")) if args.gemm_rows else None
        res_g: dict = {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
        }

        def saver(key: str):  # noqa: ANN202 - rows so far reach the JSON even if the run is cut short
            def save(rows: list[dict]) -> None:
                res_g[key] = rows
                if args.json:
                    Path(args.json).write_text(json.dumps(res_g, indent=1))

            return save

        res_g["gemm"] = gemm_rows(rows_arg or (1, 16, 64), saver("gemm")) if args.gemm else []
        res_g["gemm_sweep"] = (
            gemm_sweep(rows_arg or (64,), saver("gemm_sweep"), args.gemm_sweep_mtiles)
            if args.gemm_sweep
            else []
        )
        print_gemm_tables(res_g["gemm"], res_g["gemm_sweep"])
        if args.json:
            Path(args.json).write_text(json.dumps(res_g, indent=1))
        return 0
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ssu_ref
    except ImportError:
        selective_scan_fn = ssu_ref = None
    res: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    res["copy_TBps"] = copy_bandwidth()
    rows = []
    for batch, dim, length in SHAPES[:2] if args.quick else SHAPES:
        rows.append(scan_row(batch, dim, length, selective_scan_fn, args.sweep))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    res["scan"] = rows
    res["state_update"] = []
    for batch in (1, 8, 64, 256):
        res["state_update"].append(decode_row(batch, ssu_ref))
        print(json.dumps(res["state_update"][-1]), flush=True)
    print(
        "\n| shape | mamba-ssm ms | ours ms (anchor layout) | ours ms (token-major) | speedup | rel err y |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r.get('mamba_ssm_ms', '-')} | {r['ours_ms']} | {r['ours_token_major_ms']} | "
            f"{r.get('speedup', '-')}x / {r.get('speedup_token_major', '-')}x | {r.get('rel_err_y', float('nan')):.2e} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
