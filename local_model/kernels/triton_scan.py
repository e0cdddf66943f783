"""Triton Mamba-1 kernels: the chunked selective scan (prefill) and the selective state update (decode).

Prefill scan, three launches, parallel over (sequence, time chunk, channel block):

1. ``_chunk_state``: every chunk but the last runs the recurrence from a zero state and keeps its end
   state and the sum of its step sizes (the chunk's decay is exp(A * sum dt)).
2. ``_chunk_combine``: per (sequence, channel block), loads every chunk's (decay, end state) pair at once
   and turns them into each chunk's starting state with an associative scan of the affine maps
   h -> decay * h + end, starting from the sequence's initial state (or zeros).
3. ``_chunk_output``: every chunk runs the recurrence again from its starting state and writes
   y = (C . h + D u) * silu(z); the sequence's last chunk writes the final state to its pool slot.

Inside a program a thread owns one or two channels and all d_state entries of their states (the state
tile is [N, BLOCK_D], reduced over N in registers) and steps through time sequentially, with each step's
inputs loaded two steps ahead. B and C of a step are one vector shared by every channel (one wide load,
broadcast in registers), so the loop converts no layouts through shared memory. Tokens are addressed by
strides, so the token-major layout the projections produce ([B, D, T] views with unit channel stride) is
read without copies. The state is fp32 whatever the input dtype; decays use exp2 with A scaled by log2(e)
in the kernels. A sequence is a batch row (all rows ``T`` long, or ``seq_lens``) or a packed range of row 0
(``cu_seqlens``), read on the device, so no launch needs host-side index tensors.

Decode: ``_state_update`` (one token per row) and ``_mamba_decode_ssm``, the whole Mamba step after x_proj
(dt/B/C norms, dt_proj, conv window shift, state update, D skip, z gate), one program per channel block
and row block (`ssm_step_launch`: one row a program by default). Its tiles are [BLOCK_D, N] and [BLOCK_D];
dt_proj's slab is split into even and odd rank columns (each pair stays in one thread).
Programs of 16 rows with dt_proj as a tensor-core dot ran slower on the H100 at 16 and 64 rows (as fast at
one): bench/RESULTS.md, "MoE experts and the Mamba sublayer".
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .pdl import launch_kwargs, pdl_begin, pdl_choice

LOG2E = math.log2(math.e)
# The compiled kernels of the last prefill-scan launch (for benchmarks to read registers / spills).
LAST_LAUNCH: dict[str, object] = {}


@triton.jit
def _softplus(x, FAST_LOG: tl.constexpr = False):
    # F.softplus with threshold 20; log1p(e) for small e by its series (fp32 log(1 + e) loses it).
    # FAST_LOG (GPU only: the interpreter has no libdevice) takes log2 from the special-function unit
    # (~1e-7 relative) instead of libdevice's ~20-instruction polynomial, which sits in the scan's inner loop.
    e = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    if FAST_LOG:  # noqa: SIM108 (a constexpr branch: the interpreter must not trace libdevice)
        lg = libdevice.fast_log2f(1.0 + e) * 0.6931471805599453
    else:
        lg = tl.log(1.0 + e)
    lp = tl.where(e < 1e-4, e - 0.5 * e * e, lg)
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + lp)


@triton.jit
def _seq_bounds(seq, seq_ptr, T, SEQ_MODE: tl.constexpr):
    """(start, length) of sequence ``seq``: 0 = every row holds T tokens (``seq_ptr`` unused), 1 = row
    lengths in ``seq_ptr``, 2 = packed along time at ``seq_ptr[seq] .. seq_ptr[seq + 1]`` (cu_seqlens)."""
    if SEQ_MODE == 2:
        start = tl.load(seq_ptr + seq).to(tl.int64)
        length = (tl.load(seq_ptr + seq + 1).to(tl.int64) - start).to(tl.int32)
    elif SEQ_MODE == 1:
        start = (seq * 0).to(tl.int64)
        length = tl.load(seq_ptr + seq).to(tl.int32)
    else:
        start = (seq * 0).to(tl.int64)
        length = seq * 0 + T
    return start, length


@triton.jit
def _pool_slot(seq, idx_ptr, has_init_ptr, HAS_IDX: tl.constexpr, HAS_INIT: tl.constexpr):
    """The sequence's state-pool slot (its row when no index is given) and whether to start from it."""
    slot = tl.load(idx_ptr + seq).to(tl.int64) if HAS_IDX else seq.to(tl.int64)
    init = (tl.load(has_init_ptr + seq) != 0) & (slot >= 0) if HAS_INIT else slot >= 0
    return slot, init


@triton.jit
def _load_row(row_ptr, t, s_t, dmask, EVEN_D: tl.constexpr):
    """Step t of a per-channel input: a [1, BLOCK_D] row."""
    if EVEN_D:
        return tl.load(row_ptr + t * s_t)
    return tl.load(row_ptr + t * s_t, mask=dmask, other=0.0)


@triton.jit
def _load_vec(row_ptr, t, s_t, n1, s_n, N, EVEN_N: tl.constexpr):
    """Step t of B or C: one [BLOCK_N] vector, the same for every channel. A scalar row pointer plus
    compile-time offsets (s_n is specialised to 1 when unit-stride) makes it one wide load, broadcast over
    the channels in registers, with no per-element address arithmetic."""
    if EVEN_N:
        return tl.load(row_ptr + t * s_t + n1 * s_n)
    return tl.load(row_ptr + t * s_t + n1 * s_n, mask=n1 < N, other=0.0)


@triton.jit
def _step_dt(dt_raw, dtb, valid, SOFTPLUS: tl.constexpr, FAST_LOG: tl.constexpr):
    """The discretisation step size; 0 for a step past the chunk's end (decay 1, no input: h unchanged)."""
    dt = dt_raw.to(tl.float32) + dtb
    if SOFTPLUS:
        dt = _softplus(dt, FAST_LOG)
    return tl.where(valid, dt, 0.0)


