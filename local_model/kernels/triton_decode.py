"""Triton kernels for the decode step's projections, with their neighbours fused in.

A decode step at small batch is a chain of matrix-vector products separated by small elementwise ops;
inside a CUDA graph each launch still costs a few microseconds, so the ops next to a projection are done
by the projection's own kernel:

* ``_gemv`` (one row): one program per output block streams a [BLOCK_N, K] weight slab. Options, all
  compile-time: the row is ``RMSNorm(x + residual)`` computed in the prologue (the residual sum written
  once); gate and up rows are computed together and SwiGLU applied in the epilogue; the weight is an
  expert's, chosen by the row's top-k index, and the k routed outputs of a token are weighted and summed
  in the epilogue.
* ``_moe_route``: RMSNorm (+ residual), router projection, fp32 softmax and top-k, one program per row.
* ``_greedy_advance``: argmax of the logits, written as the next input token, the position advanced and
  the token appended to a device-side history.

Every op keeps the keyword contract of its reference in `local_model.kernels.reference`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .pdl import launch_kwargs, lines_for, pdl_args, pdl_begin, pdl_enabled, prefetch_rows
from .triton_gemm import NUM_SMS, fixup_locks, last_to_arrive, linear_splitk, splitk_for
from .triton_moe import (
    align_buffers,
    align_in_one_program,
    align_pairs,
    moe_config,
    moe_experts,
    moe_experts_residual,
)

# Rows served by the GEMV kernels (one program per row and output block: each row re-reads the weight, so
# from 2 rows cuBLAS, which reads it once, is as fast or faster; measured in bench/GPU_NOTES.md).
GEMV_MAX_ROWS = 1
# at most this many vocabulary chunks a row in `greedy_advance` (a power of two)
GREEDY_MAX_CHUNKS = 16
# tokens up to which `moe_block` runs each (token, expert) pair as a GEMV; more: the grouped GEMMs
MOE_GEMV_MAX_TOKENS = 4


@triton.jit
def _row_chunk(
    x_ptr,
    res_ptr,
    nw_ptr,
    xrow,
    k,
    kmask,
    rstd,
    s_xm,
    s_rm,
    HAS_RES: tl.constexpr,
    NORM: tl.constexpr,
):
    """Elements k of the projection's input row, in the model dtype: x (+ residual), normalised by the
    RMSNorm weight when NORM (``rstd`` precomputed)."""
    dtype = x_ptr.dtype.element_ty
    v = tl.load(x_ptr + xrow * s_xm + k, mask=kmask, other=0.0)
    if HAS_RES:
        v = (v.to(tl.float32) + tl.load(res_ptr + xrow * s_rm + k, mask=kmask, other=0.0).to(tl.float32)).to(
            dtype
        )
    if NORM:
        w = tl.load(nw_ptr + k, mask=kmask, other=0.0).to(tl.float32)
        v = (w * (v.to(tl.float32) * rstd).to(dtype).to(tl.float32)).to(dtype)
    return v


@triton.jit
def _gemv(
    x_ptr,
    res_ptr,
    nw_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    idx_ptr,
    rw_ptr,
    N,
    K,
    n_half,
    a_div,
    eps,
    s_xm,
    s_rm,
    s_rom,
    s_we,
    s_wn,
    s_om,
    HAS_RES: tl.constexpr,
    NORM: tl.constexpr,
    SWIGLU: tl.constexpr,
    EXPERT: tl.constexpr,
    ROUTED: tl.constexpr,
    TOPK: tl.constexpr,
    ONE_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr = False,
    PREFETCH_LINES: tl.constexpr = 0,
    ELEM_BYTES: tl.constexpr = 2,
):
    """out[m, n] = sum over j < TOPK of row(m*TOPK + j) . w[e_j, n] (see the module docstring).
    PREFETCH_LINES > 0 (dense weights only: an expert's index is the previous kernel's output): the
    program's weight rows are requested into L2 before `pdl_begin`."""
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    if PREFETCH_LINES > 0:
        prefetch_rows(
            w_ptr, pid_n * BLOCK_N, N, s_wn, 0, K, n_half, BLOCK_N, PREFETCH_LINES, ELEM_BYTES, SWIGLU
        )
    pdl_begin(PDL)
    dtype = out_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_N], tl.float32)
    for j in tl.static_range(TOPK):
        pair = m * TOPK + j
        xrow = pair // a_div
        wbase = w_ptr
        if EXPERT:
            wbase = w_ptr + tl.load(idx_ptr + pair).to(tl.int64) * s_we
        # the first weight slab is requested before the row's prologue (norm or conv), so its latency
        # overlaps that work instead of following it
        k = tl.arange(0, BLOCK_K)
        wmask = nmask[:, None] & (k < K)[None, :]
        w = tl.load(wbase + n[:, None] * s_wn + k[None, :], mask=wmask, other=0.0)
        wu = w
        if SWIGLU:
            wu = tl.load(wbase + (n_half + n)[:, None] * s_wn + k[None, :], mask=wmask, other=0.0)
        if ONE_TILE:
            # the row fits one tile: read x (+ residual) once for the norm, the residual output and the dot
            kmask = k < K
            v = _row_chunk(
                x_ptr, res_ptr, nw_ptr, xrow, k, kmask, 1.0, s_xm, s_rm, HAS_RES, False,
            )  # fmt: skip
            if HAS_RES:
                tl.store(res_out_ptr + xrow * s_rom + k, v, mask=kmask & ((k * 0 + pid_n) == 0))
            if NORM:
                vf = v.to(tl.float32)
                rstd = 1.0 / tl.sqrt(tl.sum(vf * vf, axis=0) / K + eps)
                nw = tl.load(nw_ptr + k, mask=kmask, other=0.0).to(tl.float32)
                v = (nw * (vf * rstd).to(v.dtype).to(tl.float32)).to(v.dtype)
            v = v.to(tl.float32)
            acc = tl.sum(w.to(tl.float32) * v[None, :], axis=1)
            acc_up = tl.sum(wu.to(tl.float32) * v[None, :], axis=1)
        else:
            acc, acc_up = _gemv_row_loop(
                x_ptr, res_ptr, nw_ptr, res_out_ptr, wbase, w, wu, n, nmask, pid_n, xrow, K, n_half, eps, s_xm,
                s_rm, s_rom, s_wn, HAS_RES, NORM, SWIGLU, BLOCK_N, BLOCK_K,
            )  # fmt: skip
        val = acc
        if SWIGLU:
            # the reference rounds each projection to the model dtype before the activation
            g = acc.to(dtype).to(tl.float32)
            val = (g * tl.sigmoid(g)).to(dtype).to(tl.float32) * acc_up.to(dtype).to(tl.float32)
        if ROUTED:
            val = val.to(dtype).to(tl.float32) * tl.load(rw_ptr + pair).to(tl.float32)
        total += val
    tl.store(out_ptr + m * s_om + n, total.to(dtype), mask=nmask)


