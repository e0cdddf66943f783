"""Our Triton Mamba kernels beside mamba-ssm's CUDA/Triton ones, same tensors, same card, same process.

Prefill: `selective_scan` against `mamba_ssm.ops.selective_scan_interface.selective_scan_fn` on the anchor
table's shapes (u, delta, z bf16 [B, D, L]; B, C bf16 [B, 16, L]; A, D, delta_bias fp32; softplus; final
state returned). Ours runs twice: on the anchor's L-contiguous tensors, and on token-major tensors (unit
channel stride: the layout our model's projections produce). Both outputs are checked against mamba-ssm's
(‖ours − theirs‖ / ‖theirs‖) on the same inputs. Decode: `selective_state_update` against mamba-ssm's Triton
one, each captured in a CUDA graph (so launch overhead is out of both). Each scan row also gives the
device time of our kernels (profiler) and both scans replayed from a CUDA graph. Also the card's copy
bandwidth. ``--gemm``: the decode projections, our GEMV (plain and with the residual add + RMSNorm fused)
beside cuBLAS at 1 and 4 rows.

Needs mamba-ssm importable (see the anchor's README); without it only our timings are printed.
Usage: python bench/kernels_gpu.py [--json out.json] [--quick] [--sweep] [--gemm]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local_model.kernels import triton_ops as tk  # noqa: E402

SHAPES = [(1, 2048, 2048), (1, 2048, 8192), (1, 8192, 8192), (8, 2048, 2048), (1, 8192, 32768)]


def bench(fn) -> float:  # noqa: ANN001
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def graph_bench(fn) -> float:  # noqa: ANN001
    """Median ms of one call, replayed from a CUDA graph of 20 calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20):
            fn()
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


# Decode-step projections (N, K) of the 426M config (in_proj, out_proj, MLP gate/up, MLP down, lm_head) and
# of the ~1.5B one (in_proj, out_proj, lm_head).
GEMM_SHAPES = [(4096, 1024), (1024, 2048), (5632, 1024), (1024, 2816), (32000, 1024), (8192, 2048), (2048, 4096),
               (32000, 2048)]  # fmt: skip


def gemm_rows(rows_list: tuple[int, ...] = (1, 4)) -> list[dict]:
    """Our decode linear (GEMV at 1-4 rows, cuBLAS above) beside cuBLAS (F.linear), plain and with the
    residual add + RMSNorm fused in, each in a CUDA graph; GB/s = weight bytes / time."""
    import torch.nn.functional as F

    out = []
    for n, k in GEMM_SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for rows in rows_list:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            nw = torch.rand(k, device="cuda", dtype=torch.bfloat16)
            res = torch.randn_like(x)
            t_ours = graph_bench(lambda x=x, w=w: tk.linear(x=x, weight=w))
            t_norm = graph_bench(
                lambda x=x, w=w, nw=nw, res=res: tk.norm_linear(
                    x=x, weight=w, norm_weight=nw, residual=res, eps=1e-6
                )
            )
            t_cublas = graph_bench(lambda x=x, w=w: F.linear(x, w))
            gb = n * k * 2 / 1e9
            row = {
                "n": n,
                "k": k,
                "rows": rows,
                "ours_us": round(t_ours * 1000, 2),
                "ours_norm_residual_us": round(t_norm * 1000, 2),
                "cublas_us": round(t_cublas * 1000, 2),
                "ours_GBps": round(gb / (t_ours / 1000)),
                "cublas_GBps": round(gb / (t_cublas / 1000)),
                "rel_err": rel(tk.linear(x=x, weight=w), F.linear(x, w)),
            }
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


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
    args = ap.parse_args()
    if args.attn:
        res_a = {"device": torch.cuda.get_device_name(), "attn": attn_rows()}
        if args.json:
            Path(args.json).write_text(json.dumps(res_a, indent=1))
        return 0
    if args.gemm:
        res_g = {"device": torch.cuda.get_device_name(), "gemm": gemm_rows()}
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
