"""Triton Mamba-1 kernels: the chunked selective scan (prefill) and the selective state update (decode).

Prefill scan, three launches, parallel over (sequence, time chunk, channel block):

1. ``_chunk_state``: every chunk but the last runs the recurrence from a zero state and keeps its end
   state and the sum of its step sizes (the chunk's decay is exp(A * sum dt)).
2. ``_chunk_combine``: per sequence, walks its chunks in order and turns (decay, end state) pairs into each
   chunk's starting state, starting from the sequence's initial state (or zeros).
3. ``_chunk_output``: every chunk runs the recurrence again from its starting state and writes
   y = (C . h + D u) * silu(z); the sequence's last chunk writes the final state to its pool slot.

Inside a program one thread owns one channel and all d_state entries of its state (the state tile is
[N, BLOCK_D], reduced over N in registers) and steps through time sequentially; tokens are addressed by
strides, so the token-major layout the projections produce ([B, D, T] views with unit channel stride) is
read without copies. The state is fp32 whatever the input dtype; decays use exp2 with A pre-scaled by
log2(e). A sequence is (start, length) in a batch row, so right-padded batches and packed varlen batches
(``cu_seqlens``) are the same launch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

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
def _chunk_state(
    u_ptr,
    dt_ptr,
    b_ptr,
    a2_ptr,
    dtb_ptr,
    seq_start_ptr,
    seq_len_ptr,
    end_ptr,
    dtsum_ptr,
    D,
    N,
    n_chunks,
    chunk_len,
    s_ub,
    s_ud,
    s_ut,
    s_db,
    s_dd,
    s_dt,
    s_bb,
    s_bn,
    s_bt,
    HAS_DT_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    EVEN_N: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    pid = tl.program_id(0)
    seq = pid // n_chunks
    c = pid % n_chunks
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    n1 = tl.arange(0, BLOCK_N)
    n = n1[:, None]
    dmask = d < D
    m = (n < N) & dmask
    start = tl.load(seq_start_ptr + seq).to(tl.int64)
    length = tl.load(seq_len_ptr + seq)
    # time indices are int64 so that t * stride cannot overflow on long packed batches
    t0 = c.to(tl.int64) * chunk_len
    t1 = tl.minimum(t0 + chunk_len, length)
    a2 = tl.load(a2_ptr + d * N + n, mask=m, other=0.0)
    dtb = tl.load(dtb_ptr + d, mask=dmask, other=0.0) if HAS_DT_BIAS else tl.zeros([1, BLOCK_D], tl.float32)
    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dts = tl.zeros([1, BLOCK_D], tl.float32)
    row = seq.to(tl.int64)
    u_row = u_ptr + row * s_ub + start * s_ut + d * s_ud
    dt_row = dt_ptr + row * s_db + start * s_dt + d * s_dd
    b_row = b_ptr + row * s_bb + start * s_bt
    # Only chunks 0 .. n_chunks-2 feed a later chunk; the last chunk's end state is never read.
    if (c < n_chunks - 1) & (t0 < t1):
        dt_n, u_n, b_n = _step_inputs(
            dt_row, u_row, b_row, t0, s_dt, s_ut, s_bt, s_bn, dmask, n1, N, EVEN_D, EVEN_N
        )
        for t in range(t0, t1):
            dt_c, u_c, b_c = dt_n, u_n, b_n
            # the next step's inputs load while this step computes; the index is clamped to the chunk, so
            # the loads need no per-step mask
            tn = tl.minimum(t + 1, t1 - 1)
            dt_n, u_n, b_n = _step_inputs(
                dt_row, u_row, b_row, tn, s_dt, s_ut, s_bt, s_bn, dmask, n1, N, EVEN_D, EVEN_N
            )
            dt = dt_c.to(tl.float32) + dtb
            if SOFTPLUS:
                dt = _softplus(dt, FAST_LOG)
            h = tl.exp2(dt * a2) * h + (dt * u_c.to(tl.float32)) * b_c.to(tl.float32)[:, None]
            dts += dt
    out = (row * n_chunks + c) * D
    tl.store(end_ptr + (out + d) * N + n, h, mask=m)
    tl.store(dtsum_ptr + out + d, dts, mask=dmask)


@triton.jit
def _step_inputs(dt_row, u_row, b_row, t, s_dt, s_ut, s_bt, s_bn, dmask, n1, N, EVEN_D, EVEN_N):
    """Step t's dt and u ([1, BLOCK_D]) and B ([BLOCK_N]: one row, the same for every channel)."""
    if EVEN_D:
        dt = tl.load(dt_row + t * s_dt)
        u = tl.load(u_row + t * s_ut)
    else:
        dt = tl.load(dt_row + t * s_dt, mask=dmask, other=0.0)
        u = tl.load(u_row + t * s_ut, mask=dmask, other=0.0)
    b = _vec_load(b_row + t * s_bt, n1, s_bn, N, EVEN_N)
    return dt, u, b


