"""The fused top-k MoE experts: expert-sorted (token, k) pairs through two grouped GEMMs.

`moe_align` sorts the pairs by expert into blocks of one expert each; `_moe_gemm` runs gate/up (SwiGLU in
the epilogue) and then down (times the routing weight) over those blocks, one program per (pair block,
output column block[, split of K]).

The k routed rows of each token are summed by the down GEMM itself (``SUM``), deterministically (the
engine compares CUDA-graph and eager logits bit for bit, so no order-dependent atomics on the output):
every program stores its rows' partials, then counts itself in on its column block's counter (a barrier,
then an acq_rel atomic); the program that arrives last in a column block sums, for every token, its k
partials in k order and writes the token's row, then resets the counter to zero for the next launch. With
one split of K the partials are the rows the unfused path produces (model dtype) and the sum is the one
``partial.view(tokens, k, hid).sum(1)`` computes for k <= 4 (fp32 from zero, in k order, rounded once), so
both paths give the same bits. With ``split_k`` > 1 the programs store fp32 partial dots instead and the
last program also sums the splits (in split order) and applies the routing weight: deterministic, but not
the unsplit path's bits.

Launches are tunable per shape and token bucket (`MOE_SHAPES`, filled from ``bench/kernels_gpu.py
--moe-sweep``); the defaults are `moe_config`'s heuristic. On Hopper every launch takes programmatic
dependent launch (`pdl`). A launch may request the first K steps of every expert's tiles into L2 before
the PDL wait (``MoeGemmConfig.prefetch_lines``; the pair blocks' experts are only known after it): a few
lines a row fit L2 beside the previous kernel's traffic, where each program's whole expert slab (92 MB at
the 426M shape) did not and cost 20-35 µs a call (bench/RESULTS.md, "MoE experts and the Mamba sublayer").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .pdl import launch_kwargs, pdl_begin, pdl_choice, prefetch_rows
from .triton_gemm import LOCK_COUNT, fit_pipeline, fixup_locks, last_to_arrive, residual_out

# k up to which PyTorch's ``.sum(1)`` over [tokens, k, hid] adds the k rows in k order (its reduction keeps
# 4 accumulators per thread), so the fused sum can give its bits
FUSED_SUM_MAX_K = 4
# tokens up to which the down GEMM sums the k rows itself (one program per column block sums every token)
FUSED_SUM_MAX_TOKENS = 256


@dataclass(frozen=True)
class MoeGemmConfig:
    """One grouped GEMM's launch: rows (pairs) per program, output columns per program, K block, warps,
    pipeline stages, splits of K (down projection only; the fused sum then reduces the splits)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1
    # 128-byte lines a weight row that the programs of the first num_experts pair blocks request into L2
    # for expert pid_m's column block before the PDL wait (the first K steps of every expert's tiles: the
    # routing is not known yet, so each expert's are requested once); 0: none
    prefetch_lines: int = 0


@dataclass(frozen=True)
class MoeConfig:
    """Both GEMMs' launches. The pairs are aligned to the larger block_m; the other GEMM's block_m divides it
    (programs then cover sub-blocks, and a sub-block of padding only returns)."""

    gate_up: MoeGemmConfig
    down: MoeGemmConfig


# (experts, hidden, expert width, top_k, token bucket) -> launches (measured in bf16; any dtype takes them,
# the pipeline cut to fit shared memory). Filled from `bench/kernels_gpu.py --moe-sweep` (it prints the
# dict) once measured on the card.
MOE_SHAPES: dict[tuple[int, int, int, int, int], MoeConfig] = {
    # H100, `bench/kernels_gpu.py --moe-sweep` (cold weights, graph-replayed): 64 tokens 59.2 µs against 65.9
    # for the heuristic launches, 16 tokens 57.0 against 66.8 (both with the fused sum and PDL)
    # The first 4 lines (256 elements of K) of each expert's tiles requested into L2 before the wait: the
    # batch-64 step +1.0% and +2.7% in two A/Bs against none (`bench/local_model_gpu.py --splitk-ab`, H100)
    (8, 1024, 2816, 2, 64): MoeConfig(
        gate_up=MoeGemmConfig(
            block_m=16, block_n=32, block_k=128, num_warps=4, num_stages=2, prefetch_lines=4
        ),
        down=MoeGemmConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=3, prefetch_lines=4),
    ),
    (8, 1024, 2816, 2, 16): MoeConfig(
        gate_up=MoeGemmConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4),
        down=MoeGemmConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=3),
    ),
}