@triton.jit
def _state_step(h, dts, dt_raw, u_raw, b_raw, a2, dtb, valid, SOFTPLUS: tl.constexpr, FAST_LOG: tl.constexpr):
    dt = _step_dt(dt_raw, dtb, valid, SOFTPLUS, FAST_LOG)
    h = tl.exp2(dt * a2) * h + (dt * u_raw.to(tl.float32)) * b_raw.to(tl.float32)[:, None]
    return h, dts + dt


@triton.jit
def _chunk_state(
    u_ptr, dt_ptr, b_ptr, a_ptr, dtb_ptr, seq_ptr, end_ptr, dtsum_ptr,
    D, N, T, n_chunks, chunk_len,
    s_ub, s_ud, s_ut, s_db, s_dd, s_dt, s_bb, s_bn, s_bt,
    HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SEQ_MODE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr,
    FAST_LOG: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    seq = pid // n_chunks
    c = pid % n_chunks
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    n1 = tl.arange(0, BLOCK_N)
    n = n1[:, None]
    dmask = d < D
    m = (n < N) & dmask
    start, length = _seq_bounds(seq, seq_ptr, T, SEQ_MODE)
    # time indices are int64 so that t * stride cannot overflow on long packed batches
    t0 = c.to(tl.int64) * chunk_len
    t1 = tl.minimum(t0 + chunk_len, length)
    a2 = tl.load(a_ptr + d * N + n, mask=m, other=0.0) * 1.4426950408889634
    dtb = tl.load(dtb_ptr + d, mask=dmask, other=0.0) if HAS_DT_BIAS else tl.zeros([1, BLOCK_D], tl.float32)
    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dts = tl.zeros([1, BLOCK_D], tl.float32)
    row = seq.to(tl.int64)
    u_row = u_ptr + row * s_ub + start * s_ut + d * s_ud
    dt_row = dt_ptr + row * s_db + start * s_dt + d * s_dd
    b_row = b_ptr + row * s_bb + start * s_bt
    # Only chunks 0 .. n_chunks-2 feed a later chunk; the last chunk's end state is never read.
    if (c < n_chunks - 1) & (t0 < t1):
        # Inputs are loaded two steps ahead (software pipelining by hand: two register sets in flight, the
        # loop walks two steps an iteration, the second masked past the chunk's end) so the loads' latency
        # overlaps two steps of arithmetic; indices are clamped to the chunk, so loads need no mask.
        last = t1 - 1
        dt_a = _load_row(dt_row, t0, s_dt, dmask, EVEN_D)
        u_a = _load_row(u_row, t0, s_ut, dmask, EVEN_D)
        b_a = _load_vec(b_row, t0, s_bt, n1, s_bn, N, EVEN_N)
        tb = tl.minimum(t0 + 1, last)
        dt_b = _load_row(dt_row, tb, s_dt, dmask, EVEN_D)
        u_b = _load_row(u_row, tb, s_ut, dmask, EVEN_D)
        b_b = _load_vec(b_row, tb, s_bt, n1, s_bn, N, EVEN_N)
        for t in range(t0, t1, 2):
            dt_c, u_c, b_c = dt_a, u_a, b_a
            tn = tl.minimum(t + 2, last)
            dt_a = _load_row(dt_row, tn, s_dt, dmask, EVEN_D)
            u_a = _load_row(u_row, tn, s_ut, dmask, EVEN_D)
            b_a = _load_vec(b_row, tn, s_bt, n1, s_bn, N, EVEN_N)
            h, dts = _state_step(h, dts, dt_c, u_c, b_c, a2, dtb, dmask | True, SOFTPLUS, FAST_LOG)
            dt_c, u_c, b_c = dt_b, u_b, b_b
            tn = tl.minimum(t + 3, last)
            dt_b = _load_row(dt_row, tn, s_dt, dmask, EVEN_D)
            u_b = _load_row(u_row, tn, s_ut, dmask, EVEN_D)
            b_b = _load_vec(b_row, tn, s_bt, n1, s_bn, N, EVEN_N)
            ok = (d * 0 + t + 1) < t1
            h, dts = _state_step(h, dts, dt_c, u_c, b_c, a2, dtb, ok, SOFTPLUS, FAST_LOG)
    out = (row * n_chunks + c) * D
    tl.store(end_ptr + (out + d) * N + n, h, mask=m)
    tl.store(dtsum_ptr + out + d, dts, mask=dmask)


@triton.jit
def _combine_pairs(p1, q1, p2, q2):
    """Compose two affine maps h -> p h + q of consecutive chunks (first, then second)."""
    return p1 * p2, q1 * p2 + q2


@triton.jit
def _chunk_combine(
    end_ptr, dtsum_ptr, a_ptr, state_ptr, idx_ptr, has_init_ptr,
    D, N, n_chunks, s_ss, s_sd, s_sn,
    HAS_STATE: tl.constexpr, HAS_IDX: tl.constexpr, HAS_INIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Each chunk's starting state, in place of its end state: chunk c maps a starting state h to
    exp(A * dtsum_c) h + end_c, so the starts are an exclusive scan of those affine maps from the sequence's
    initial state. All chunks of a (sequence, channel block) are loaded at once and scanned in registers
    (one memory round trip instead of a walk over the chunks)."""
    seq = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)[:, None, None]
    n = tl.arange(0, BLOCK_N)[None, :, None]
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, None, :]
    nd = (n < N) & (d < D)
    row = seq.to(tl.int64) * n_chunks
    # chunk c's map is applied by the scan to produce the state *after* c, which is chunk c+1's start;
    # the last chunk's end state is never produced (nor needed)
    live = (c < n_chunks - 1) & nd
    a2 = tl.load(a_ptr + d * N + n, mask=nd, other=0.0) * 1.4426950408889634
    e = tl.load(end_ptr + ((row + c) * D + d) * N + n, mask=live, other=0.0)
    ds = tl.load(dtsum_ptr + (row + c) * D + d, mask=(c < n_chunks - 1) & (d < D), other=0.0)  # [C, 1, D]
    p, q = tl.associative_scan((tl.exp2(ds * a2), e), 0, _combine_pairs)
    h0 = tl.zeros([1, BLOCK_N, BLOCK_D], tl.float32)
    if HAS_STATE:
        slot, init = _pool_slot(seq, idx_ptr, has_init_ptr, HAS_IDX, HAS_INIT)
        if init:
            h0 = tl.load(state_ptr + slot * s_ss + d * s_sd + n * s_sn, mask=nd, other=0.0).to(tl.float32)
    starts = p * h0 + q
    # every thread's loads are consumed by the scan before any store overwrites an end state
    tl.debug_barrier()
    tl.store(end_ptr + ((row + c + 1) * D + d) * N + n, starts, mask=live)
    tl.store(end_ptr + (row * D + d) * N + n, h0, mask=nd)


@triton.jit
def _out_step(
    h, dt_raw, u_raw, b_raw, c_raw, z_raw, a2, dtb, dsk, valid, o_ptr, dmask,
    HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_LOG: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """One step of the recurrence from h, storing y = (C . h + D u) * silu(z) at ``o_ptr`` where valid."""
    dt = _step_dt(dt_raw, dtb, valid, SOFTPLUS, FAST_LOG)
    u = u_raw.to(tl.float32)
    h = tl.exp2(dt * a2) * h + (dt * u) * b_raw.to(tl.float32)[:, None]
    y = tl.sum(h * c_raw.to(tl.float32)[:, None], axis=0, keep_dims=True) + dsk * u
    if HAS_Z:
        zz = z_raw.to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    if EVEN_D:
        tl.store(o_ptr, y.to(o_ptr.dtype.element_ty), mask=valid)
    else:
        tl.store(o_ptr, y.to(o_ptr.dtype.element_ty), mask=valid & dmask)
    return h


@triton.jit
def _chunk_output(
    u_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, out_ptr, a_ptr, dskip_ptr, dtb_ptr, seq_ptr, init_ptr,
    state_ptr, idx_ptr, has_init_ptr,
    D, N, T, n_chunks, chunk_len,
    s_ub, s_ud, s_ut, s_db, s_dd, s_dt, s_bb, s_bn, s_bt, s_cb, s_cn, s_ct, s_zb, s_zd, s_zt,
    s_ob, s_od, s_ot, s_ss, s_sd, s_sn,
    HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_STATE: tl.constexpr, HAS_IDX: tl.constexpr, HAS_INIT: tl.constexpr, CHUNK_INIT: tl.constexpr,
    SEQ_MODE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
    EVEN_N: tl.constexpr, FAST_LOG: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    seq = pid // n_chunks
    c = pid % n_chunks
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    n1 = tl.arange(0, BLOCK_N)
    n = n1[:, None]
    dmask = d < D
    m = (n < N) & dmask
    start, length = _seq_bounds(seq, seq_ptr, T, SEQ_MODE)
    t0 = c.to(tl.int64) * chunk_len
    t1 = tl.minimum(t0 + chunk_len, length)
    a2 = tl.load(a_ptr + d * N + n, mask=m, other=0.0) * 1.4426950408889634
    dtb = tl.load(dtb_ptr + d, mask=dmask, other=0.0) if HAS_DT_BIAS else tl.zeros([1, BLOCK_D], tl.float32)
    dsk = tl.load(dskip_ptr + d, mask=dmask, other=0.0) if HAS_D else tl.zeros([1, BLOCK_D], tl.float32)
    row = seq.to(tl.int64)
    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    slot = row * 0 - 1
    if HAS_STATE:
        slot, init = _pool_slot(seq, idx_ptr, has_init_ptr, HAS_IDX, HAS_INIT)
    if CHUNK_INIT:
        h = tl.load(init_ptr + ((row * n_chunks + c) * D + d) * N + n, mask=m, other=0.0)
    elif HAS_STATE:  # noqa: SIM102 (HAS_STATE is a constexpr, init a device value: no `and` between them)
        if init:
            h = tl.load(state_ptr + slot * s_ss + d * s_sd + n * s_sn, mask=m, other=0.0).to(tl.float32)
    u_row = u_ptr + row * s_ub + start * s_ut + d * s_ud
    dt_row = dt_ptr + row * s_db + start * s_dt + d * s_dd
    z_row = z_ptr + row * s_zb + start * s_zt + d * s_zd
    o_row = out_ptr + row * s_ob + start * s_ot + d * s_od
    b_row = b_ptr + row * s_bb + start * s_bt
    c_row = c_ptr + row * s_cb + start * s_ct
    if t0 < t1:
        # as in _chunk_state: inputs two steps ahead, indices clamped to the chunk
        last = t1 - 1
        dt_a = _load_row(dt_row, t0, s_dt, dmask, EVEN_D)
        u_a = _load_row(u_row, t0, s_ut, dmask, EVEN_D)
        z_a = _load_row(z_row, t0, s_zt, dmask, EVEN_D) if HAS_Z else dt_a
        b_a = _load_vec(b_row, t0, s_bt, n1, s_bn, N, EVEN_N)
        c_a = _load_vec(c_row, t0, s_ct, n1, s_cn, N, EVEN_N)
        tb = tl.minimum(t0 + 1, last)
        dt_b = _load_row(dt_row, tb, s_dt, dmask, EVEN_D)
        u_b = _load_row(u_row, tb, s_ut, dmask, EVEN_D)
        z_b = _load_row(z_row, tb, s_zt, dmask, EVEN_D) if HAS_Z else dt_b
        b_b = _load_vec(b_row, tb, s_bt, n1, s_bn, N, EVEN_N)
        c_b = _load_vec(c_row, tb, s_ct, n1, s_cn, N, EVEN_N)
        for t in range(t0, t1, 2):
            dt_c, u_c, z_c, b_c, c_c = dt_a, u_a, z_a, b_a, c_a
            tn = tl.minimum(t + 2, last)
            dt_a = _load_row(dt_row, tn, s_dt, dmask, EVEN_D)
            u_a = _load_row(u_row, tn, s_ut, dmask, EVEN_D)
            if HAS_Z:
                z_a = _load_row(z_row, tn, s_zt, dmask, EVEN_D)
            b_a = _load_vec(b_row, tn, s_bt, n1, s_bn, N, EVEN_N)
            c_a = _load_vec(c_row, tn, s_ct, n1, s_cn, N, EVEN_N)
            h = _out_step(
                h, dt_c, u_c, b_c, c_c, z_c, a2, dtb, dsk, dmask | True, o_row + t * s_ot, dmask,
                HAS_Z, SOFTPLUS, FAST_LOG, EVEN_D,
            )  # fmt: skip
            dt_c, u_c, z_c, b_c, c_c = dt_b, u_b, z_b, b_b, c_b
            tn = tl.minimum(t + 3, last)
            dt_b = _load_row(dt_row, tn, s_dt, dmask, EVEN_D)
            u_b = _load_row(u_row, tn, s_ut, dmask, EVEN_D)
            if HAS_Z:
                z_b = _load_row(z_row, tn, s_zt, dmask, EVEN_D)
            b_b = _load_vec(b_row, tn, s_bt, n1, s_bn, N, EVEN_N)
            c_b = _load_vec(c_row, tn, s_ct, n1, s_cn, N, EVEN_N)
            ok = (d * 0 + t + 1) < t1
            h = _out_step(
                h, dt_c, u_c, b_c, c_c, z_c, a2, dtb, dsk, ok, o_row + (t + 1) * s_ot, dmask,
                HAS_Z, SOFTPLUS, FAST_LOG, EVEN_D,
            )  # fmt: skip
    if HAS_STATE:
        last_chunk = tl.maximum(tl.cdiv(length, chunk_len) - 1, 0)
        if (c == last_chunk) & (slot >= 0):
            tl.store(state_ptr + slot * s_ss + d * s_sd + n * s_sn, h.to(state_ptr.dtype.element_ty), mask=m)


def _pick_chunks(num_seqs: int, dim: int, max_len: int, n_chunks: int | None) -> tuple[int, int]:
    """(chunks per sequence, chunk length): enough programs to fill the card, few enough chunks that the
    state pass (which repeats the recurrence over all chunks but the last) stays a small share."""
    if max_len <= 0:
        return 1, 1
    if n_chunks is None:
        # ~128K (channel, chunk) pairs: from a sweep on the H100 (bench/kernels_gpu.py --sweep), 2x the chunks
        # of a 64K target was 4-17% faster at B*D >= 8K; chunks of at least 64 steps
        n_chunks = max(1, min(32, triton.cdiv(131072, max(1, num_seqs * dim)), triton.cdiv(max_len, 64)))
    chunk_len = triton.cdiv(max_len, min(n_chunks, MAX_CHUNKS))
    return triton.cdiv(max_len, chunk_len), chunk_len


# The combine holds every chunk of a channel block in registers.
MAX_CHUNKS = 256


def _launch_scan(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    ssm_state,
    state_indices,
    has_initial_state,
    cu_seqlens,
    seq_lens,
    num_seqs,
    max_len,
    out,
    n_chunks=None,
    block_d=None,
    num_warps=None,
):
    """u, delta, z, out: [R, D, T]-strided; B, C: [R, N, T]. Sequences are either rows (all ``max_len``
    long, or ``seq_lens[i]``) or, with ``cu_seqlens``, packed along time in row 0 (the row strides passed are
    then zero)."""
    dim, nst = A.shape
    dev = u.device
    A = A if A.dtype == torch.float32 and A.is_contiguous() else A.float().contiguous()
    dtb = delta_bias if delta_bias is None or delta_bias.dtype == torch.float32 else delta_bias.float()
    dsk = D if D is None or D.dtype == torch.float32 else D.float()
    zz = z if z is not None else u
    has_state = ssm_state is not None
    st, s_st = (ssm_state, ssm_state.stride()) if has_state else (A, (0, 0, 0))
    seq_mode = 2 if cu_seqlens is not None else (1 if seq_lens is not None else 0)
    seq_arg = cu_seqlens if cu_seqlens is not None else (seq_lens if seq_lens is not None else A)
    idx = state_indices if state_indices is not None else A
    init = has_initial_state if has_initial_state is not None else A
    flags = {
        "HAS_IDX": state_indices is not None,
        "HAS_INIT": has_initial_state is not None,
    }
    n_chunks, chunk_len = _pick_chunks(num_seqs, dim, max_len, n_chunks)
    block_n = triton.next_power_of_2(nst)
    # From the sweep: one-warp programs of 64 channels (two a thread) were fastest on every anchor shape
    bd = block_d or 64
    nw = num_warps or max(1, bd // 64)
    common = {
        "BLOCK_D": bd,
        "BLOCK_N": block_n,
        "EVEN_D": dim % bd == 0,
        "EVEN_N": nst == block_n,
        "FAST_LOG": dev.type == "cuda",
        "SEQ_MODE": seq_mode,
    }
    grid = (num_seqs * n_chunks, triton.cdiv(dim, bd))
    su = _row_strides(u, packed=u.dim() == 2)
    sdt = _row_strides(delta, packed=delta.dim() == 2)
    sb = _row_strides(B, packed=B.dim() == 2)
    sc = _row_strides(C, packed=C.dim() == 2)
    sz = _row_strides(zz, packed=zz.dim() == 2)
    so = _row_strides(out, packed=out.dim() == 2)
    if n_chunks > 1:
        end = torch.empty(num_seqs * n_chunks * dim * nst, device=dev, dtype=torch.float32)
        dts = torch.empty(num_seqs * n_chunks * dim, device=dev, dtype=torch.float32)
        LAST_LAUNCH["state"] = _chunk_state[grid](
            u, delta, B, A, dtb if dtb is not None else A, seq_arg, end, dts,
            dim, nst, max_len, n_chunks, chunk_len, *su, *sdt, *sb,
            HAS_DT_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, num_warps=nw, **common,
        )  # fmt: skip
        block_c = triton.next_power_of_2(n_chunks)
        cbd = max(1, min(triton.next_power_of_2(dim), 2048 // (block_c * block_n)))
        _chunk_combine[(num_seqs, triton.cdiv(dim, cbd))](
            end, dts, A, st, idx, init, dim, nst, n_chunks, *s_st,
            HAS_STATE=has_state, BLOCK_C=block_c, BLOCK_D=cbd, BLOCK_N=block_n, num_warps=4, **flags,
        )  # fmt: skip
    else:
        end = A
    LAST_LAUNCH["output"] = _chunk_output[grid](
        u, delta, B, C, zz, out, A, dsk if dsk is not None else A, dtb if dtb is not None else A,
        seq_arg, end, st, idx, init,
        dim, nst, max_len, n_chunks, chunk_len, *su, *sdt, *sb, *sc, *sz, *so, *s_st,
        HAS_DT_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_STATE=has_state, CHUNK_INIT=n_chunks > 1, num_warps=nw, **flags, **common,
    )  # fmt: skip
    return out


def _row_strides(x: torch.Tensor, packed: bool) -> tuple[int, int, int]:
    """(row, channel, time) strides of a [R, C, T] tensor, or of a packed [C, T] one (row stride 0)."""
    if packed:
        return 0, x.stride(0), x.stride(1)
    return x.stride(0), x.stride(1), x.stride(2)


def _token_major(x: torch.Tensor | None) -> torch.Tensor | None:
    """The same [R, C, T] values with unit channel stride (a copy only if time is the unit stride)."""
    if x is None or x.stride(1) == 1 or x.stride(2) != 1:
        return x
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def selective_scan(
    *,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    ssm_state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
    n_chunks: int | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """`reference.selective_scan_ref`'s contract (right-padded [B, D, T] rows, optional seq_lens and pool).

    Returns y as a [B, D, T] view of a token-major [B, T, D] tensor (what the out projection reads).
    """
    batch, dim, seqlen = u.shape
    if seqlen > 1:
        # Time-contiguous inputs ([B, D, T] with unit time stride) make every per-step load touch one cache
        # line per channel; one transposing copy to the token-major layout the kernel streams costs less.
        u, delta, z, B, C = (_token_major(t) for t in (u, delta, z, B, C))
    out = torch.empty(batch, seqlen, dim, device=u.device, dtype=u.dtype).transpose(1, 2)
    return _launch_scan(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        delta_softplus,
        ssm_state,
        state_indices,
        None,
        None,
        seq_lens,
        batch,
        seqlen,
        out,
        n_chunks=n_chunks,
        block_d=block_d,
        num_warps=num_warps,
    )


def selective_scan_varlen(
    *,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    cu_seqlens: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    ssm_state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    has_initial_state: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    n_chunks: int | None = None,
) -> torch.Tensor:
    """`reference.selective_scan_varlen_ref`'s contract: sequences packed along time ([D, T_total]).

    ``max_seqlen`` (a host int) avoids reading the lengths back from the device.
    """
    dim, total = u.shape
    num_seqs = cu_seqlens.shape[0] - 1
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if num_seqs else 0
    out = torch.empty(total, dim, device=u.device, dtype=u.dtype).t()
    return _launch_scan(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        delta_softplus,
        ssm_state,
        state_indices,
        has_initial_state,
        cu_seqlens,
        None,
        num_seqs,
        max_seqlen,
        out,
        n_chunks=n_chunks,
    )


# ============================================================================ decode: selective state update


@triton.jit
def _state_update(
    state_ptr,
    x_ptr,
    dt_ptr,
    a2_ptr,
    b_ptr,
    c_ptr,
    dskip_ptr,
    z_ptr,
    dtb_ptr,
    idx_ptr,
    out_ptr,
    D,
    N,
    s_ss,
    s_sd,
    s_sn,
    s_xb,
    s_xd,
    s_dtb,
    s_dtd,
    s_bb,
    s_bn,
    s_cb,
    s_cn,
    s_zb,
    s_zd,
    s_ob,
    s_od,
    HAS_DT_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dmask = d < D
    nmask = n < N
    m = nmask[:, None] & dmask[None, :]
    slot = tl.load(idx_ptr + b).to(tl.int64)
    if slot >= 0:  # a negative slot marks a padding row (CUDA-graph buckets): nothing to read or write
        sp = state_ptr + slot * s_ss + d[None, :] * s_sd + n[:, None] * s_sn
        h = tl.load(sp, mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + b * s_xb + d * s_xd, mask=dmask, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + b * s_dtb + d * s_dtd, mask=dmask, other=0.0).to(tl.float32)
        if HAS_DT_BIAS:
            dt += tl.load(dtb_ptr + d, mask=dmask, other=0.0)
        if SOFTPLUS:
            dt = _softplus(dt)
        a2 = tl.load(a2_ptr + d[None, :] * N + n[:, None], mask=m, other=0.0)
        bv = tl.load(b_ptr + b * s_bb + n * s_bn, mask=nmask, other=0.0).to(tl.float32)
        cv = tl.load(c_ptr + b * s_cb + n * s_cn, mask=nmask, other=0.0).to(tl.float32)
        h = tl.exp2(dt[None, :] * a2) * h + (dt * x)[None, :] * bv[:, None]
        tl.store(sp, h.to(state_ptr.dtype.element_ty), mask=m)
        y = tl.sum(h * cv[:, None], axis=0)
        if HAS_D:
            y += x * tl.load(dskip_ptr + d, mask=dmask, other=0.0)
        if HAS_Z:
            zz = tl.load(z_ptr + b * s_zb + d * s_zd, mask=dmask, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + b * s_ob + d * s_od, y.to(out_ptr.dtype.element_ty), mask=dmask)


def selective_state_update(
    *,
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    state_indices: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`reference.selective_state_update_ref`'s contract; a negative state index skips its row."""
    batch, dim = x.shape
    nst = A.shape[-1]
    a2 = A.float() * LOG2E
    idx = torch.arange(batch, device=x.device) if state_indices is None else state_indices
    out = torch.empty_like(x) if out is None else out
    zz = z if z is not None else x
    bd = 64
    _state_update[(batch, triton.cdiv(dim, bd))](
        ssm_state,
        x,
        dt,
        a2,
        B,
        C,
        D if D is not None else a2,
        zz,
        dt_bias.float() if dt_bias is not None else a2,
        idx,
        out,
        dim,
        nst,
        *ssm_state.stride(),
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        *zz.stride(),
        *out.stride(),
        HAS_DT_BIAS=dt_bias is not None,
        SOFTPLUS=dt_softplus,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        BLOCK_D=bd,
        BLOCK_N=triton.next_power_of_2(nst),
        num_warps=2,
    )
    return out


# ============================================================================ decode: fused Mamba SSM step


@triton.jit
def _rms_rows(v, w, inv_cnt, eps, DTYPE: tl.constexpr):
    """Jamba's RMSNorm of each row of a short [rows, cols] tile (fp32 math, cast to the model dtype before
    the fp32 weight ``w`` [1, cols], the result rounded to the model dtype and returned in fp32);
    ``inv_cnt`` is 1 / the real column count, and columns past it must hold zeros."""
    vf = v.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(vf * vf, axis=1) * inv_cnt + eps)
    return (w * (vf * rstd[:, None]).to(DTYPE).to(tl.float32)).to(DTYPE).to(tl.float32)


@triton.jit
def _silu(v, FAST: tl.constexpr):
    """v * sigmoid(v); FAST (GPU only) takes exp and the division from the special-function unit (no range
    fix-ups around MUFU.EX2 / MUFU.RCP)."""
    if FAST:
        return libdevice.fast_dividef(v, 1.0 + libdevice.fast_expf(-v))
    else:
        return v * tl.sigmoid(v)


@triton.jit
def _ssm_row_loads(
    row,
    nrows,
    xp_ptr,
    x_ptr,
    z_ptr,
    state_ptr,
    idx_ptr,
    cs_ptr,
    d,
    n,
    rk,
    dmask,
    nmask,
    rkmask,
    R,
    N,
    s_xp,
    s_x,
    s_z,
    s_ss,
    s_sd,
    s_sn,
    s_css,
    s_csd,
    s_csw,
    CONV: tl.constexpr,
    CONV_W: tl.constexpr,
):
    """Every load of one row of `_mamba_decode_ssm` (the slot, then everything else at once). A row past
    ``nrows`` or with a negative slot reads zeros (its inputs from row ``nrows - 1``, in bounds)."""
    row64 = tl.minimum(row, nrows - 1).to(tl.int64)
    slot = tl.where(row < nrows, tl.load(idx_ptr + row64).to(tl.int64), -1)
    # (a vector comparison: the interpreter's vector & scalar is not boolean)
    m1 = dmask & (slot + 0 * d >= 0)
    slot = tl.maximum(slot, 0)
    sp = state_ptr + slot * s_ss + d[:, None] * s_sd + n[None, :] * s_sn
    h = tl.load(sp, mask=m1[:, None] & nmask[None, :], other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row64 * s_x + d, mask=m1, other=0.0)
    zz = tl.load(z_ptr + row64 * s_z + d, mask=m1, other=0.0).to(tl.float32)
    xp_row = xp_ptr + row64 * s_xp
    dt_raw = tl.load(xp_row + rk, mask=rkmask, other=0.0)
    b_raw = tl.load(xp_row + R + n[None, :], mask=nmask[None, :], other=0.0)
    c_raw = tl.load(xp_row + R + N + n[None, :], mask=nmask[None, :], other=0.0)
    cbase = cs_ptr + slot * s_css + d * s_csd
    # the conv window (width <= 4: at most three cached inputs), read before anything is written
    w0 = tl.zeros([d.shape[0]], cs_ptr.dtype.element_ty)
    w1 = w0
    w2 = w0
    if CONV:
        w0 = tl.load(cbase, mask=m1, other=0.0)
        if CONV_W > 2:
            w1 = tl.load(cbase + s_csw, mask=m1, other=0.0)
        if CONV_W > 3:
            w2 = tl.load(cbase + 2 * s_csw, mask=m1, other=0.0)
    return m1, sp, h, x, zz, row64, dt_raw, b_raw, c_raw, cbase, w0, w1, w2


@triton.jit
def _mamba_decode_ssm(
    xp_ptr,
    x_ptr,
    z_ptr,
    state_ptr,
    idx_ptr,
    dtw_ptr,
    bw_ptr,
    cw_ptr,
    wdt_ptr,
    dtb_ptr,
    a2_ptr,
    dsk_ptr,
    out_ptr,
    convw_ptr,
    cb_ptr,
    cs_ptr,
    nrows,
    D,
    R,
    N,
    eps,
    s_xp,
    s_x,
    s_z,
    s_ss,
    s_sd,
    s_sn,
    s_o,
    s_css,
    s_csd,
    s_csw,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,
    CONV: tl.constexpr,
    CONV_W: tl.constexpr,
    CONV_BIAS: tl.constexpr,
    CONV_SILU: tl.constexpr,
    EVEN: tl.constexpr,
    FAST_LOG: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Program (channel block, row block): the step of ROWS consecutive rows x BLOCK_D channels.

    The channel block's weights (dt_proj slab, split into even and odd rank columns in fp32; A, D, dt bias,
    the norms' weights, the conv taps and bias) are loaded once, before `pdl_begin`, and serve every row of
    the program. A row's loads (the slot, then the state tile [BLOCK_D, N], conv window, x, z and x_proj row
    at once) are all issued before its first store, and the next row's before this row's stores, so a row's
    memory latency overlaps the previous row's arithmetic. Tiles are [BLOCK_D, N] (state, A), [BLOCK_D, R/2]
    (the dt_proj halves) and [BLOCK_D] (channels); the rank and d_state vectors of a row are [1, R] / [1, N]
    tiles broadcast over the channels. A row with a negative slot reads zeros, writes no state and outputs zeros; rows past ``nrows``
    write nothing."""
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    row0 = tl.program_id(1) * ROWS
    n = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_R)[None, :]
    if EVEN:  # whole channel blocks, d_state and dt_rank powers of two, dense rows: only rows are masked
        dmask = tl.full([BLOCK_D], True, tl.int1)
        nmask = tl.full([BLOCK_N], True, tl.int1)
        rkmask = tl.full([1, BLOCK_R], True, tl.int1)
        inv_r = 1.0 / BLOCK_R
        inv_n = 1.0 / BLOCK_N
        # row strides known at compile time (EVEN also means dense weights and state rows): one base
        # address a tile, immediate offsets
        w_rs: tl.constexpr = BLOCK_R
        a_rs: tl.constexpr = BLOCK_N
        sd: tl.constexpr = BLOCK_N
        sn: tl.constexpr = 1
        csd: tl.constexpr = CONV_W - 1
        csw: tl.constexpr = 1
    else:
        dmask = d < D
        nmask = n < N
        rkmask = rk < R
        inv_r = 1.0 / R
        inv_n = 1.0 / N
        w_rs = R
        a_rs = N
        sd = s_sd
        sn = s_sn
        csd = s_csd
        csw = s_csw
    dtype = x_ptr.dtype.element_ty
    # weights (never written by the step), once for all the program's rows
    wdt = tl.load(wdt_ptr + d[:, None] * w_rs + rk, mask=dmask[:, None] & rkmask, other=0.0).to(tl.float32)
    wdt_e, wdt_o = tl.split(tl.reshape(wdt, [BLOCK_D, BLOCK_R // 2, 2]))
    a2 = tl.load(a2_ptr + d[:, None] * a_rs + n[None, :], mask=dmask[:, None] & nmask[None, :], other=0.0)
    dsk = tl.load(dsk_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    dtb = tl.load(dtb_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    dtw = tl.load(dtw_ptr + rk, mask=rkmask, other=0.0).to(tl.float32)
    bw = tl.load(bw_ptr + n[None, :], mask=nmask[None, :], other=0.0).to(tl.float32)
    cw = tl.load(cw_ptr + n[None, :], mask=nmask[None, :], other=0.0).to(tl.float32)
    if CONV:
        tap_x = tl.load(convw_ptr + d * CONV_W + (CONV_W - 1), mask=dmask, other=0.0).to(tl.float32)
        tap0 = tl.load(convw_ptr + d * CONV_W, mask=dmask, other=0.0).to(tl.float32)
        tap1 = tap0
        tap2 = tap0
        if CONV_W > 2:
            tap1 = tl.load(convw_ptr + d * CONV_W + 1, mask=dmask, other=0.0).to(tl.float32)
        if CONV_W > 3:
            tap2 = tl.load(convw_ptr + d * CONV_W + 2, mask=dmask, other=0.0).to(tl.float32)
        if CONV_BIAS:
            cbias = tl.load(cb_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    pdl_begin(PDL)
    nxt = _ssm_row_loads(
        row0, nrows, xp_ptr, x_ptr, z_ptr, state_ptr, idx_ptr, cs_ptr, d, n, rk, dmask, nmask, rkmask, R, N,
        s_xp, s_x, s_z, s_ss, sd, sn, s_css, csd, csw, CONV, CONV_W,
    )  # fmt: skip
    for i in tl.static_range(ROWS):
        m1, sp, h, x, zz, row64, dt_raw, b_raw, c_raw, cbase, w0, w1, w2 = nxt
        if i + 1 < ROWS:  # the next row's loads go out before this row's stores
            nxt = _ssm_row_loads(
                row0 + i + 1, nrows, xp_ptr, x_ptr, z_ptr, state_ptr, idx_ptr, cs_ptr, d, n, rk, dmask,
                nmask, rkmask, R, N, s_xp, s_x, s_z, s_ss, sd, sn, s_css, csd, csw, CONV, CONV_W,
            )  # fmt: skip
        dtn = _rms_rows(dt_raw, dtw, inv_r, eps, dtype)
        dtn_e, dtn_o = tl.split(tl.reshape(dtn, [1, BLOCK_R // 2, 2]))
        bv = _rms_rows(b_raw, bw, inv_n, eps, dtype)
        cv = _rms_rows(c_raw, cw, inv_n, eps, dtype)
        # dt_proj: each channel's rank sum, even and odd columns in the same registers
        dt = tl.sum(wdt_e * dtn_e + wdt_o * dtn_o, axis=1)
        dt = _softplus(dt.to(dtype).to(tl.float32) + dtb, FAST_LOG)
        if CONV:
            # x is the conv's new input; the window moves one step (all its entries were read above)
            acc = tap_x * x.to(tl.float32) + tap0 * w0.to(tl.float32)
            if CONV_W > 2:
                acc += tap1 * w1.to(tl.float32)
                tl.store(cbase, w1, mask=m1)
            if CONV_W > 3:
                acc += tap2 * w2.to(tl.float32)
                tl.store(cbase + csw, w2, mask=m1)
            tl.store(cbase + (CONV_W - 2) * csw, x.to(cs_ptr.dtype.element_ty), mask=m1)
            if CONV_BIAS:
                acc += cbias
            if CONV_SILU:
                acc = _silu(acc, FAST_LOG)
            x = acc.to(dtype)
        x = x.to(tl.float32)
        h = tl.exp2(dt[:, None] * a2) * h + (dt * x)[:, None] * bv
        tl.store(sp, h.to(state_ptr.dtype.element_ty), mask=m1[:, None] & nmask[None, :])
        y = (tl.sum(h * cv, axis=1) + x * dsk) * _silu(zz, FAST_LOG)
        # a row with a negative slot outputs exact zeros: its x_proj row is whatever the buffer held (the
        # conv + x_proj launch skips it), which may be inf or NaN and would survive a multiply by zero
        y = tl.where(m1, y, 0.0)
        in_batch = d * 0 + row0 + i < nrows
        tl.store(out_ptr + row64 * s_o + d, y.to(out_ptr.dtype.element_ty), mask=dmask & in_batch)


def ssm_step_launch(rows: int) -> tuple[int, int, int]:
    """(BLOCK_D, num_warps, rows a program) of `mamba_decode_ssm` at ``rows`` rows, one row a program. At
    one row the step is a latency chain, so 32 channels on 4 warps (64 programs, the fewest instructions a
    warp: 481 in offline sm_90 SASS, Triton 3.6); from 2 rows 64 channels on 2 warps (each thread owns four
    channels, so a program's fixed work, the row's norms and the weight loads, is spread over twice the
    channels: 126 registers, 727 instructions a warp, 3.0M warp-instructions a layer at 64 rows against 6.1M
    for the previous kernel's launch). Programs of several rows share the weights in registers but save only
    ~20% of a row's instructions and take more registers; `bench/kernels_gpu.py --mamba-step` times them.
    In the 426M decode step on an H100 this kernel and launch made batch 64 1% faster than the previous
    one-row kernel (109.5K against 108.4K tok/s, `bench/local_model_gpu.py --splitk-ab`)."""
    return (32, 4, 1) if rows <= 1 else (64, 2, 1)


def mamba_decode_ssm(
    *,
    xproj: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    ssm_state: torch.Tensor,
    state_indices: torch.Tensor,
    dt_norm_weight: torch.Tensor,
    b_norm_weight: torch.Tensor,
    c_norm_weight: torch.Tensor,
    eps: float,
    dt_proj_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    out: torch.Tensor | None = None,
    a2: torch.Tensor | None = None,
    conv_state: torch.Tensor | None = None,
    conv_weight: torch.Tensor | None = None,
    conv_bias: torch.Tensor | None = None,
    activation: str | None = None,
    launch: tuple[int, ...] | None = None,
    pdl: bool | None = None,
) -> torch.Tensor:
    """`reference.mamba_decode_ssm_ref`'s contract in one launch (``a2``: A * log2(e), precomputable).
    With ``conv_state``, x is the causal conv's new input and the conv update happens in the same launch.
    ``launch``: (BLOCK_D, num_warps[, rows a program]), default `ssm_step_launch`; ``pdl``: default
    `pdl_enabled` for ``batch`` rows (a batch-1 step measured 1% faster without it)."""
    conv = conv_state is not None
    if conv and (activation not in (None, "silu", "swish") or not 2 <= conv_weight.shape[-1] <= 4):
        from .reference import causal_conv1d_update_ref

        x = causal_conv1d_update_ref(x, conv_state, conv_weight, conv_bias, activation, state_indices)
        conv = False
    batch, dim = x.shape
    rank = dt_proj_weight.shape[1]
    nst = A.shape[-1]
    a2 = A.float() * LOG2E if a2 is None else a2
    out = torch.empty_like(x) if out is None else out
    bd, warps, rows = (tuple(launch) + (1,))[:3] if launch else ssm_step_launch(batch)
    pdl = pdl_choice(x.device, pdl, batch)
    block_r = max(2, triton.next_power_of_2(rank))
    block_n = triton.next_power_of_2(nst)
    _mamba_decode_ssm[(triton.cdiv(dim, bd), triton.cdiv(batch, rows))](
        xproj,
        x,
        z,
        ssm_state,
        state_indices,
        dt_norm_weight,
        b_norm_weight,
        c_norm_weight,
        dt_proj_weight,
        dt_bias,
        a2,
        D,
        out,
        conv_weight.contiguous() if conv else a2,
        conv_bias if conv and conv_bias is not None else a2,
        conv_state if conv else a2,
        batch,
        dim,
        rank,
        nst,
        eps,
        xproj.stride(0),
        x.stride(0),
        z.stride(0),
        *ssm_state.stride(),
        out.stride(0),
        *(conv_state.stride() if conv else (0, 0, 0)),
        BLOCK_D=bd,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        ROWS=rows,
        CONV=conv,
        CONV_W=conv_weight.shape[-1] if conv else 1,
        CONV_BIAS=conv and conv_bias is not None,
        CONV_SILU=conv and activation is not None,
        EVEN=dim % bd == 0
        and nst == block_n
        and rank == block_r
        and dt_proj_weight.stride(0) == rank
        and ssm_state.stride()[1:] == (nst, 1)
        and (not conv or conv_state.stride()[1:] == (conv_weight.shape[-1] - 1, 1)),
        FAST_LOG=x.device.type == "cuda",
        PDL=pdl,
        num_warps=warps,
        **launch_kwargs(pdl),
    )
    return out