@triton.jit
def _vec_load(row_ptr, n1, s_n, N, EVEN_N):
    # one scalar row pointer plus compile-time offsets (s_n is specialised to 1 when unit-stride), so the
    # per-step address is a single add rather than one 64-bit add per state entry
    if EVEN_N:
        return tl.load(row_ptr + n1 * s_n)
    return tl.load(row_ptr + n1 * s_n, mask=n1 < N, other=0.0)


@triton.jit
def _chunk_combine(
    end_ptr,
    dtsum_ptr,
    a2_ptr,
    state_ptr,
    state_idx_ptr,
    has_init_ptr,
    D,
    N,
    n_chunks,
    s_ss,
    s_sd,
    s_sn,
    HAS_STATE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    m = (n < N)[:, None] & (d < D)[None, :]
    a2 = tl.load(a2_ptr + d[None, :] * N + n[:, None], mask=m, other=0.0)
    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if HAS_STATE:
        slot = tl.load(state_idx_ptr + seq).to(tl.int64)
        init = tl.load(has_init_ptr + seq)
        if (init != 0) & (slot >= 0):
            h = tl.load(state_ptr + slot * s_ss + d[None, :] * s_sd + n[:, None] * s_sn, mask=m, other=0.0)
            h = h.to(tl.float32)
    row = seq.to(tl.int64) * n_chunks
    # four chunks' (end state, dt sum) are requested together (the loads never depend on h), so the
    # sequential walk waits on one memory round trip per four chunks rather than per chunk
    for c0 in range(0, n_chunks, 4):
        e0, ds0 = _chunk_end(end_ptr, dtsum_ptr, row, c0, n_chunks, D, N, d, n, m)
        e1, ds1 = _chunk_end(end_ptr, dtsum_ptr, row, c0 + 1, n_chunks, D, N, d, n, m)
        e2, ds2 = _chunk_end(end_ptr, dtsum_ptr, row, c0 + 2, n_chunks, D, N, d, n, m)
        e3, ds3 = _chunk_end(end_ptr, dtsum_ptr, row, c0 + 3, n_chunks, D, N, d, n, m)
        h = _chunk_start(end_ptr, row, c0, n_chunks, D, N, d, n, m, h, e0, ds0, a2)
        h = _chunk_start(end_ptr, row, c0 + 1, n_chunks, D, N, d, n, m, h, e1, ds1, a2)
        h = _chunk_start(end_ptr, row, c0 + 2, n_chunks, D, N, d, n, m, h, e2, ds2, a2)
        h = _chunk_start(end_ptr, row, c0 + 3, n_chunks, D, N, d, n, m, h, e3, ds3, a2)


@triton.jit
def _chunk_end(end_ptr, dtsum_ptr, row, c, n_chunks, D, N, d, n, m):
    """Chunk c's end state (from a zero start) and step-size sum; zeros past the last chunk."""
    ok = (d * 0 + c) < n_chunks
    off = (row + c) * D
    e = tl.load(end_ptr + (off + d[None, :]) * N + n[:, None], mask=m & ok[None, :], other=0.0)
    ds = tl.load(dtsum_ptr + off + d, mask=(d < D) & ok, other=0.0)
    return e, ds


@triton.jit
def _chunk_start(end_ptr, row, c, n_chunks, D, N, d, n, m, h, e, ds, a2):
    """Store h as chunk c's starting state (over its end state, already read) and step over the chunk."""
    ok = (d * 0 + c) < n_chunks
    tl.store(end_ptr + ((row + c) * D + d[None, :]) * N + n[:, None], h, mask=m & ok[None, :])
    return tl.exp2(ds[None, :] * a2) * h + e


@triton.jit
def _chunk_output(
    u_ptr,
    dt_ptr,
    b_ptr,
    c_ptr,
    z_ptr,
    out_ptr,
    a2_ptr,
    dskip_ptr,
    dtb_ptr,
    seq_start_ptr,
    seq_len_ptr,
    init_ptr,
    state_ptr,
    state_idx_ptr,
    has_init_ptr,
    D,
    N,
    n_chunks,
    chunk_len,
    s_ub,
    s_ud,
    s_ut,
    s_db,
    s_dd,
    s_dt,
    s_bb,
    s_bn,
    s_bt,
    s_cb,
    s_cn,
    s_ct,
    s_zb,
    s_zd,
    s_zt,
    s_ob,
    s_od,
    s_ot,
    s_ss,
    s_sd,
    s_sn,
    HAS_DT_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_STATE: tl.constexpr,
    CHUNK_INIT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    EVEN_N: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    pid = tl.program_id(0)
    seq = pid // n_chunks
    c = pid % n_chunks
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    n1 = tl.arange(0, BLOCK_N)
    n = n1[:, None]
    dmask = d < D
    m = (n < N) & dmask
    start = tl.load(seq_start_ptr + seq).to(tl.int64)
    length = tl.load(seq_len_ptr + seq)
    t0 = c.to(tl.int64) * chunk_len
    t1 = tl.minimum(t0 + chunk_len, length)
    a2 = tl.load(a2_ptr + d * N + n, mask=m, other=0.0)
    dtb = tl.load(dtb_ptr + d, mask=dmask, other=0.0) if HAS_DT_BIAS else tl.zeros([1, BLOCK_D], tl.float32)
    dsk = tl.load(dskip_ptr + d, mask=dmask, other=0.0) if HAS_D else tl.zeros([1, BLOCK_D], tl.float32)
    row = seq.to(tl.int64)
    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    slot = row * 0 - 1
    if HAS_STATE:
        slot = tl.load(state_idx_ptr + seq).to(tl.int64)
    if CHUNK_INIT:
        h = tl.load(init_ptr + ((row * n_chunks + c) * D + d) * N + n, mask=m, other=0.0)
    elif HAS_STATE:
        init = tl.load(has_init_ptr + seq)
        if (init != 0) & (slot >= 0):
            h = tl.load(state_ptr + slot * s_ss + d * s_sd + n * s_sn, mask=m, other=0.0).to(tl.float32)
    u_row = u_ptr + row * s_ub + start * s_ut + d * s_ud
    dt_row = dt_ptr + row * s_db + start * s_dt + d * s_dd
    z_row = z_ptr + row * s_zb + start * s_zt + d * s_zd
    o_row = out_ptr + row * s_ob + start * s_ot + d * s_od
    b_row = b_ptr + row * s_bb + start * s_bt
    c_row = c_ptr + row * s_cb + start * s_ct
    if t0 < t1:
        dt_n, u_n, b_n = _step_inputs(
            dt_row, u_row, b_row, t0, s_dt, s_ut, s_bt, s_bn, dmask, n1, N, EVEN_D, EVEN_N
        )
        c_n = _vec_load(c_row + t0 * s_ct, n1, s_cn, N, EVEN_N)
        z_n = _row_load(z_row, t0, s_zt, dmask, EVEN_D) if HAS_Z else dt_n
        for t in range(t0, t1):
            dt_c, u_c, b_c, c_c, z_c = dt_n, u_n, b_n, c_n, z_n
            # the next step's inputs load while this step computes (software pipelining by hand); the
            # index is clamped to the chunk, so the loads need no per-step mask
            tn = tl.minimum(t + 1, t1 - 1)
            dt_n, u_n, b_n = _step_inputs(
                dt_row, u_row, b_row, tn, s_dt, s_ut, s_bt, s_bn, dmask, n1, N, EVEN_D, EVEN_N
            )
            c_n = _vec_load(c_row + tn * s_ct, n1, s_cn, N, EVEN_N)
            if HAS_Z:
                z_n = _row_load(z_row, tn, s_zt, dmask, EVEN_D)
            dt = dt_c.to(tl.float32) + dtb
            if SOFTPLUS:
                dt = _softplus(dt, FAST_LOG)
            u = u_c.to(tl.float32)
            h = tl.exp2(dt * a2) * h + (dt * u) * b_c.to(tl.float32)[:, None]
            y = tl.sum(h * c_c.to(tl.float32)[:, None], axis=0, keep_dims=True) + dsk * u
            if HAS_Z:
                zz = z_c.to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            op = o_row + t * s_ot
            if EVEN_D:
                tl.store(op, y.to(out_ptr.dtype.element_ty))
            else:
                tl.store(op, y.to(out_ptr.dtype.element_ty), mask=dmask)
    if HAS_STATE:
        last = tl.maximum(tl.cdiv(length, chunk_len) - 1, 0)
        if (c == last) & (slot >= 0):
            tl.store(state_ptr + slot * s_ss + d * s_sd + n * s_sn, h.to(state_ptr.dtype.element_ty), mask=m)


@triton.jit
def _row_load(row_ptr, t, s_t, dmask, EVEN_D):
    if EVEN_D:
        return tl.load(row_ptr + t * s_t)
    return tl.load(row_ptr + t * s_t, mask=dmask, other=0.0)


def _pick_chunks(num_seqs: int, dim: int, max_len: int, n_chunks: int | None) -> tuple[int, int]:
    """(chunks per sequence, chunk length): enough programs to fill the card, few enough chunks that the
    sequential combine stays short."""
    if max_len <= 0:
        return 1, 1
    if n_chunks is None:
        n_chunks = max(1, min(32, triton.cdiv(65536, max(1, num_seqs * dim)), triton.cdiv(max_len, 64)))
    chunk_len = triton.cdiv(max_len, n_chunks)
    return triton.cdiv(max_len, chunk_len), chunk_len


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
    seq_start,
    seq_len,
    num_seqs,
    max_len,
    out,
    n_chunks=None,
    block_d=None,
    num_warps=None,
):
    """u, delta, z, out: [R, D, T]-strided; B, C: [R, N, T]; sequence i is row i (or row 0 when packed,
    in which case the row strides passed are zero) columns seq_start[i] .. seq_start[i]+seq_len[i]-1."""
    dim, nst = A.shape
    dev = u.device
    a2 = (A.float() * LOG2E).contiguous()
    dtb = delta_bias.float().contiguous() if delta_bias is not None else a2
    dsk = D.float().contiguous() if D is not None else a2
    zz = z if z is not None else u
    has_state = ssm_state is not None
    if has_state:
        idx = (
            torch.arange(num_seqs, device=dev, dtype=torch.int32)
            if state_indices is None
            else state_indices.to(torch.int32)
        )
        init = (
            torch.ones(num_seqs, device=dev, dtype=torch.int32)
            if has_initial_state is None
            else has_initial_state.to(torch.int32)
        )
        st, s_st = ssm_state, ssm_state.stride()
    else:
        idx = init = seq_len
        st, s_st = a2, (0, 0, 0)
    n_chunks, chunk_len = _pick_chunks(num_seqs, dim, max_len, n_chunks)
    block_n = triton.next_power_of_2(nst)
    # From a sweep (bench/kernels_gpu.py --sweep): 256 channels (8 warps) a program wins on short
    # sequences; from 8K tokens up the block size matters by a few percent only.
    bd = block_d or (256 if max_len <= 4096 else 64)
    nw = num_warps or max(1, bd // 32)
    even = {"EVEN_D": dim % bd == 0, "EVEN_N": nst == block_n, "FAST_LOG": dev.type == "cuda"}
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
            u,
            delta,
            B,
            a2,
            dtb,
            seq_start,
            seq_len,
            end,
            dts,
            dim,
            nst,
            n_chunks,
            chunk_len,
            *su,
            *sdt,
            *sb,
            HAS_DT_BIAS=delta_bias is not None,
            SOFTPLUS=delta_softplus,
            BLOCK_D=bd,
            BLOCK_N=block_n,
            **even,
            num_warps=nw,
        )
        # the combine is a short sequential walk per channel block: narrow blocks spread it over many SMs
        # (8 programs of 256 channels streamed their chunk states from 8 SMs only)
        _chunk_combine[(num_seqs, triton.cdiv(dim, 32))](
            end,
            dts,
            a2,
            st,
            idx,
            init,
            dim,
            nst,
            n_chunks,
            *s_st,
            HAS_STATE=has_state,
            BLOCK_D=32,
            BLOCK_N=block_n,
            num_warps=1,
        )
    else:
        end = a2
    LAST_LAUNCH["output"] = _chunk_output[grid](
        u,
        delta,
        B,
        C,
        zz,
        out,
        a2,
        dsk,
        dtb,
        seq_start,
        seq_len,
        end,
        st,
        idx,
        init,
        dim,
        nst,
        n_chunks,
        chunk_len,
        *su,
        *sdt,
        *sb,
        *sc,
        *sz,
        *so,
        *s_st,
        HAS_DT_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_STATE=has_state,
        CHUNK_INIT=n_chunks > 1,
        BLOCK_D=bd,
        BLOCK_N=block_n,
        **even,
        num_warps=nw,
    )
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
    starts = torch.zeros(batch, device=u.device, dtype=torch.int32)
    lens = (
        torch.full((batch,), seqlen, device=u.device, dtype=torch.int32)
        if seq_lens is None
        else seq_lens.to(torch.int32)
    )
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
        starts,
        lens,
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
    starts = cu_seqlens[:-1].to(torch.int32)
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    if max_seqlen is None:
        max_seqlen = int(lens.max()) if num_seqs else 0
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
        starts,
        lens,
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
def _rms_vec(v, w_ptr, off, cnt, eps, BLOCK: tl.constexpr, DTYPE: tl.constexpr):
    """Jamba's RMSNorm of a short vector (fp32 math, cast to the model dtype before the weight)."""
    i = tl.arange(0, BLOCK)
    vf = v.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(vf * vf, axis=0) / cnt + eps)
    w = tl.load(w_ptr + i, mask=i < cnt, other=0.0).to(tl.float32)
    return (w * (vf * rstd).to(DTYPE).to(tl.float32)).to(DTYPE).to(tl.float32)


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
    CONV: tl.constexpr,
    CONV_W: tl.constexpr,
    CONV_BIAS: tl.constexpr,
    CONV_SILU: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r = tl.arange(0, BLOCK_R)
    n = tl.arange(0, BLOCK_N)
    dmask = d < D
    nmask = n < N
    dtype = x_ptr.dtype.element_ty
    # every load that does not depend on the dt/B/C norms is requested first, so the step waits on one
    # memory round trip instead of a chain of them
    slot = tl.load(idx_ptr + b).to(tl.int64)
    m = nmask[:, None] & dmask[None, :]
    sp = state_ptr + slot * s_ss + d[None, :] * s_sd + n[:, None] * s_sn
    h = tl.load(sp, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_x + d, mask=dmask, other=0.0)
    zz = tl.load(z_ptr + b * s_z + d, mask=dmask, other=0.0).to(tl.float32)
    a2 = tl.load(a2_ptr + d[None, :] * N + n[:, None], mask=m, other=0.0)
    dsk = tl.load(dsk_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    dtb = tl.load(dtb_ptr + d, mask=dmask, other=0.0)
    wdt = tl.load(wdt_ptr + d[:, None] * R + r[None, :], mask=dmask[:, None] & (r < R)[None, :], other=0.0)
    dt_raw = tl.load(xp_ptr + b * s_xp + r, mask=r < R, other=0.0)
    b_raw = tl.load(xp_ptr + b * s_xp + R + n, mask=nmask, other=0.0)
    c_raw = tl.load(xp_ptr + b * s_xp + R + N + n, mask=nmask, other=0.0)
    dtn = _rms_vec(dt_raw, dtw_ptr, 0, R, eps, BLOCK_R, dtype)
    bv = _rms_vec(b_raw, bw_ptr, 0, N, eps, BLOCK_N, dtype)
    cv = _rms_vec(c_raw, cw_ptr, 0, N, eps, BLOCK_N, dtype)
    dt = tl.sum(wdt.to(tl.float32) * dtn[None, :], axis=1).to(dtype).to(tl.float32)
    dt = _softplus(dt + dtb)
    if CONV:
        # x is the conv's new input: the conv output comes from the cached window, which is shifted here
        acc = tl.load(convw_ptr + d * CONV_W + (CONV_W - 1), mask=dmask, other=0.0).to(tl.float32) * x.to(
            tl.float32
        )
        cbase = cs_ptr + slot * s_css + d * s_csd
        for j in tl.static_range(CONV_W - 1):
            prev = tl.load(cbase + j * s_csw, mask=dmask, other=0.0)
            acc += tl.load(convw_ptr + d * CONV_W + j, mask=dmask, other=0.0).to(tl.float32) * prev.to(
                tl.float32
            )
            if j > 0:
                tl.store(cbase + (j - 1) * s_csw, prev, mask=dmask)
        tl.store(cbase + (CONV_W - 2) * s_csw, x.to(cs_ptr.dtype.element_ty), mask=dmask)
        if CONV_BIAS:
            acc += tl.load(cb_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        if CONV_SILU:
            acc = acc * tl.sigmoid(acc)
        x = acc.to(dtype)
    x = x.to(tl.float32)
    h = tl.exp2(dt[None, :] * a2) * h + (dt * x)[None, :] * bv[:, None]
    tl.store(sp, h.to(state_ptr.dtype.element_ty), mask=m)
    y = tl.sum(h * cv[:, None], axis=0) + x * dsk
    y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + b * s_o + d, y.to(out_ptr.dtype.element_ty), mask=dmask)


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
) -> torch.Tensor:
    """`reference.mamba_decode_ssm_ref`'s contract in one launch (``a2``: A * log2(e), precomputable).
    With ``conv_state``, x is the causal conv's new input and the conv update happens in the same launch."""
    conv = conv_state is not None
    if conv and (activation not in (None, "silu", "swish") or conv_weight.shape[-1] < 2):
        from .reference import causal_conv1d_update_ref

        x = causal_conv1d_update_ref(x, conv_state, conv_weight, conv_bias, activation, state_indices)
        conv = False
    batch, dim = x.shape
    rank = dt_proj_weight.shape[1]
    nst = A.shape[-1]
    a2 = A.float() * LOG2E if a2 is None else a2
    out = torch.empty_like(x) if out is None else out
    bd = 64
    _mamba_decode_ssm[(batch, triton.cdiv(dim, bd))](
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
        BLOCK_R=triton.next_power_of_2(rank),
        BLOCK_N=triton.next_power_of_2(nst),
        CONV=conv,
        CONV_W=conv_weight.shape[-1] if conv else 1,
        CONV_BIAS=conv and conv_bias is not None,
        CONV_SILU=conv and activation is not None,
        num_warps=2,
    )
    return out