@triton.jit
def _gemv_row_loop(
    x_ptr,
    res_ptr,
    nw_ptr,
    res_out_ptr,
    wbase,
    w,
    wu,
    n,
    nmask,
    pid_n,
    xrow,
    K,
    n_half,
    eps,
    s_xm,
    s_rm,
    s_rom,
    s_wn,
    HAS_RES: tl.constexpr,
    NORM: tl.constexpr,
    SWIGLU: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """`_gemv`'s dot products for rows longer than one tile (the first weight tiles ``w``/``wu`` given)."""
    rstd = 1.0
    if NORM:
        ss = tl.zeros([BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            v = _row_chunk(
                x_ptr, res_ptr, nw_ptr, xrow, kk, kk < K, 1.0, s_xm, s_rm, HAS_RES, False,
            ).to(tl.float32)  # fmt: skip
            ss += v * v
        rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)
    acc = tl.zeros([BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        if k0 > 0:
            wmask = nmask[:, None] & kmask[None, :]
            w = tl.load(wbase + n[:, None] * s_wn + k[None, :], mask=wmask, other=0.0)
            if SWIGLU:
                wu = tl.load(wbase + (n_half + n)[:, None] * s_wn + k[None, :], mask=wmask, other=0.0)
        if HAS_RES:
            # the new residual stream x + residual, written by the first column block only
            first = (k * 0 + pid_n) == 0
            s = _row_chunk(
                x_ptr, res_ptr, nw_ptr, xrow, k, kmask, 1.0, s_xm, s_rm, True, False,
            )  # fmt: skip
            tl.store(res_out_ptr + xrow * s_rom + k, s, mask=kmask & first)
        v = _row_chunk(
            x_ptr, res_ptr, nw_ptr, xrow, k, kmask, rstd, s_xm, s_rm, HAS_RES, NORM,
        ).to(tl.float32)  # fmt: skip
        acc += tl.sum(w.to(tl.float32) * v[None, :], axis=1)
        if SWIGLU:
            acc_up += tl.sum(wu.to(tl.float32) * v[None, :], axis=1)
    return acc, acc_up


def _gemv_blocks(n: int, k: int, rows: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): a [BLOCK_N, BLOCK_K] slab of ~8K weights a program step, narrowed until the
    launch has at least ~128 programs (a short output would otherwise leave most of the card idle)."""
    block_k = min(triton.next_power_of_2(k), 2048)
    block_n = max(2, 8192 // block_k)
    while block_n > 2 and triton.cdiv(n, block_n) * rows < 128:
        block_n //= 2
    return block_n, block_k


def _launch_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    n: int,
    grid_rows: int,
    *,
    residual: torch.Tensor | None = None,
    res_out: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
    expert_index: torch.Tensor | None = None,
    routing_weights: torch.Tensor | None = None,
    top_k: int = 1,
    a_div: int = 1,
) -> torch.Tensor:
    k = x.shape[-1]
    block_n, block_k = _gemv_blocks(n, k, grid_rows)
    if swiglu and block_n > 2:
        block_n //= 2
    idx = expert_index if expert_index is not None else x
    s_we = weight.stride(0) if weight.dim() == 3 else 0
    pdl = pdl_enabled(x.device, grid_rows)
    _gemv[(triton.cdiv(n, block_n), grid_rows)](
        x,
        residual if residual is not None else x,
        norm_weight if norm_weight is not None else x,
        weight,
        out,
        res_out if res_out is not None else x,
        idx,
        routing_weights if routing_weights is not None else x,
        n,
        k,
        n,
        a_div,
        eps,
        x.stride(0),
        residual.stride(0) if residual is not None else 0,
        res_out.stride(0) if res_out is not None else 0,
        s_we,
        weight.stride(-2),
        out.stride(0),
        HAS_RES=residual is not None,
        NORM=norm_weight is not None,
        SWIGLU=swiglu,
        EXPERT=expert_index is not None,
        ROUTED=routing_weights is not None,
        TOPK=top_k,
        ONE_TILE=k <= block_k,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        PDL=pdl,
        PREFETCH_LINES=lines_for(k, weight.element_size()) if pdl and expert_index is None else 0,
        ELEM_BYTES=weight.element_size(),
        num_warps=4,
        **launch_kwargs(pdl),
    )
    return out


def _plain(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return weight.stride(-1) == 1 and x.stride(-1) == 1 and x.dim() == 2


def norm_linear(
    *,
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`reference.norm_linear_ref`'s contract: (proj(RMSNorm(x + residual)), x + residual), the projection
    optionally followed by SwiGLU over its two halves. One row: one GEMV launch; more: the RMSNorm kernel
    and cuBLAS (3-5x faster at 64 rows than a dot-tile kernel whose A operand passes through a normalising
    prologue), or for the weights listed in `triton_gemm.SPLITK_SHAPES` the split-K GEMM (SwiGLU in its
    epilogue)."""
    from .reference import norm_linear_ref
    from .triton_ops import rms_norm

    rows, k = x.shape
    plain = _plain(x, weight) and (residual is None or residual.stride(-1) == 1)
    if rows > GEMV_MAX_ROWS or not plain:
        if norm_weight is None and residual is not None:
            return norm_linear_ref(x=x, weight=weight, residual=residual, swiglu=swiglu, out=out)
        if norm_weight is None:
            h, s = x, x
        elif residual is not None:
            h, s = rms_norm(x=x, weight=norm_weight, eps=eps, residual=residual)
        else:
            h, s = rms_norm(x=x, weight=norm_weight, eps=eps), x
        cfg = splitk_for(rows, *weight.shape) if _plain(h, weight) else None
        if cfg is not None:
            return linear_splitk(x=h, weight=weight, swiglu=swiglu, out=out, config=cfg), s
        return norm_linear_ref(x=h, weight=weight, swiglu=swiglu, out=out)[0], s
    n_out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    dt = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(rows, n_out, device=x.device, dtype=dt) if out is None else out
    res_out = torch.empty_like(x) if residual is not None else None
    _launch_gemv(
        x, weight, out, n_out, rows, residual=residual, res_out=res_out, norm_weight=norm_weight, eps=eps,
        swiglu=swiglu,
    )  # fmt: skip
    return out, (res_out if res_out is not None else x)


def linear(*, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; for one row a GEMV kernel that streams the weight at close to copy bandwidth (cuBLAS'
    single-row kernels reach 0.6-0.9 of it on the decode step's shapes); for the weights listed in
    `triton_gemm.SPLITK_SHAPES`, a split-K GEMM at a few dozen rows."""
    if bias is not None or x.dim() != 2 or not _plain(x, weight):
        return F.linear(x, weight, bias)
    if x.shape[0] <= GEMV_MAX_ROWS and weight.shape[0] >= 16:
        return norm_linear(x=x, weight=weight)[0]
    cfg = splitk_for(x.shape[0], *weight.shape)
    if cfg is not None:
        return linear_splitk(x=x, weight=weight, config=cfg)
    return F.linear(x, weight)


# ============================================================================ MoE block at decode


@triton.jit
def _moe_route(
    x_ptr,
    res_ptr,
    nw_ptr,
    rw_ptr,
    h_ptr,
    res_out_ptr,
    w_out_ptr,
    i_out_ptr,
    H,
    E,
    eps,
    s_x,
    s_r,
    s_h,
    s_ro,
    sorted_ptr,
    bexp_ptr,
    lock_ptr,
    P,
    padded_len,
    HAS_RES: tl.constexpr,
    K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ALIGN: tl.constexpr = False,
    BM: tl.constexpr = 16,
    BLOCK_P: tl.constexpr = 16,
    BLOCK_NB: tl.constexpr = 16,
    PDL: tl.constexpr = False,
):
    """h = RMSNorm(x + residual); logits = router . h (rounded to the model dtype, as a linear layer's
    output); top-k of the fp32 softmax (first index among equals), weights in the model dtype.

    ALIGN: the program that finishes last (a counter at lock_ptr: barrier, acq_rel atomic; reset to zero
    after) also sorts the P = rows * K pairs by expert (`align_pairs` into sorted_ptr / bexp_ptr), which
    saves the grouped GEMMs a launch. PDL: launched with programmatic dependent launch (`pdl_begin` first:
    everything it reads is the previous kernels' output but the router weights, which are small)."""
    pdl_begin(PDL)
    row = tl.program_id(0).to(tl.int64)
    dtype = x_ptr.dtype.element_ty
    e = tl.arange(0, BLOCK_E)
    emask = e < E
    if BLOCK_H >= H:
        # the whole row in one tile: every load is requested up front, the router weights first
        k = tl.arange(0, BLOCK_H)
        km = k < H
        w = tl.load(rw_ptr + e[:, None] * H + k[None, :], mask=emask[:, None] & km[None, :], other=0.0)
        v = tl.load(x_ptr + row * s_x + k, mask=km, other=0.0)
        nw = tl.load(nw_ptr + k, mask=km, other=0.0).to(tl.float32)
        if HAS_RES:
            v = (v.to(tl.float32) + tl.load(res_ptr + row * s_r + k, mask=km, other=0.0).to(tl.float32)).to(
                dtype
            )
            tl.store(res_out_ptr + row * s_ro + k, v, mask=km)
        vf = v.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(vf * vf, axis=0) / H + eps)
        hv = (nw * (vf * rstd).to(dtype).to(tl.float32)).to(dtype)
        tl.store(h_ptr + row * s_h + k, hv, mask=km)
        logit = tl.sum(w.to(tl.float32) * hv.to(tl.float32)[None, :], axis=1)
    else:
        logit = _route_logits(
            x_ptr, res_ptr, nw_ptr, rw_ptr, h_ptr, res_out_ptr, row, e, emask, H, eps, s_x, s_r, s_h, s_ro,
            HAS_RES, BLOCK_E, BLOCK_H,
        )  # fmt: skip
    logit = tl.where(emask, logit.to(dtype).to(tl.float32), float("-inf"))
    softmax_topk(logit, e, w_out_ptr, i_out_ptr, row, K, BLOCK_E)
    if ALIGN:  # noqa: SIM102 - a compile-time switch, kept apart from the runtime test
        if last_to_arrive(lock_ptr, tl.num_programs(0)):
            align_pairs(i_out_ptr, sorted_ptr, bexp_ptr, P, E, padded_len, BM, BLOCK_P, BLOCK_E, BLOCK_NB)
            tl.atomic_xchg(lock_ptr, 0)


@triton.jit
def softmax_topk(logit, e, w_ptr, i_ptr, row, K: tl.constexpr, BLOCK_E: tl.constexpr):
    """The router's softmax over one row's expert logits (fp32, masked experts at -inf) and its K largest
    weights and expert indices (the first index on ties), stored at ``row * K`` onwards."""
    p = tl.exp(logit - tl.max(logit, axis=0))
    p = p / tl.sum(p, axis=0)
    for j in tl.static_range(K):
        best = tl.max(p, axis=0)
        arg = tl.min(tl.where(p == best, e, BLOCK_E), axis=0)
        tl.store(w_ptr + row * K + j, best.to(w_ptr.dtype.element_ty))
        tl.store(i_ptr + row * K + j, arg.to(tl.int64))
        p = tl.where(e == arg, -1.0, p)


@triton.jit
def _route_logits(
    x_ptr,
    res_ptr,
    nw_ptr,
    rw_ptr,
    h_ptr,
    res_out_ptr,
    row,
    e,
    emask,
    H,
    eps,
    s_x,
    s_r,
    s_h,
    s_ro,
    HAS_RES: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """`_moe_route`'s norm and router logits for rows wider than one tile (two passes over the row)."""
    dtype = x_ptr.dtype.element_ty
    ss = tl.zeros([BLOCK_H], tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k = k0 + tl.arange(0, BLOCK_H)
        km = k < H
        v = tl.load(x_ptr + row * s_x + k, mask=km, other=0.0)
        if HAS_RES:
            v = (v.to(tl.float32) + tl.load(res_ptr + row * s_r + k, mask=km, other=0.0).to(tl.float32)).to(
                dtype
            )
            tl.store(res_out_ptr + row * s_ro + k, v, mask=km)
        vf = v.to(tl.float32)
        ss += vf * vf
    rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / H + eps)
    logit = tl.zeros([BLOCK_E], tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k = k0 + tl.arange(0, BLOCK_H)
        km = k < H
        v = tl.load(x_ptr + row * s_x + k, mask=km, other=0.0)
        if HAS_RES:
            v = (v.to(tl.float32) + tl.load(res_ptr + row * s_r + k, mask=km, other=0.0).to(tl.float32)).to(
                dtype
            )
        nw = tl.load(nw_ptr + k, mask=km, other=0.0).to(tl.float32)
        hv = (nw * (v.to(tl.float32) * rstd).to(dtype).to(tl.float32)).to(dtype)
        tl.store(h_ptr + row * s_h + k, hv, mask=km)
        w = tl.load(rw_ptr + e[:, None] * H + k[None, :], mask=emask[:, None] & km[None, :], other=0.0)
        logit += tl.sum(w.to(tl.float32) * hv.to(tl.float32)[None, :], axis=1)
    return logit


def moe_block(
    *,
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    router_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    top_k: int,
    act: Callable[[torch.Tensor], torch.Tensor],
    residual: torch.Tensor | None = None,
    add_to_stream: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`reference.moe_block_ref`'s contract: norm, route and run the experts of x [T, H]. Returns
    (experts' weighted sum, x + residual); with ``add_to_stream`` (more than MOE_GEMV_MAX_TOKENS tokens, no
    ``residual``, the fused token sum) instead (x + experts' weighted sum, its rows' sums of squares as
    `moe_experts_residual` returns them). Up to MOE_GEMV_MAX_TOKENS tokens: three launches (route; per-pair
    gate/up GEMV with SwiGLU; down GEMV over each token's k experts, weighted and summed); more: the route
    launch also sorts the pairs by expert (`align_pairs`), then the grouped GEMMs (`moe_experts`)."""
    tokens, hid = x.shape
    num_experts = router_weight.shape[0]
    if (
        act is not F.silu
        or x.stride(-1) != 1
        or router_weight.stride(-1) != 1
        or router_weight.shape[1] != hid
    ):
        from .reference import moe_block_ref

        return moe_block_ref(
            x=x, norm_weight=norm_weight, eps=eps, router_weight=router_weight, gate_up_proj=gate_up_proj,
            down_proj=down_proj, top_k=top_k, act=act, residual=residual,
        )  # fmt: skip
    h = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x
    w = torch.empty(tokens, top_k, device=x.device, dtype=x.dtype)
    idx = torch.empty(tokens, top_k, device=x.device, dtype=torch.long)
    r = residual if residual is not None else x
    block_e = max(2, triton.next_power_of_2(num_experts))
    block_h = min(triton.next_power_of_2(hid), max(16, 32768 // block_e))  # one tile up to 32K router weights
    pairs = tokens * top_k
    cfg = aligned = None
    align: dict[str, int] = {}
    if tokens > MOE_GEMV_MAX_TOKENS:
        inter = gate_up_proj.shape[1] // 2
        cfg = moe_config(tokens, top_k, num_experts, hid, inter, fp32=x.dtype == torch.float32)
        if align_in_one_program(pairs, num_experts):
            align_m = max(cfg.gate_up.block_m, cfg.down.block_m)
            sorted_ids, block_expert, align = align_buffers(pairs, num_experts, align_m, x.device)
            aligned = (sorted_ids, block_expert)
            align.pop("BLOCK_E")  # the router's (at least as wide)
    padded_len = align.pop("padded_len", 0)
    pdl = pdl_enabled(x.device, tokens)
    _moe_route[(tokens,)](
        x,
        r,
        norm_weight,
        router_weight,
        h,
        res_out,
        w,
        idx,
        hid,
        num_experts,
        eps,
        x.stride(0),
        r.stride(0),
        h.stride(0),
        res_out.stride(0),
        aligned[0] if aligned else idx,
        aligned[1] if aligned else idx,
        fixup_locks(x.device) if aligned else idx,
        pairs,
        padded_len,
        HAS_RES=residual is not None,
        K=top_k,
        BLOCK_E=block_e,
        BLOCK_H=block_h,
        ALIGN=aligned is not None,
        **align,
        PDL=pdl,
        num_warps=4 if block_e * block_h <= 8192 else (8 if block_e * block_h <= 16384 else 16),
        **launch_kwargs(pdl),
    )
    if add_to_stream:
        assert tokens > MOE_GEMV_MAX_TOKENS and residual is None and act is F.silu, (
            "the stream add runs in the grouped GEMM"
        )
        return moe_experts_residual(
            x=h, residual=x, top_k_index=idx, top_k_weights=w, gate_up_proj=gate_up_proj, down_proj=down_proj,
            config=cfg, aligned=aligned,
        )  # fmt: skip
    if tokens > MOE_GEMV_MAX_TOKENS:
        out = moe_experts(
            x=h, top_k_index=idx, top_k_weights=w, gate_up_proj=gate_up_proj, down_proj=down_proj, act=act,
            config=cfg, aligned=aligned,
        )  # fmt: skip
        return out, res_out
    inter = gate_up_proj.shape[1] // 2
    act_out = torch.empty(tokens * top_k, inter, device=x.device, dtype=x.dtype)
    _launch_gemv(h, gate_up_proj, act_out, inter, tokens * top_k, swiglu=True, expert_index=idx, a_div=top_k)
    out = torch.empty_like(x)
    _launch_gemv(
        act_out, down_proj, out, hid, tokens, expert_index=idx, routing_weights=w.reshape(-1), top_k=top_k
    )
    return out, res_out


# ============================================================================ Mamba: conv window + x_proj


def mamba_conv_xproj(
    *,
    x: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    activation: str | None,
    state_indices: torch.Tensor,
    xproj_weight: torch.Tensor,
) -> torch.Tensor:
    """`reference.mamba_conv_xproj_ref`'s contract: x_proj of the causal conv of each row's cached window
    and its new input x [B, D], the window read but not shifted (the SSM step shifts it)."""
    if activation not in (None, "silu", "swish") or conv_weight.shape[-1] < 2:
        from .reference import mamba_conv_xproj_ref

        return mamba_conv_xproj_ref(
            x=x, conv_state=conv_state, conv_weight=conv_weight, conv_bias=conv_bias, activation=activation,
            state_indices=state_indices, xproj_weight=xproj_weight,
        )  # fmt: skip
    from .triton_conv import causal_conv1d_update

    # Two launches: recomputing the conv inside the x_proj GEMV made each of its few programs redo the conv
    # over every channel (~20 µs a layer at d_inner 4096, against ~6 µs for the pair); a split-K kernel that
    # convolves its channel slab in registers and multiplies it by the matching x_proj slab measured 10-13 µs
    # at 64 rows against 8.9 for the pair (H100, cold), 8.2 against 7.9 at 16 rows; the conv in in_proj's
    # split-K epilogue slowed each in_proj by ~5 µs at 64 rows, what the conv launch costs.
    xc = causal_conv1d_update(
        x=x, conv_state=conv_state, weight=conv_weight, bias=conv_bias, activation=activation,
        state_indices=state_indices, update=False,
    )  # fmt: skip
    return linear(x=xc, weight=xproj_weight)


# ============================================================================ greedy sampling on device


@triton.jit
def _greedy_advance(
    logits_ptr,
    ids_ptr,
    pos_ptr,
    hist_ptr,
    counter_ptr,
    part_v_ptr,
    part_i_ptr,
    lock_ptr,
    V,
    chunk,
    s_l,
    s_h,
    CHUNKS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Program (row, chunk): the first argmax of the row's logits in [chunk * c, chunk * (c + 1)), stored as
    a partial; the chunk that finishes last for its row (a counter per row: barrier, acq_rel atomic) takes
    the first argmax over the partials in chunk order, writes the row's next id, advances its position and
    records the token at history[counter]; the row that finishes last advances the counter (a counter past
    the rows' ones). Counters are left at zero."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    pdl_begin(PDL)
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    arg = tl.zeros([BLOCK_V], tl.int32)
    end = tl.minimum(c * chunk + chunk, V)
    for v0 in range(c * chunk, end, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(logits_ptr + row * s_l + v, mask=v < end, other=float("-inf")).to(tl.float32)
        better = x > best  # strict: the first index among equals wins, as torch.argmax
        arg = tl.where(better, v, arg)
        best = tl.where(better, x, best)
    top = tl.max(best, axis=0)
    tl.store(part_v_ptr + row * CHUNKS + c, top)
    tl.store(part_i_ptr + row * CHUNKS + c, tl.min(tl.where(best == top, arg, V), axis=0))
    if last_to_arrive(lock_ptr + row, CHUNKS):
        ch = tl.arange(0, CHUNKS)
        vals = tl.load(part_v_ptr + row * CHUNKS + ch)
        idxs = tl.load(part_i_ptr + row * CHUNKS + ch)
        top = tl.max(vals, axis=0)
        tok = tl.min(tl.where(vals == top, idxs, V), axis=0).to(tl.int64)
        tl.store(ids_ptr + row, tok)
        tl.store(pos_ptr + row, tl.load(pos_ptr + row) + 1)
        step = tl.load(counter_ptr)
        tl.store(hist_ptr + step * s_h + row, tok)
        tl.atomic_xchg(lock_ptr + row, 0)
        rows_lock = lock_ptr + tl.num_programs(0)
        if last_to_arrive(rows_lock, tl.num_programs(0)):
            tl.store(counter_ptr, step + 1)
            tl.atomic_xchg(rows_lock, 0)


def greedy_advance(
    *,
    logits: torch.Tensor,
    ids: torch.Tensor,
    positions: torch.Tensor,
    history: torch.Tensor,
    counter: torch.Tensor,
) -> None:
    """`reference.greedy_advance_ref`'s contract: ids = argmax(logits), positions += 1,
    history[counter] = ids, counter += 1 (all on device, one launch). Each row's vocabulary is cut into up to
    GREEDY_MAX_CHUNKS chunks of about 2K logits or more, as many as make rows x chunks fill the card about
    four times over."""
    rows, vocab = logits.shape
    chunks = min(
        GREEDY_MAX_CHUNKS,
        triton.next_power_of_2(triton.cdiv(vocab, 2048)),
        triton.next_power_of_2(triton.cdiv(4 * NUM_SMS, rows)),
    )
    chunk = triton.cdiv(vocab, chunks)
    part_v = torch.empty(rows * chunks, device=logits.device, dtype=torch.float32)
    part_i = torch.empty(rows * chunks, device=logits.device, dtype=torch.int32)
    locks = fixup_locks(logits.device)
    assert rows + 1 <= locks.numel(), "one counter a row, and one for the rows"
    _greedy_advance[(rows, chunks)](
        logits,
        ids,
        positions,
        history,
        counter,
        part_v,
        part_i,
        locks,
        vocab,
        chunk,
        logits.stride(0),
        history.stride(0),
        CHUNKS=chunks,
        BLOCK_V=min(2048, triton.next_power_of_2(chunk)),
        num_warps=4,
        **pdl_args(logits.device, rows),
    )


# ============================================================================ embedding rows + sums of squares


@triton.jit
def _embed_ssq(
    ids_ptr, table_ptr, out_ptr, ssq_ptr, H, s_t, s_o, BLOCK_H: tl.constexpr, PDL: tl.constexpr = False
):
    """Program r: out[r] = table[ids[r]] and ssq[0, r] = its fp32 sum of squares (the ids come from the
    previous kernel: read after `pdl_begin`)."""
    pdl_begin(PDL)
    r = tl.program_id(0)
    tok = tl.load(ids_ptr + r).to(tl.int64)
    acc = tl.zeros([BLOCK_H], tl.float32)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        v = tl.load(table_ptr + tok * s_t + h, mask=h < H, other=0.0)
        tl.store(out_ptr + r.to(tl.int64) * s_o + h, v, mask=h < H)
        vf = v.to(tl.float32)
        acc += vf * vf
    tl.store(ssq_ptr + r, tl.sum(acc))


def embed_with_ssq(*, ids: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(table[ids], each row's fp32 sum of squares as one partial [1, rows]): the residual stream's first
    value and what a following `triton_gemm.linear_splitk` takes as ``norm_ssq``, in one launch."""
    rows, hid = ids.shape[0], table.shape[1]
    assert table.stride(1) == 1
    out = torch.empty(rows, hid, device=table.device, dtype=table.dtype)
    ssq = torch.empty(1, rows, device=table.device, dtype=torch.float32)
    _embed_ssq[(rows,)](
        ids, table, out, ssq, hid, table.stride(0), out.stride(0), BLOCK_H=min(1024, triton.next_power_of_2(hid)),
        num_warps=4, **pdl_args(table.device, rows),
    )  # fmt: skip
    return out, ssq


__all__ = ["embed_with_ssq", "greedy_advance", "linear", "mamba_conv_xproj", "moe_block", "norm_linear"]