def _prefetch_lines(cfg: MoeGemmConfig, pdl: bool) -> int:
    """The launch's PREFETCH_LINES: the config's (a power of two) under PDL (the prefetch is PTX: not in
    the interpreter), else 0."""
    if not (pdl and cfg.prefetch_lines):
        return 0
    return triton.next_power_of_2(cfg.prefetch_lines)


def token_bucket(tokens: int) -> int:
    """The MOE_SHAPES bucket of a token count: the next power of two (at least 8)."""
    return max(8, triton.next_power_of_2(tokens))


def moe_config(
    tokens: int, top_k: int, num_experts: int, hid: int, inter: int, *, fp32: bool = False
) -> MoeConfig:
    """The launches for ``tokens`` tokens: MOE_SHAPES' entry for the shape and bucket, else the heuristic:
    about one block per expert's pairs (so each expert's weights are streamed by one row of programs),
    64-wide output blocks (32 for few pairs: more programs), K blocks of 128 (64 in fp32), 4 warps,
    3 stages, one split."""
    found = MOE_SHAPES.get((num_experts, hid, inter, top_k, token_bucket(tokens)))
    if found is not None:
        return found
    pairs = tokens * top_k
    block_m = min(64, max(16, triton.next_power_of_2(3 * pairs // (2 * num_experts))))
    cfg = MoeGemmConfig(block_m=block_m, block_n=64 if pairs > 64 else 32, block_k=64 if fp32 else 128)
    return MoeConfig(gate_up=cfg, down=cfg)


# pairs (and experts) up to which `moe_align` runs in one program (`align_pairs`)
ALIGN_SMALL_PAIRS = 1024
ALIGN_SMALL_EXPERTS = 256


def align_in_one_program(pairs: int, num_experts: int) -> bool:
    """Whether `align_pairs` sorts these pairs in one program (else `moe_align` sorts them with PyTorch)."""
    return pairs <= ALIGN_SMALL_PAIRS and num_experts <= ALIGN_SMALL_EXPERTS


def align_len(pairs: int, num_experts: int, block_m: int) -> int:
    """Length of `moe_align`'s sorted_ids: every expert's pairs padded to whole blocks (at most
    pairs + E * (block_m - 1), rounded up to block_m)."""
    return triton.cdiv(pairs + num_experts * (block_m - 1), block_m) * block_m


def align_buffers(
    pairs: int, num_experts: int, block_m: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """`moe_align`'s outputs (empty) and `align_pairs`' sizes and block constexprs for ``pairs`` pairs."""
    padded_len = align_len(pairs, num_experts, block_m)
    sorted_ids = torch.empty(padded_len, dtype=torch.long, device=device)
    block_expert = torch.empty(padded_len // block_m, dtype=torch.long, device=device)
    sizes = {
        "padded_len": padded_len,
        "BM": block_m,
        "BLOCK_P": triton.next_power_of_2(pairs),
        "BLOCK_E": triton.next_power_of_2(num_experts),
        "BLOCK_NB": triton.next_power_of_2(padded_len // block_m),
    }
    return sorted_ids, block_expert, sizes


def moe_align(
    top_k_index: torch.Tensor, num_experts: int, block_m: int, pdl: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the (token, k) pairs by expert into blocks of ``block_m`` rows of one expert each.

    Returns sorted_ids (pair index t*k + j, or the pad value M*k) and block_expert (the expert of each
    block; num_experts marks an unused block): each expert's pairs padded to whole blocks, one after the
    other, then unused blocks. Within an expert the pairs come first (ascending), the padding after them.
    Lengths `align_len`: shapes never depend on the routing (no host sync; CUDA-graph safe).
    ``pdl``: the one-program sort is launched with PDL.
    """
    flat = top_k_index.reshape(-1)
    pairs = flat.numel()
    dev = flat.device
    if align_in_one_program(pairs, num_experts):
        sorted_ids, block_expert, sizes = align_buffers(pairs, num_experts, block_m, dev)
        _moe_align_small[(1,)](
            flat,
            sorted_ids,
            block_expert,
            pairs,
            num_experts,
            **sizes,
            PDL=pdl,
            num_warps=4,
            **launch_kwargs(pdl),
        )
        return sorted_ids, block_expert
    padded_len = align_len(pairs, num_experts, block_m)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.long, device=dev).scatter_add_(
        0, flat, torch.ones_like(flat)
    )
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    start = torch.cumsum(counts, 0) - counts
    expert_sorted = flat[order]
    dest = pad_start[expert_sorted] + torch.arange(pairs, device=dev) - start[expert_sorted]
    sorted_ids = torch.full((padded_len,), pairs, dtype=torch.long, device=dev)
    sorted_ids.scatter_(0, dest, order)
    block_start = torch.arange(0, padded_len, block_m, device=dev)
    return sorted_ids, torch.searchsorted(pad_end, block_start, right=True)


@triton.jit
def align_pairs(
    idx_ptr,
    sorted_ptr,
    bexp_ptr,
    P,
    E,
    padded_len,
    BM: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_NB: tl.constexpr,
):
    """`moe_align` of the P <= BLOCK_P expert indices at idx_ptr by the calling program: a one-hot
    [pairs, experts] counting sort."""
    p = tl.arange(0, BLOCK_P)
    e = tl.arange(0, BLOCK_E)
    ex = tl.load(idx_ptr + p, mask=p < P, other=BLOCK_E)
    onehot = (ex[:, None] == e[None, :]).to(tl.int32)
    counts = tl.sum(onehot, axis=0)
    padded = (counts + BM - 1) // BM * BM
    pad_end = tl.cumsum(padded, axis=0)
    pad_start = pad_end - padded
    rank = tl.sum(tl.where(onehot != 0, tl.cumsum(onehot, axis=0) - 1, 0), axis=1)
    start = tl.sum(tl.where(onehot != 0, pad_start[None, :], 0), axis=1)
    for j0 in range(0, padded_len, BLOCK_P):
        q = j0 + p
        tl.store(sorted_ptr + q, (q * 0 + P).to(tl.int64), mask=q < padded_len)
    tl.debug_barrier()
    tl.store(sorted_ptr + start + rank, p.to(tl.int64), mask=p < P)
    blk = tl.arange(0, BLOCK_NB)
    ends = tl.where(e < E, pad_end, 1 << 30)
    bexp = tl.sum((ends[None, :] <= (blk * BM)[:, None]).to(tl.int64), axis=1)
    tl.store(bexp_ptr + blk, bexp, mask=blk * BM < padded_len)


@triton.jit
def _moe_align_small(
    idx_ptr,
    sorted_ptr,
    bexp_ptr,
    P,
    E,
    padded_len,
    BM: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_NB: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """`moe_align` in one program for up to BLOCK_P pairs."""
    pdl_begin(PDL)
    align_pairs(idx_ptr, sorted_ptr, bexp_ptr, P, E, padded_len, BM, BLOCK_P, BLOCK_E, BLOCK_NB)


@triton.jit
def _routed(acc, rw, dtype):
    """A down-projection row as the reference makes it: the dot rounded to the model dtype, times the
    pair's routing weight, rounded again (returned in fp32)."""
    return (acc.to(dtype).to(tl.float32) * rw[:, None]).to(dtype).to(tl.float32)


@triton.jit
def _token_sums(
    out_ptr,
    sum_ptr,
    rw_ptr,
    n,
    nmask,
    tokens,
    split_k,
    s_om,
    s_ps,
    s_so,
    res_ptr,
    ssq_ptr,
    part,
    s_res,
    SPLIT: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    RES: tl.constexpr = False,
    SSQ: tl.constexpr = False,
):
    """sum[t, n] = the k routed rows of token t (pairs t*k .. t*k + k-1) added in k order from zero in fp32,
    rounded to the model dtype once. The rows: stored ones (out), or with SPLIT the fp32 split partials at
    out + s * s_ps summed in split order, then `_routed`. RES: the residual added (`residual_out`, with SSQ
    each token's sum of squares over this column block at ssq[part, token], contiguous [parts, tokens])."""
    dtype = sum_ptr.dtype.element_ty
    for t0 in range(0, tokens, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        m = (t < tokens)[:, None] & nmask[None, :]
        if RES:  # requested with the rows' loads below, not after their sum
            r = tl.load(res_ptr + t[:, None].to(tl.int64) * s_res + n[None, :], mask=m, other=0.0)
        tot = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
        for j in tl.static_range(TOP_K):
            pair = t.to(tl.int64) * TOP_K + j
            rows = out_ptr + pair[:, None] * s_om + n[None, :]
            if SPLIT:
                acc = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
                for s in range(0, split_k):
                    acc += tl.load(rows + s * s_ps, mask=m, other=0.0)
                rw = tl.load(rw_ptr + pair, mask=t < tokens, other=0.0).to(tl.float32)
                tot += _routed(acc, rw, dtype)
            else:
                tot += tl.load(rows, mask=m, other=0.0).to(tl.float32)
        if RES:
            residual_out(tot, r, sum_ptr, ssq_ptr, t, n, t < tokens, m, part, tokens, s_so, SSQ)
        else:
            tl.store(sum_ptr + t[:, None].to(tl.int64) * s_so + n[None, :], tot.to(dtype), mask=m)


@triton.jit
def _moe_gemm(
    a_ptr,
    w_ptr,
    out_ptr,
    sum_ptr,
    lock_ptr,
    sorted_ptr,
    bexp_ptr,
    rw_ptr,
    N,
    K,
    num_pairs,
    num_experts,
    tokens,
    k_per_split,
    split_k,
    s_am,
    s_we,
    s_wn,
    s_wk,
    s_om,
    s_ps,
    s_so,
    a_div,
    n_half,
    res_ptr,
    ssq_ptr,
    s_res,
    SWIGLU: tl.constexpr,
    ROUTED: tl.constexpr,
    SPLIT: tl.constexpr,
    SUM: tl.constexpr,
    IEEE: tl.constexpr,
    TOP_K: tl.constexpr,
    SUB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    PDL: tl.constexpr = False,
    PREFETCH_LINES: tl.constexpr = 0,
    ELEM_BYTES: tl.constexpr = 2,
    RES: tl.constexpr = False,
    SSQ: tl.constexpr = False,
):
    """Program (pair block, column block, split): acc[pair, n] = a[pair // a_div] . w[e, n] over the
    split's K range, for the BLOCK_M sorted pairs at pid_m * BLOCK_M (sub-block pid_m % SUB of alignment
    block pid_m // SUB, whose expert is e; a sub-block that starts with padding is all padding and only
    counts itself in).

    SWIGLU: out[pair] = silu(gate rows n) * (up rows n_half + n). ROUTED: out[pair] = `_routed` row;
    with SPLIT, out + split * s_ps receives the fp32 dot instead. SUM: the column block's last program
    writes sum[token] = `_token_sums` (RES: plus the residual, SSQ: with row sums of squares). The model
    dtype is sum_ptr's. PDL: nothing is read before
    `pdl_begin` (the block's expert comes from the routing the previous kernel writes), except that with
    PREFETCH_LINES > 0, before the wait, program (pid_m < num_experts, n, split) requests expert pid_m's
    rows of column block n (gate and up), PREFETCH_LINES lines each from its split's start, into L2."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    if PREFETCH_LINES > 0:  # noqa: SIM102 - constexpr outside, runtime inside
        if pid_m < num_experts:
            prefetch_rows(
                w_ptr + pid_m.to(tl.int64) * s_we, pid_n * BLOCK_N, N, s_wn, k_start, k_end, n_half, BLOCK_N,
                PREFETCH_LINES, ELEM_BYTES, SWIGLU,
            )  # fmt: skip
    pdl_begin(PDL)
    e = tl.load(bexp_ptr + pid_m // SUB).to(tl.int64)
    dtype = sum_ptr.dtype.element_ty
    first = tl.load(sorted_ptr + pid_m * BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    if (e < num_experts) & (first < num_pairs):
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        pair = tl.load(sorted_ptr + rows)
        valid = pair < num_pairs
        a_rows = a_ptr + (pair // a_div).to(tl.int64)[:, None] * s_am
        w_cols = w_ptr + e * s_we + n[None, :].to(tl.int64) * s_wn
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < K
            a = tl.load(a_rows + k[None, :], mask=valid[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_cols + k[:, None] * s_wk, mask=kmask[:, None] & nmask[None, :], other=0.0)
            if IEEE:
                acc += tl.dot(a, w, input_precision="ieee")
            else:
                acc += tl.dot(a, w)
            if SWIGLU:
                wu = tl.load(
                    w_cols + n_half * s_wn + k[:, None] * s_wk,
                    mask=kmask[:, None] & nmask[None, :],
                    other=0.0,
                )
                if IEEE:
                    acc_up += tl.dot(a, wu, input_precision="ieee")
                else:
                    acc_up += tl.dot(a, wu)
        omask = valid[:, None] & nmask[None, :]
        o_rows = out_ptr + pair[:, None].to(tl.int64) * s_om + n[None, :]
        if SWIGLU:
            # the reference rounds each projection to the model dtype before the activation
            g = acc.to(dtype).to(tl.float32)
            u = acc_up.to(dtype).to(tl.float32)
            acc = (g * tl.sigmoid(g)).to(dtype).to(tl.float32) * u
        if SPLIT:
            tl.store(o_rows + pid_k * s_ps, acc, mask=omask)
        else:
            if ROUTED:
                acc = _routed(acc, tl.load(rw_ptr + pair, mask=valid, other=0.0).to(tl.float32), dtype)
            tl.store(o_rows, acc.to(out_ptr.dtype.element_ty), mask=omask)
    if SUM:
        lock = lock_ptr + pid_n
        if last_to_arrive(lock, tl.num_programs(0) * tl.num_programs(2)):
            _token_sums(
                out_ptr, sum_ptr, rw_ptr, n, nmask, tokens, split_k, s_om, s_ps, s_so, res_ptr, ssq_ptr, pid_n,
                s_res, SPLIT, TOP_K, BLOCK_T, BLOCK_N, RES, SSQ,
            )  # fmt: skip
            tl.atomic_xchg(lock, 0)


def fused_sum_applies(tokens: int, top_k: int) -> bool:
    """Whether the down GEMM sums each token's k rows itself (else ``.sum(1)`` afterwards)."""
    return top_k <= FUSED_SUM_MAX_K and tokens <= FUSED_SUM_MAX_TOKENS


def moe_gate_up(
    x: torch.Tensor,
    gate_up_proj: torch.Tensor,
    sorted_ids: torch.Tensor,
    block_expert: torch.Tensor,
    top_k: int,
    cfg: MoeGemmConfig,
    align_m: int,
    pdl: bool,
) -> torch.Tensor:
    """The gate/up grouped GEMM with SwiGLU: [pairs, I] rows for the pairs `moe_align` sorted into blocks of
    ``align_m`` (x [tokens, H] contiguous; gate_up_proj [E, 2I, H])."""
    tokens, hid = x.shape
    num_experts, two_i, _ = gate_up_proj.shape
    inter = two_i // 2
    pairs = tokens * top_k
    act_out = torch.empty(pairs, inter, device=x.device, dtype=x.dtype)
    stages, bk = fit_pipeline(cfg.num_stages, cfg.block_k, cfg.block_m, cfg.block_n, True, x.element_size())
    _moe_gemm[(sorted_ids.numel() // cfg.block_m, triton.cdiv(inter, cfg.block_n), 1)](
        x, gate_up_proj, act_out, act_out, act_out, sorted_ids, block_expert, x,
        inter, hid, pairs, num_experts, tokens, hid, 1,
        x.stride(0), *gate_up_proj.stride(), act_out.stride(0), 0, 0, top_k, inter, act_out, act_out, 0,
        SWIGLU=True, ROUTED=False, SPLIT=False, SUM=False, IEEE=x.dtype == torch.float32, TOP_K=top_k,
        SUB=align_m // cfg.block_m, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk, BLOCK_T=16, PDL=pdl,
        PREFETCH_LINES=_prefetch_lines(cfg, pdl), ELEM_BYTES=x.element_size(),
        num_warps=cfg.num_warps, num_stages=stages, **launch_kwargs(pdl),
    )  # fmt: skip
    return act_out


def moe_down(
    act_out: torch.Tensor,
    down_proj: torch.Tensor,
    sorted_ids: torch.Tensor,
    block_expert: torch.Tensor,
    routing_weights: torch.Tensor,
    tokens: int,
    cfg: MoeGemmConfig,
    align_m: int,
    fused: bool,
    pdl: bool,
    residual: torch.Tensor | None = None,
    want_ssq: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The down grouped GEMM times the routing weights (flat [pairs]): with ``fused`` each token's k rows
    summed in the kernel ([tokens, H]; cfg.split_k honoured), else the [pairs, H] rows (one split).
    ``residual`` [tokens, H] (fused only): added to the sums as the reference's residual add rounds it;
    ``want_ssq``: also each token's fp32 sums of squares of the result, one partial per output column
    block ([blocks, tokens], for `triton_gemm.linear_splitk`'s ``norm_ssq``). Returns (out, sums of squares
    or None)."""
    pairs, inter = act_out.shape
    top_k = pairs // tokens
    num_experts, hid, _ = down_proj.shape
    stages, bk = fit_pipeline(
        cfg.num_stages, cfg.block_k, cfg.block_m, cfg.block_n, False, act_out.element_size()
    )
    n_cols = triton.cdiv(hid, cfg.block_n)
    assert not fused or n_cols <= LOCK_COUNT, "the fused sum takes one fixup counter per column block"
    split = cfg.split_k if fused else 1
    k_per_split = triton.cdiv(triton.cdiv(inter, split), bk) * bk  # whole K blocks, no empty split
    split = triton.cdiv(inter, k_per_split)
    dev, dtype = act_out.device, act_out.dtype
    out = torch.empty(tokens, hid, device=dev, dtype=dtype) if fused else None
    if split > 1:
        partial = torch.empty(split, pairs, hid, device=dev, dtype=torch.float32)
    else:
        partial = torch.empty(pairs, hid, device=dev, dtype=dtype)
    sums = out if fused else partial
    assert (residual is None and not want_ssq) or (
        fused and residual is not None and residual.shape == out.shape
    )
    ssq = torch.empty(n_cols, tokens, device=dev, dtype=torch.float32) if want_ssq else None
    _moe_gemm[(sorted_ids.numel() // cfg.block_m, n_cols, split)](
        act_out, down_proj, partial, sums, fixup_locks(dev) if fused else partial, sorted_ids, block_expert,
        routing_weights, hid, inter, pairs, num_experts, tokens, k_per_split, split,
        act_out.stride(0), *down_proj.stride(), partial.stride(-2), partial.stride(0) if split > 1 else 0,
        sums.stride(0), 1, 0, residual if residual is not None else sums, ssq if ssq is not None else sums,
        residual.stride(0) if residual is not None else 0,
        SWIGLU=False, ROUTED=True, SPLIT=split > 1, SUM=fused, IEEE=dtype == torch.float32, TOP_K=top_k,
        SUB=align_m // cfg.block_m, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk,
        BLOCK_T=min(triton.next_power_of_2(tokens), max(16, 4096 // cfg.block_n)), PDL=pdl,
        PREFETCH_LINES=_prefetch_lines(cfg, pdl), ELEM_BYTES=dtype.itemsize, RES=residual is not None,
        SSQ=want_ssq, num_warps=cfg.num_warps, num_stages=stages, **launch_kwargs(pdl),
    )  # fmt: skip
    return (out if fused else partial), ssq


def moe_experts(
    *,
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    config: MoeConfig | None = None,
    fused_sum: bool | None = None,
    pdl: bool | None = None,
    aligned: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """`reference.moe_experts_ref`'s contract, as two grouped GEMMs over expert-sorted (token, k) pairs:
    gate/up with SwiGLU fused in the epilogue, then down scaled by the routing weight, each token's k rows
    summed by the down GEMM (`fused_sum_applies`; ``fused_sum=False`` sums them with ``.sum(1)`` after,
    the same bits). Launches: ``config``, else `moe_config`'s; ``pdl`` as `pdl_enabled` unless False;
    ``aligned``: `moe_align`'s output for these pairs and the launches' larger block_m, if already made.
    No host sync (shapes do not depend on the routing)."""
    return _moe_run(
        x=x, top_k_index=top_k_index, top_k_weights=top_k_weights, gate_up_proj=gate_up_proj,
        down_proj=down_proj, act=act, config=config, fused_sum=fused_sum, pdl=pdl, aligned=aligned,
    )[0]  # fmt: skip


def moe_experts_residual(
    *,
    x: torch.Tensor,
    residual: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    config: MoeConfig | None = None,
    pdl: bool | None = None,
    aligned: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + `moe_experts`(x, ...), each token's sums of squares of it in partials [blocks, tokens]):
    the layer's residual add in the down GEMM's token sum (SwiGLU experts whose token sum is fused,
    `fused_sum_applies`), for a following `triton_gemm.linear_splitk` with ``norm_ssq``."""
    out, ssq = _moe_run(
        x=x, top_k_index=top_k_index, top_k_weights=top_k_weights, gate_up_proj=gate_up_proj,
        down_proj=down_proj, act=F.silu, config=config, fused_sum=True, pdl=pdl, aligned=aligned,
        residual=residual,
    )  # fmt: skip
    assert ssq is not None, "the residual add needs the fused token sum"
    return out, ssq


def _moe_run(
    *,
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    config: MoeConfig | None,
    fused_sum: bool | None,
    pdl: bool | None,
    aligned: tuple[torch.Tensor, torch.Tensor] | None,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`moe_experts` and `moe_experts_residual`: (out, sums of squares when ``residual`` is given)."""
    if act is not F.silu:
        assert residual is None, "the residual add runs in the SwiGLU path's token sum"
        from .reference import moe_experts_ref

        return moe_experts_ref(x, top_k_index, top_k_weights, gate_up_proj, down_proj, act), None
    tokens, hid = x.shape
    k = top_k_index.shape[1]
    num_experts, two_i, _ = gate_up_proj.shape
    cfg = config or moe_config(tokens, k, num_experts, hid, two_i // 2, fp32=x.dtype == torch.float32)
    align_m = max(cfg.gate_up.block_m, cfg.down.block_m)
    assert align_m % cfg.gate_up.block_m == 0 and align_m % cfg.down.block_m == 0, cfg
    assert cfg.gate_up.split_k == 1, cfg
    fused = (
        fused_sum_applies(tokens, k)
        and fused_sum is not False
        and triton.cdiv(hid, cfg.down.block_n) <= LOCK_COUNT  # one fixup counter per column block
    )
    pdl = pdl_choice(x.device, pdl)
    sorted_ids, block_expert = aligned or moe_align(top_k_index, num_experts, align_m, pdl)
    act_out = moe_gate_up(
        x.contiguous(), gate_up_proj, sorted_ids, block_expert, k, cfg.gate_up, align_m, pdl
    )
    rw = top_k_weights.reshape(-1).contiguous()
    out, ssq = moe_down(
        act_out, down_proj, sorted_ids, block_expert, rw, tokens, cfg.down, align_m, fused, pdl,
        residual=residual if fused else None, want_ssq=residual is not None and fused,
    )  # fmt: skip
    return (out if fused else out.view(tokens, k, hid).sum(1)), ssq


__all__ = [
    "ALIGN_SMALL_EXPERTS",
    "ALIGN_SMALL_PAIRS",
    "MOE_SHAPES",
    "MoeConfig",
    "MoeGemmConfig",
    "align_buffers",
    "align_in_one_program",
    "align_len",
    "align_pairs",
    "fused_sum_applies",
    "moe_align",
    "moe_config",
    "moe_down",
    "moe_experts",
    "moe_experts_residual",
    "moe_gate_up",
    "token_bucket",
]
