"""Split-K GEMM for the decode step's projections at a few dozen rows: out = x @ weight.T.

At 16-128 rows a projection is a weight stream: 64 rows of a [1024, 2048] bf16 weight are 0.27 GFLOP
against 4.2 MB of reads. cuBLAS tiles the output only, so a 1024-wide output gives it 8-16 tiles, i.e.
8-16 SMs streaming the weight. Here one program covers every row (BLOCK_M >= rows) and a [BLOCK_N,
K / split_k] slab of the weight, so the weight is read once and ``cdiv(N, BLOCK_N) * split_k`` programs
stream it (about one per SM by default; `splitk_config`). A narrow output may instead take row blocks
(``SplitKConfig.block_m`` < rows): more programs without splitting K, each weight tile read by every row
block (from L2 after the first).

The split partial sums are reduced deterministically (the engine compares CUDA-graph and eager logits
bit for bit, and fp32 atomics would make the result depend on the order programs finish):

* ``reduce="fixup"`` (one launch): each program stores its fp32 partial [BLOCK_M, BLOCK_N] in a
  workspace, then counts itself in with an atomic on its tile's counter; the program that arrives last
  sums the ``split_k`` partials in split order (whichever program that is) and writes the output, and
  resets the counter to zero for the next launch.
* ``reduce="launch"``: partials as above, then a second kernel sums them in split order.

Both give the same bits for the same configuration. With ``split_k == 1`` the program writes its tile
directly. ``swiglu``: the weight holds gate rows [0, N/2) then up rows [N/2, N); each program computes a
gate block and the matching up block and the output is silu(gate) * up ([rows, N/2]), rounded like
`reference.norm_linear_ref` (each projection to the model dtype first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .pdl import launch_kwargs, lines_for, pdl_begin, pdl_choice, prefetch_rows
from .reference import norm_linear_ref

# H100 SXM; the launch heuristic aims at about one program per SM
NUM_SMS = 132


@dataclass(frozen=True)
class SplitKConfig:
    """One launch configuration; a field left None is chosen from the shape (`splitk_config`)."""

    block_n: int | None = None
    block_k: int | None = None
    split_k: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    reduce: str | None = None
    # rows a program covers; None: every row up to 128 (`block_m_for`), so the weight is read once. Fewer
    # rows a program gives a narrow output more programs without splitting K (each weight tile is then
    # read by several programs, from L2 after the first)
    block_m: int | None = None


# (N, K) of a weight -> the configuration its projection runs with through the bundle's `linear` /
# `norm_linear` at SPLITK_MIN_ROWS..SPLITK_MAX_ROWS rows. Empty: every projection above one row stays on
# cuBLAS. Filled from `bench/kernels_gpu.py --gemm-sweep` (it prints the dict) once measured on the card.
SPLITK_SHAPES: dict[tuple[int, int], SplitKConfig] = {
    # the 426M step's projections, best launch at 64 rows on an H100 (`--gemm-sweep`, cold weights). Alone
    # most only tie cuBLAS (in_proj 6.46 vs 6.52 µs, out_proj 6.88 vs 6.39, gate/up + SwiGLU 7.94 vs 13.06 with
    # PyTorch's SwiGLU); in the step they also launch with PDL, which cuBLAS does not: a chain of 32
    # projections ran 5.9 µs a projection against cuBLAS' 8.5 (`--pdl`)
    (4096, 1024): SplitKConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, reduce="fixup"),
    # x_proj and out_proj in row blocks of 16 (`--gemm-sweep --gemm-sweep-mtiles`, 64 rows: 4.37 against 5.23 µs
    # and 6.29 against 6.52 for every row in one block; the batch-64 step 110.6K against 109.9K tok/s)
    (96, 2048): SplitKConfig(
        block_n=32, block_k=256, split_k=4, num_warps=4, num_stages=3, reduce="fixup", block_m=16
    ),
    (1024, 2048): SplitKConfig(
        block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=4, reduce="fixup", block_m=16
    ),
    (1536, 1024): SplitKConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, reduce="fixup"),
    (1024, 1024): SplitKConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, reduce="fixup"),
    (5632, 1024): SplitKConfig(block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=4, reduce="fixup"),
    (1024, 2816): SplitKConfig(block_n=32, block_k=256, split_k=4, num_warps=4, num_stages=4, reduce="fixup"),
    (32000, 1024): SplitKConfig(
        block_n=64, block_k=128, split_k=1, num_warps=4, num_stages=3, reduce="fixup"
    ),
}
SPLITK_MIN_ROWS = 2
SPLITK_MAX_ROWS = 128


def splitk_for(rows: int, n: int, k: int) -> SplitKConfig | None:
    """The configuration a projection of ``rows`` rows and weight [n, k] takes, or None (cuBLAS)."""
    if not SPLITK_MIN_ROWS <= rows <= SPLITK_MAX_ROWS:
        return None
    return SPLITK_SHAPES.get((n, k))


@triton.jit
def _tile_epilogue(acc, acc_up, dtype, SWIGLU: tl.constexpr):
    """The output tile in fp32: the dot, or silu(gate) * up with each projection rounded to ``dtype``
    first (as the reference's separate ops)."""
    if SWIGLU:
        g = acc.to(dtype).to(tl.float32)
        u = acc_up.to(dtype).to(tl.float32)
        return (g * tl.sigmoid(g)).to(dtype).to(tl.float32) * u
    return acc


@triton.jit
def _partial(p_tile, s_ps, s, split_k):
    """Split s's partial tile, zeros past the last split (the load itself is unmasked: the workspace
    holds whole tiles, and a split past the last reads the last one's)."""
    p = tl.load(p_tile + tl.minimum(s, split_k - 1) * s_ps)
    return tl.where(s < split_k, p, 0.0)


@triton.jit
def _sum_partials(p_tile, s_ps, split_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Sum over splits of the partial tiles at p_tile + s * s_ps, added in split order. GROUP (1, 2 or 4)
    tiles are loaded before they are added, so a group costs one L2 round trip, not one per split."""
    tot = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for s0 in range(0, split_k, GROUP):
        p0 = _partial(p_tile, s_ps, s0, split_k)
        if GROUP >= 2:
            p1 = _partial(p_tile, s_ps, s0 + 1, split_k)
        if GROUP >= 4:
            p2 = _partial(p_tile, s_ps, s0 + 2, split_k)
            p3 = _partial(p_tile, s_ps, s0 + 3, split_k)
        tot += p0
        if GROUP >= 2:
            tot += p1
        if GROUP >= 4:
            tot += p2
            tot += p3
    return tot


@triton.jit
def last_to_arrive(lock, count):
    """Count this program in on the counter at ``lock``; true in the program that arrives last of ``count``.
    Every thread's earlier stores precede the count (a barrier, then an acq_rel atomic), so the last
    program sees all of them. That program resets the counter (``tl.atomic_xchg(lock, 0)``) when done, so
    counters rest at zero between launches (`fixup_locks`)."""
    tl.debug_barrier()
    return tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == count - 1


@triton.jit
def _norm_scale(ssq_ptr, rows, rmask, n_parts, M, K, eps, PARTS: tl.constexpr):
    """Each row's RMSNorm scale rsqrt(mean square + eps) from its ``n_parts`` partial sums of squares at
    ssq[part, row] (contiguous [parts, M]; summed in one fixed order, so the same bits every launch)."""
    p = tl.arange(0, PARTS)
    ss = tl.load(
        ssq_ptr + p[:, None] * M + rows[None, :], mask=(p < n_parts)[:, None] & rmask[None, :], other=0.0
    )
    return tl.rsqrt(tl.sum(ss, axis=0) / K + eps)


@triton.jit
def residual_out(val, r, out_ptr, ssq_ptr, rows, n, rmask, omask, part, M, s_om, SSQ: tl.constexpr):
    """Store out = (val rounded to the model dtype) + the residual tile r, rounded (the reference's residual
    add), and with SSQ each row's sum of squares of the stored values over this column block at
    ssq[part, row] (contiguous [parts, M])."""
    dtype = out_ptr.dtype.element_ty
    s = (val.to(dtype).to(tl.float32) + r.to(tl.float32)).to(dtype)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * s_om + n[None, :], s, mask=omask)
    if SSQ:
        sf = tl.where(omask, s.to(tl.float32), 0.0)
        tl.store(ssq_ptr + part * M + rows, tl.sum(sf * sf, axis=1), mask=rmask)


@triton.jit
def _write_tile(
    acc, acc_up, rstd, out_ptr, res, ssq_ptr, rows, n, rmask, omask, part, M, s_om,
    SWIGLU: tl.constexpr, RSTD: tl.constexpr, RES: tl.constexpr, SSQ: tl.constexpr,
):  # fmt: skip
    """A finished fp32 tile to the output: with RSTD its rows scaled by ``rstd`` first, then
    `_tile_epilogue`, then stored, or with RES stored through `residual_out` (``res``: the residual tile)."""
    if RSTD:
        acc = acc * rstd[:, None]
        acc_up = acc_up * rstd[:, None]
    val = _tile_epilogue(acc, acc_up, out_ptr.dtype.element_ty, SWIGLU)
    if RES:
        residual_out(val, res, out_ptr, ssq_ptr, rows, n, rmask, omask, part, M, s_om, SSQ)
    else:
        tl.store(
            out_ptr + rows[:, None].to(tl.int64) * s_om + n[None, :],
            val.to(out_ptr.dtype.element_ty),
            mask=omask,
        )


@triton.jit
def _splitk_gemm(
    x_ptr,
    w_ptr,
    out_ptr,
    part_ptr,
    lock_ptr,
    M,
    N,
    K,
    k_per_split,
    n_half,
    split_k,
    s_xm,
    s_wn,
    s_om,
    s_ps,
    s_pm,
    s_up,
    res_ptr,
    ssq_out_ptr,
    ssq_in_ptr,
    n_parts,
    s_res,
    eps,
    SPLIT: tl.constexpr,
    FIXUP: tl.constexpr,
    SWIGLU: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
    PDL: tl.constexpr = False,
    PREFETCH_LINES: tl.constexpr = 0,
    ELEM_BYTES: tl.constexpr = 2,
    RES: tl.constexpr = False,
    SSQ: tl.constexpr = False,
    RSTD_PARTS: tl.constexpr = 0,
):
    """Program (n block, split, m block): acc = x[rows, ks] @ w[n, ks]^T over its split ks of K.

    N is the number of output columns (n_half with SWIGLU, whose up rows start at weight row n_half).
    Partials are whole tiles at part[split, row, col] (SWIGLU: gate at col, up at s_up + col).
    PREFETCH_LINES > 0: the program's weight slab is requested into L2 first; PDL: then `pdl_begin`.
    RSTD_PARTS > 0: the output rows are scaled by their RMSNorm scale (`_norm_scale` over K of the
    ``n_parts`` <= RSTD_PARTS partial sums of squares at ssq_in), the norm weight being folded into w. RES:
    the output is `residual_out` (with SSQ its row sums of squares at ssq_out[n block]). Both sums-of-squares
    buffers are contiguous [parts, M]."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    if PREFETCH_LINES > 0:
        kp0 = pid_k * k_per_split
        kp1 = tl.minimum(kp0 + k_per_split, K)
        prefetch_rows(
            w_ptr, pid_n * BLOCK_N, N, s_wn, kp0, kp1, n_half, BLOCK_N, PREFETCH_LINES, ELEM_BYTES, SWIGLU
        )
    pdl_begin(PDL)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    omask = rmask[:, None] & nmask[None, :]
    # issued before the K loop, so their loads overlap the weight stream instead of adding to the tail:
    # the rows' norm scale (1.0: unused) and the residual tile (every split's program loads it, only the
    # one that writes the tile uses it; 0.0: unused)
    rstd = _norm_scale(ssq_in_ptr, rows, rmask, n_parts, M, K, eps, RSTD_PARTS) if RSTD_PARTS > 0 else 1.0
    res = 0.0
    if RES:
        res = tl.load(res_ptr + rows[:, None].to(tl.int64) * s_res + n[None, :], mask=omask, other=0.0)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    x_rows = x_ptr + rows[:, None].to(tl.int64) * s_xm
    w_cols = w_ptr + n[None, :].to(tl.int64) * s_wn
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        # a split ends on a K block boundary or at K, so `k < K` is the whole mask (constant over
        # 16-element groups when K is, which keeps the loads vectorised)
        kmask = k < K
        a = tl.load(x_rows + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        # [BLOCK_K, BLOCK_N] view of the weight's rows n: contiguous along k (16-byte loads)
        w = tl.load(w_cols + k[:, None], mask=kmask[:, None] & nmask[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(a, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w)
        if SWIGLU:
            wu = tl.load(w_cols + n_half * s_wn + k[:, None], mask=kmask[:, None] & nmask[None, :], other=0.0)
            if IEEE:
                acc_up += tl.dot(a, wu, input_precision="ieee")
            else:
                acc_up += tl.dot(a, wu)
    if not SPLIT:
        _write_tile(
            acc, acc_up, rstd, out_ptr, res, ssq_out_ptr, rows, n, rmask, omask, pid_n, M, s_om,
            SWIGLU, RSTD_PARTS > 0, RES, SSQ,
        )  # fmt: skip
    else:
        p_tile = part_ptr + rows[:, None].to(tl.int64) * s_pm + n[None, :]
        tl.store(p_tile + pid_k * s_ps, acc)
        if SWIGLU:
            tl.store(p_tile + pid_k * s_ps + s_up, acc_up)
        if FIXUP:
            lock = lock_ptr + pid_m * tl.num_programs(0) + pid_n
            if last_to_arrive(lock, split_k):
                # split order, whichever program arrived last
                tot = _sum_partials(p_tile, s_ps, split_k, BLOCK_M, BLOCK_N, GROUP)
                tot_up = tot
                if SWIGLU:
                    tot_up = _sum_partials(p_tile + s_up, s_ps, split_k, BLOCK_M, BLOCK_N, GROUP)
                _write_tile(
                    tot, tot_up, rstd, out_ptr, res, ssq_out_ptr, rows, n, rmask, omask, pid_n, M, s_om,
                    SWIGLU, RSTD_PARTS > 0, RES, SSQ,
                )  # fmt: skip
                tl.atomic_xchg(lock, 0)


@triton.jit
def _splitk_sum(
    part_ptr,
    out_ptr,
    M,
    N,
    split_k,
    s_ps,
    s_pm,
    s_up,
    s_om,
    SWIGLU: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP: tl.constexpr,
):
    """out = epilogue(sum over splits of the partials, in split order); the grid covers the workspace's
    whole tiles."""
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (n < N)[None, :]
    p_tile = part_ptr + rows[:, None].to(tl.int64) * s_pm + n[None, :]
    tot = _sum_partials(p_tile, s_ps, split_k, BLOCK_M, BLOCK_N, GROUP)
    tot_up = tot
    if SWIGLU:
        tot_up = _sum_partials(p_tile + s_up, s_ps, split_k, BLOCK_M, BLOCK_N, GROUP)
    val = _tile_epilogue(tot, tot_up, out_ptr.dtype.element_ty, SWIGLU)
    tl.store(
        out_ptr + rows[:, None].to(tl.int64) * s_om + n[None, :], val.to(out_ptr.dtype.element_ty), mask=mask
    )


# Tile counters of the fixup reduction, one buffer per device, allocated once and never replaced (captured
# CUDA graphs keep its address). Every launch leaves its counters at zero, so launches in one stream (or
# one graph) share them; launches that may run at the same time on different streams must not.
LOCK_COUNT = 1 << 16
_LOCKS: dict[tuple[str, int | None], torch.Tensor] = {}


def fixup_locks(device: torch.device) -> torch.Tensor:
    key = (device.type, device.index)
    if key not in _LOCKS:
        _LOCKS[key] = torch.zeros(LOCK_COUNT, dtype=torch.int32, device=device)
    return _LOCKS[key]


def _group(per_thread: int) -> int:
    """Partial tiles loaded at a time (1, 2 or 4) by a reduction whose threads hold ``per_thread`` values of
    a tile, within ~128 registers."""
    return 4 if 4 * per_thread <= 128 else (2 if 2 * per_thread <= 128 else 1)


def block_m_for(rows: int) -> int:
    """One m block covers every row up to 128 (the weight is then read once)."""
    return min(128, max(16, triton.next_power_of_2(rows)))


def splitk_config(rows: int, n: int, k: int, *, fp32: bool = False, sms: int = NUM_SMS) -> SplitKConfig:
    """A default launch for [rows, k] @ [n, k]^T: 64-wide output blocks (32 for narrow outputs), K blocks
    of 128 (64 in fp32), and as many splits of K (at most 16) as give about one program per SM. Each split
    costs a [rows, 64] fp32 partial per tile and each output block re-reads x, so more programs than SMs
    mostly add L2 traffic; the 3-stage pipeline keeps ~2 tiles of loads in flight per program."""
    block_n = 64 if n > 256 else 32
    block_k = 64 if fp32 else 128
    tiles = triton.cdiv(n, block_n) * triton.cdiv(rows, block_m_for(rows))
    k_blocks = triton.cdiv(k, block_k)
    split = max(1, min(16, round(sms / tiles), k_blocks))
    split = triton.cdiv(k_blocks, triton.cdiv(k_blocks, split))  # whole K blocks a split, none empty
    num_warps = 8 if block_m_for(rows) * block_n >= 8192 else 4
    return SplitKConfig(
        block_n=block_n,
        block_k=block_k,
        split_k=split,
        num_warps=num_warps,
        num_stages=3,
        reduce="fixup",
        block_m=block_m_for(rows),
    )


# shared memory the software pipeline may take (the H100 allows 227 KB a block)
SMEM_LIMIT = 200 * 1024


def fit_pipeline(
    stages: int, block_k: int, block_m: int, block_n: int, swiglu: bool, elem: int, *, limit: int = SMEM_LIMIT
) -> tuple[int, int]:
    """(stages, block_k) of a dot-tile pipeline with [block_m, block_k] activation and [block_k, block_n]
    weight tiles (two weight tiles with SwiGLU), cut (stages first, down to 2; then the K block) until its
    shared memory fits ``limit`` bytes."""

    def smem(st: int, bk: int) -> int:
        return st * (block_m * bk + bk * block_n * (2 if swiglu else 1)) * elem

    while stages > 2 and smem(stages, block_k) > limit:
        stages -= 1
    while block_k > 32 and smem(stages, block_k) > limit:
        block_k //= 2
    return stages, block_k


def linear_splitk(
    *,
    x: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor | None = None,
    swiglu: bool = False,
    split_k: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    reduce: str | None = None,
    block_m: int | None = None,
    config: SplitKConfig | None = None,
    pdl: bool | None = None,
    prefetch: bool | None = None,
    norm_ssq: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """`reference.linear_ref`'s contract without bias (x @ weight.T; with ``swiglu``, silu of the first
    half of the outputs times the second half), fp32 accumulation, output in the inputs' dtype (fp32 dots
    in IEEE precision). x [M, K] and weight [N, K] with unit inner stride; ``out`` [M, N or N/2] (unit
    column stride) receives the result. Launch parameters: explicit arguments, else ``config``'s fields,
    else `splitk_config`'s; stages (then the K block) are cut until the pipeline fits SMEM_LIMIT.

    ``norm_ssq`` [parts, rows] (fp32 partial sums of squares of x's rows, `linear_residual_splitk`'s): the
    result is RMSNorm(x) @ weight.T for a weight with the norm weight folded in (weight * norm_weight along
    K), each row scaled by rsqrt(mean square + ``eps``) in the epilogue."""
    return _splitk(
        x=x, weight=weight, out=out, swiglu=swiglu, config=config, pdl=pdl, prefetch=prefetch,
        norm_ssq=norm_ssq, eps=eps,
        launch=SplitKConfig(block_n, block_k, split_k, num_warps, num_stages, reduce, block_m),
    )[0]  # fmt: skip


def linear_residual_splitk(
    *,
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    config: SplitKConfig | None = None,
    ssq: bool = True,
    pdl: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(residual + x @ weight.T, each in the model dtype as the reference rounds them; with ``ssq`` each
    row's fp32 sums of squares of that result, one partial per output column block [parts, rows], for a
    following `linear_splitk`'s ``norm_ssq``)."""
    return _splitk(x=x, weight=weight, out=None, swiglu=False, config=config, pdl=pdl, prefetch=None,
                   residual=residual, want_ssq=ssq)  # fmt: skip


def _splitk(
    *,
    x: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor | None,
    swiglu: bool,
    config: SplitKConfig | None,
    pdl: bool | None,
    prefetch: bool | None,
    launch: SplitKConfig = SplitKConfig(),
    norm_ssq: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    want_ssq: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One split-K launch (`linear_splitk`, `linear_residual_splitk`): ``launch``'s fields, else ``config``'s,
    else `splitk_config`'s."""
    split_k, block_n, block_k, block_m = launch.split_k, launch.block_n, launch.block_k, launch.block_m
    num_warps, num_stages, reduce = launch.num_warps, launch.num_stages, launch.reduce
    rows, k = x.shape
    n_w, k_w = weight.shape
    fused = norm_ssq is not None or residual is not None
    if k_w != k or x.dtype != weight.dtype or x.stride(-1) != 1 or weight.stride(-1) != 1:
        assert not fused, "the norm scale and residual add need the kernel's operands"
        return norm_linear_ref(x=x, weight=weight, swiglu=swiglu, out=out)[0], None
    n_out = n_w // 2 if swiglu else n_w
    fp32 = x.dtype == torch.float32
    heur = splitk_config(rows, n_out, k, fp32=fp32)
    cfg = config or SplitKConfig()

    def pick(arg: int | str | None, field: str) -> int | str:
        return arg or getattr(cfg, field) or getattr(heur, field)

    block_n, block_k, split = pick(block_n, "block_n"), pick(block_k, "block_k"), pick(split_k, "split_k")
    block_m = pick(block_m, "block_m")
    num_warps, num_stages, reduce = (
        pick(num_warps, "num_warps"),
        pick(num_stages, "num_stages"),
        pick(reduce, "reduce"),
    )
    assert reduce in ("fixup", "launch"), f"unknown reduction {reduce!r}"
    assert block_m >= 16 and block_m & (block_m - 1) == 0, "block_m: a power of two from 16"

    num_stages, block_k = fit_pipeline(num_stages, block_k, block_m, block_n, swiglu, x.element_size())
    # whole K blocks per split, and no empty split
    k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    split = triton.cdiv(k, k_per_split)
    if out is None:
        out = torch.empty(rows, n_out, device=x.device, dtype=x.dtype)
    assert out.shape == (rows, n_out) and out.stride(-1) == 1, (
        "out must be [rows, outputs], unit column stride"
    )
    n_tiles = triton.cdiv(n_out, block_n)
    m_tiles = triton.cdiv(rows, block_m)
    n_pad = n_tiles * block_n
    if split > 1:
        # whole tiles (unmasked stores and loads); SwiGLU's up partials after the gate ones
        cols = 2 * n_pad if swiglu else n_pad
        part = torch.empty(split, m_tiles * block_m, cols, device=x.device, dtype=torch.float32)
        s_ps, s_pm = part.stride(0), part.stride(1)
    else:
        part, s_ps, s_pm = out, 0, 0
    fixup = split > 1 and reduce == "fixup" and n_tiles * m_tiles <= LOCK_COUNT
    assert not fused or split == 1 or fixup, "the norm scale and residual add run in the one-launch epilogue"
    assert residual is None or (not swiglu and residual.shape == out.shape and residual.stride(-1) == 1)
    lock = fixup_locks(x.device) if fixup else out
    ssq = torch.empty(n_tiles, rows, device=x.device, dtype=torch.float32) if want_ssq else None
    assert norm_ssq is None or (norm_ssq.shape[1] == rows and norm_ssq.is_contiguous())
    n_parts = norm_ssq.shape[0] if norm_ssq is not None else 0
    pdl = pdl_choice(x.device, pdl, rows)
    prefetch = pdl if prefetch is None else pdl_choice(x.device, prefetch)
    _splitk_gemm[(n_tiles, split, m_tiles)](
        x,
        weight,
        out,
        part,
        lock,
        rows,
        n_out,
        k,
        k_per_split,
        n_out,
        split,
        x.stride(0),
        weight.stride(0),
        out.stride(0),
        s_ps,
        s_pm,
        n_pad,
        residual if residual is not None else out,
        ssq if ssq is not None else part,
        norm_ssq if norm_ssq is not None else part,
        n_parts,
        residual.stride(0) if residual is not None else 0,
        eps,
        SPLIT=split > 1,
        FIXUP=fixup,
        SWIGLU=swiglu,
        IEEE=fp32,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP=_group(block_m * block_n // (32 * num_warps)),
        PDL=pdl,
        PREFETCH_LINES=lines_for(k_per_split, weight.element_size()) if prefetch else 0,
        ELEM_BYTES=weight.element_size(),
        RES=residual is not None,
        SSQ=ssq is not None,
        RSTD_PARTS=triton.next_power_of_2(n_parts) if n_parts else 0,
        num_warps=num_warps,
        num_stages=num_stages,
        **launch_kwargs(pdl),
    )
    if split > 1 and not fixup:
        # small tiles: many programs share the reduction's reads
        sum_n = min(64, block_n)
        sum_m = 16
        _splitk_sum[(n_pad // sum_n, m_tiles * block_m // sum_m)](
            part,
            out,
            rows,
            n_out,
            split,
            s_ps,
            s_pm,
            n_pad,
            out.stride(0),
            SWIGLU=swiglu,
            BLOCK_M=sum_m,
            BLOCK_N=sum_n,
            GROUP=_group(sum_m * sum_n // 64),
            num_warps=2,
        )
    return out, ssq


__all__ = [
    "SPLITK_SHAPES",
    "SplitKConfig",
    "fixup_locks",
    "last_to_arrive",
    "linear_residual_splitk",
    "residual_out",
    "linear_splitk",
    "splitk_config",
    "splitk_for",
]
