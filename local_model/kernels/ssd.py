"""Triton kernels for the Mamba-2 (SSD) mixer: the chunked scan and the single-token state update.

Same keyword signatures and results as `local_model.mamba2.ssd_chunk_scan_ref` / `ssd_state_update_ref`,
so `Mamba2Kernels(chunk_scan=ssd_chunk_scan, state_update=ssd_state_update)` swaps them in. dt is
discretised (bias, softplus, limit) inside the kernels, in fp32, and the z gate is fused: the scan is five
launches and the single-token update one, with no elementwise PyTorch passes around them.

Chunked scan, the chunk-parallel SSD decomposition (chunks of ``chunk_size`` tokens, cumulative
log-decays a_l = sum_{i<=l} dt_i A inside a chunk):

1. ``_ssd_chunk_cumsum_kernel`` (batch, chunk, head-block): dt + bias, softplus, clamp, then the
   ``seq_lens``/tail mask (masked steps get dt = 0: no input, decay exp(0) = 1) and a_l, laid out
   [B, H, chunks, chunk_size].
2. ``_ssd_chunk_state_kernel`` (P x N block, batch x chunk, head): the state a chunk adds,
   ``S_c = sum_s exp(a_L - a_s) dt_s x_s^T B_s``, as one ``tl.dot`` per key block (operands in the input
   dtype, fp32 accumulation).
3. ``_ssd_state_passing_kernel`` (P*N block, batch, head): the only sequential part, over chunks:
   ``h_c = exp(a_L(c-1)) h_{c-1} + S_{c-1}`` from the pool row's initial state; writes each chunk's
   incoming state and the final state back to the pool row (``ssm_state[state_indices[b]]``).
4. ``_ssd_chunk_cb_kernel`` (row x key block, batch x chunk, group), only when a group has several heads:
   ``C_l . B_s`` once per chunk and group instead of once per head (fp32, lower block triangle).
5. ``_ssd_chunk_output_kernel`` (row block x P block, batch x chunk, head):
   ``y_l = sum_{s<=l} (C_l . B_s) exp(a_l - a_s) dt_s x_s + exp(a_l) C_l . h_c + D x_l``, times
   ``silu(z_l)`` when z is given.

Every exponent is non-positive (dt >= 0, A < 0), as in the reference. With fp32 inputs every ``tl.dot``
runs in IEEE fp32; with bf16/fp16 inputs the dot operands (decayed scores, decayed x, incoming states) are
rounded to the input dtype and accumulated in fp32; the state itself stays fp32. Runs on CPU tensors under ``TRITON_INTERPRET=1`` (the
tests do this).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..mamba2 import NO_DT_LIMIT


@triton.jit
def _softplus(v):
    """torch's softplus (threshold 20): log1p(exp(v)), accurate where exp(v) is tiny."""
    u = tl.exp(tl.minimum(v, 20.0))
    w = 1.0 + u
    log1p = tl.where(w == 1.0, u, tl.log(w) * (u / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(v > 20.0, v, log1p)


@triton.jit
def _ssd_chunk_cumsum_kernel(
    dt_ptr, bias_ptr, a_ptr, len_ptr, dtc_ptr, cs_ptr,
    T, H, CH, sdt_b, sdt_t, sc_b, sc_h, sc_c, dt_lo, dt_hi,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_LENS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    ci = tl.program_id(1)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_C)
    t = ci * CH + offs_c
    limit = T
    if HAS_LENS:
        limit = tl.minimum(tl.load(len_ptr + bi), T)
    hm = offs_h < H
    live = hm[:, None] & (offs_c[None, :] < CH) & (t[None, :] < limit)
    dt = tl.load(dt_ptr + bi * sdt_b + t[None, :] * sdt_t + offs_h[:, None], mask=live, other=0.0)  # [H, C]
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_h, mask=hm, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    dt = tl.where(live, dt, 0.0)  # padding and rows past seq_lens: no input, no decay
    a = tl.load(a_ptr + offs_h, mask=hm, other=0.0)
    cs = tl.cumsum(dt * a[:, None], axis=1)
    out = bi * sc_b + offs_h[:, None] * sc_h + ci * sc_c + offs_c[None, :]
    keep = hm[:, None] & (offs_c[None, :] < CH)
    tl.store(dtc_ptr + out, dt, mask=keep)
    tl.store(cs_ptr + out, cs, mask=keep)


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, b_ptr, dtc_ptr, cs_ptr, st_ptr,
    T, P, N, CH, NC, heads_per_group,
    sx_b, sx_t, sx_h, sb_b, sb_t, sb_g, sc_b, sc_h, sc_c, sst_b, sst_c, sst_h, sst_p,
    DOT_F32: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    n_blocks = tl.cdiv(N, BLOCK_N)
    pi = tl.program_id(0) // n_blocks
    ni = tl.program_id(0) % n_blocks
    bi = (tl.program_id(1) // NC).to(tl.int64)  # 64-bit offsets: long sequences pass 2**31 elements
    ci = (tl.program_id(1) % NC).to(tl.int64)
    hi = tl.program_id(2)
    gi = hi // heads_per_group
    offs_p = pi * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = ni * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    t0 = ci * CH
    limit = tl.minimum(CH, T - t0).to(tl.int32)
    c_row = bi * sc_b + hi * sc_h + ci * sc_c
    last = tl.load(cs_ptr + c_row + CH - 1)  # masked steps add 0, so this is the chunk's total decay
    x_base = x_ptr + bi * sx_b + t0 * sx_t + hi * sx_h
    b_base = b_ptr + bi * sb_b + t0 * sb_t + gi * sb_g
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, limit, BLOCK_K):
        k = k0 + offs_k
        km = k < limit
        xt = tl.load(
            x_base + k[None, :] * sx_t + offs_p[:, None], mask=km[None, :] & (offs_p[:, None] < P), other=0.0
        )
        bk = tl.load(
            b_base + k[:, None] * sb_t + offs_n[None, :], mask=km[:, None] & (offs_n[None, :] < N), other=0.0
        )
        dt = tl.load(dtc_ptr + c_row + k, mask=km, other=0.0)
        cs = tl.load(cs_ptr + c_row + k, mask=km, other=0.0)
        xs = xt.to(tl.float32) * (tl.exp(last - cs) * dt)[None, :]  # [P, K]: x^T decayed to the chunk's end
        if DOT_F32:
            acc += tl.dot(xs, bk.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(xs.to(bk.dtype), bk)
    dst = (st_ptr + bi * sst_b + ci * sst_c + hi * sst_h) + offs_p[:, None] * sst_p + offs_n[None, :]
    tl.store(dst, acc, mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))


@triton.jit
def _ssd_state_passing_kernel(
    st_ptr, prev_ptr, cs_ptr, pool_ptr, rows_ptr,
    PN, NC, CH, sst_b, sst_c, sst_h, spv_b, spv_c, spv_h, sc_b, sc_h, sc_c, sp_s, sp_h,
    HAS_POOL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bi = tl.program_id(1).to(tl.int64)
    hi = tl.program_id(2)
    m = offs < PN
    if HAS_POOL:
        row = tl.load(rows_ptr + bi)
        h = tl.load(pool_ptr + row * sp_s + hi * sp_h + offs, mask=m, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK,), dtype=tl.float32)
    st = (st_ptr + bi * sst_b + hi * sst_h) + offs
    prev = (prev_ptr + bi * spv_b + hi * spv_h) + offs
    cs = cs_ptr + bi * sc_b + hi * sc_h + CH - 1
    # one chunk ahead: the next chunk's loads are in flight while this one's update runs
    s = tl.load(st, mask=m, other=0.0)
    decay = tl.exp(tl.load(cs))
    for ci in range(NC):
        more = tl.minimum(NC - 1 - ci, 1)  # 0 on the last chunk: re-read it rather than past the end
        s_next = tl.load(st + more * sst_c, mask=m, other=0.0)
        decay_next = tl.exp(tl.load(cs + more * sc_c))
        tl.store(prev, h, mask=m)
        h = h * decay + s
        s, decay = s_next, decay_next
        st += sst_c
        prev += spv_c
        cs += sc_c
    if HAS_POOL:
        tl.store(pool_ptr + row * sp_s + hi * sp_h + offs, h, mask=m)


@triton.jit
def _ssd_chunk_cb_kernel(
    b_ptr, c_ptr, cb_ptr,
    T, N, CH, NC, sb_b, sb_t, sb_g, scc_b, scc_t, scc_g, scb_b, scb_c, scb_g, scb_m,
    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    k_blocks = tl.cdiv(CH, BLOCK_K)
    mi = tl.program_id(0) // k_blocks
    ki = tl.program_id(0) % k_blocks
    bi = (tl.program_id(1) // NC).to(tl.int64)  # 64-bit offsets: long sequences pass 2**31 elements
    ci = (tl.program_id(1) % NC).to(tl.int64)
    gi = tl.program_id(2)
    if ki * BLOCK_K >= (mi + 1) * BLOCK_M:  # above the diagonal: never read
        return
    t0 = ci * CH
    limit = tl.minimum(CH, T - t0).to(tl.int32)
    offs_m = mi * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = ki * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    nm = offs_n < N
    c_base = c_ptr + bi * scc_b + t0 * scc_t + gi * scc_g
    b_base = b_ptr + bi * sb_b + t0 * sb_t + gi * sb_g
    cm = tl.load(c_base + offs_m[:, None] * scc_t + offs_n[None, :], mask=(offs_m[:, None] < limit) & nm[None, :],
                 other=0.0)  # fmt: skip
    bk = tl.load(b_base + offs_k[:, None] * sb_t + offs_n[None, :], mask=(offs_k[:, None] < limit) & nm[None, :],
                 other=0.0)  # fmt: skip
    if DOT_F32:
        cb = tl.dot(cm.to(tl.float32), tl.trans(bk.to(tl.float32)), input_precision="ieee")
    else:
        cb = tl.dot(cm, tl.trans(bk.to(cm.dtype)))
    dst = (cb_ptr + bi * scb_b + ci * scb_c + gi * scb_g) + offs_m[:, None] * scb_m + offs_k[None, :]
    tl.store(dst, cb, mask=(offs_m[:, None] < CH) & (offs_k[None, :] < CH))


@triton.jit
def _ssd_chunk_output_kernel(
    x_ptr, b_ptr, c_ptr, z_ptr, d_ptr, dtc_ptr, cs_ptr, prev_ptr, cb_ptr, y_ptr,
    T, P, N, CH, NC, heads_per_group,
    sx_b, sx_t, sx_h, sb_b, sb_t, sb_g, scc_b, scc_t, scc_g, sz_b, sz_t, sz_h, sy_b, sy_t, sy_h,
    sc_b, sc_h, sc_c, spv_b, spv_c, spv_h, spv_p, scb_b, scb_c, scb_g, scb_m,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, DOT_F32: tl.constexpr, SHARED_CB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    p_blocks = tl.cdiv(P, BLOCK_P)
    mi = tl.program_id(0) // p_blocks
    pi = tl.program_id(0) % p_blocks
    bi = (tl.program_id(1) // NC).to(tl.int64)  # 64-bit offsets: long sequences pass 2**31 elements
    ci = (tl.program_id(1) % NC).to(tl.int64)
    hi = tl.program_id(2)
    gi = hi // heads_per_group
    t0 = ci * CH
    limit = tl.minimum(CH, T - t0).to(tl.int32)
    if mi * BLOCK_M >= limit:
        return
    offs_m = mi * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pi * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mm = offs_m < limit
    pm = offs_p < P
    nm = offs_n < N
    c_row = bi * sc_b + hi * sc_h + ci * sc_c
    # rows past the data read the chunk's flat tail of a (stored up to CH), so no exponent turns positive
    cs_m = tl.load(cs_ptr + c_row + offs_m, mask=offs_m < CH, other=0.0)
    c_base = c_ptr + bi * scc_b + t0 * scc_t + gi * scc_g
    cm = tl.load(
        c_base + offs_m[:, None] * scc_t + offs_n[None, :], mask=mm[:, None] & nm[None, :], other=0.0
    )
    hp = tl.load(  # [N, P]: the chunk's incoming state, transposed
        (prev_ptr + bi * spv_b + ci * spv_c + hi * spv_h) + offs_p[None, :] * spv_p + offs_n[:, None],
        mask=nm[:, None] & pm[None, :],
        other=0.0,
    )
    x_base = x_ptr + bi * sx_b + t0 * sx_t + hi * sx_h
    xm_mask = mm[:, None] & pm[None, :]
    # the epilogue's inputs are loaded up front so their latency hides behind the dots
    if HAS_D:
        xm = tl.load(x_base + offs_m[:, None] * sx_t + offs_p[None, :], mask=xm_mask, other=0.0)
    if HAS_Z:
        z_base = z_ptr + bi * sz_b + t0 * sz_t + hi * sz_h
        zm = tl.load(z_base + offs_m[:, None] * sz_t + offs_p[None, :], mask=xm_mask, other=0.0)
    if DOT_F32:
        cm = cm.to(tl.float32)
        acc = tl.dot(cm, hp.to(tl.float32), input_precision="ieee")
    else:
        acc = tl.dot(cm, hp.to(cm.dtype))
    acc = acc * tl.exp(cs_m)[:, None]
    if HAS_D:
        acc += xm.to(tl.float32) * tl.load(d_ptr + hi).to(tl.float32)
    b_base = b_ptr + bi * sb_b + t0 * sb_t + gi * sb_g
    cb_base = (cb_ptr + bi * scb_b + ci * scb_c + gi * scb_g) + offs_m[:, None] * scb_m
    for k0 in range(0, tl.minimum((mi + 1) * BLOCK_M, limit), BLOCK_K):
        k = k0 + offs_k
        km = k < limit
        xk = tl.load(x_base + k[:, None] * sx_t + offs_p[None, :], mask=km[:, None] & pm[None, :], other=0.0)
        dt = tl.load(dtc_ptr + c_row + k, mask=km, other=0.0)
        cs_k = tl.load(cs_ptr + c_row + k, mask=km, other=0.0)
        if SHARED_CB:  # C_l . B_s of the head's group, computed once per chunk by _ssd_chunk_cb_kernel
            cb = tl.load(cb_base + k[None, :], mask=(offs_m[:, None] < CH) & km[None, :], other=0.0)
        else:
            bk = tl.load(
                b_base + k[:, None] * sb_t + offs_n[None, :], mask=km[:, None] & nm[None, :], other=0.0
            )
            if DOT_F32:
                cb = tl.dot(cm, tl.trans(bk.to(tl.float32)), input_precision="ieee")
            else:
                cb = tl.dot(cm, tl.trans(bk.to(cm.dtype)))
        causal = offs_m[:, None] >= k[None, :]
        w = tl.exp(tl.where(causal, cs_m[:, None] - cs_k[None, :], float("-inf"))) * dt[None, :]  # [M, K]
        cb = tl.where(causal, cb * w, 0.0)
        if DOT_F32:
            acc += tl.dot(cb, xk.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(cb.to(xk.dtype), xk)
    if HAS_Z:
        zm = zm.to(tl.float32)
        acc = acc * (zm * tl.sigmoid(zm))
    tl.store(
        (y_ptr + bi * sy_b + t0 * sy_t + hi * sy_h) + offs_m[:, None] * sy_t + offs_p[None, :],
        acc,
        mask=xm_mask,
    )


@triton.jit
def _ssd_state_update_kernel(
    x_ptr, dt_ptr, bias_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, y_ptr, state_ptr, rows_ptr,
    P, N, heads_per_group, sx_b, sx_h, sdt_b, sb_b, sb_g, scc_b, scc_g, sz_b, sz_h, sy_b, sy_h, ss_s, ss_h, ss_p,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0)
    hi = tl.program_id(1)
    gi = hi // heads_per_group
    row = tl.load(rows_ptr + bi)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pm, nm = offs_p < P, offs_n < N
    s_ptrs = state_ptr + row * ss_s + hi * ss_h + offs_p[:, None] * ss_p + offs_n[None, :]
    h = tl.load(s_ptrs, mask=pm[:, None] & nm[None, :], other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + bi * sdt_b + hi).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + hi).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    a = tl.load(a_ptr + hi).to(tl.float32)
    x = tl.load(x_ptr + bi * sx_b + hi * sx_h + offs_p, mask=pm, other=0.0).to(tl.float32)
    bv = tl.load(b_ptr + bi * sb_b + gi * sb_g + offs_n, mask=nm, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + bi * scc_b + gi * scc_g + offs_n, mask=nm, other=0.0).to(tl.float32)
    h = h * tl.exp(dt * a) + (x * dt)[:, None] * bv[None, :]
    tl.store(s_ptrs, h, mask=pm[:, None] & nm[None, :])
    y = tl.sum(h * cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(d_ptr + hi).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + bi * sz_b + hi * sz_h + offs_p, mask=pm, other=0.0).to(tl.float32)
        y = y * (zv * tl.sigmoid(zv))
    tl.store(y_ptr + bi * sy_b + hi * sy_h + offs_p, y, mask=pm)


# Launch choices of the chunked scan, per input kind ("half": bf16/fp16 dots, "f32": IEEE fp32 dots).
# Compiled offline for sm_90 with Triton 3.6, strides divisible by 16 as the launcher specialises them: no
# register spills; state kernel 127 registers x 4 warps (3 per SM). The bf16 output kernel's 4 warps and
# 32-wide key blocks won the H100 sweep (bench/mamba2_gpu.py --ssd-sweep, which times alternatives by
# overriding entries): 13-19% faster than 8 warps x 64 on the four anchor shapes.
SCAN_TUNING: dict[str, dict[str, int]] = {
    "half": dict(state_p=64, state_n=128, state_k=64, state_warps=4, pass_block=1024, shared_cb=1, cb_warps=4,
                 out_m=64, out_p=64, out_k=32, out_warps=4, out_stages=3),
    "f32": dict(state_p=32, state_n=64, state_k=32, state_warps=4, pass_block=1024, shared_cb=1, cb_warps=8,
                out_m=32, out_p=32, out_k=32, out_warps=4, out_stages=3),
}  # fmt: skip


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _rows_of(state: torch.Tensor, state_indices: torch.Tensor | None, batch: int) -> torch.Tensor:
    if state_indices is None:
        return torch.arange(batch, device=state.device, dtype=torch.int64)
    return state_indices.to(torch.int64)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any strides except along the last dimension."""
    return t if t.stride(-1) == 1 else t.contiguous()


def ssd_chunk_scan(
    *,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] | None = None,
    ssm_state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of `local_model.mamba2.ssd_chunk_scan_ref` (same arguments, same result)."""
    batch, seqlen, heads, hd = x.shape
    groups, n = B.shape[2], B.shape[3]
    if seqlen == 0:
        return x.new_zeros(x.shape)
    dev = x.device
    ch = int(chunk_size)
    nc = triton.cdiv(seqlen, ch)
    dtc_in = _unit_last(dt)
    has_limit = dt_limit is not None and tuple(dt_limit) != NO_DT_LIMIT
    lo, hi = (float(dt_limit[0]), float(dt_limit[1])) if has_limit and dt_limit is not None else (0.0, 0.0)
    xc, Bc, Cc = _unit_last(x), _unit_last(B), _unit_last(C)
    af = A.float().contiguous()
    dot_f32 = not (x.dtype in (torch.bfloat16, torch.float16) and B.dtype == C.dtype == x.dtype)
    y = torch.empty(batch, seqlen, heads, hd, device=dev, dtype=x.dtype)

    # 1. masked dt and cumulative log-decays per chunk: [B, H, chunks, chunk_size]
    dtc = torch.empty(batch, heads, nc, ch, device=dev, dtype=torch.float32)
    cs = torch.empty_like(dtc)
    lens = seq_lens.to(device=dev, dtype=torch.int32) if seq_lens is not None else dtc
    block_c = triton.next_power_of_2(ch)
    block_h = max(1, min(triton.next_power_of_2(heads), 4096 // block_c))
    _ssd_chunk_cumsum_kernel[(batch, nc, triton.cdiv(heads, block_h))](
        dtc_in, dt_bias if dt_bias is not None else af, af, lens, dtc, cs, seqlen, heads, ch,
        dtc_in.stride(0), dtc_in.stride(1), cs.stride(0), cs.stride(1), cs.stride(2), lo, hi,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_LIMIT=has_limit, HAS_LENS=seq_lens is not None,
        BLOCK_H=block_h, BLOCK_C=block_c,
    )  # fmt: skip

    # 2. each chunk's own contribution to the state: [B, chunks, H, P, N] fp32
    tune = SCAN_TUNING["f32" if dot_f32 else "half"]
    states = torch.empty(batch, nc, heads, hd, n, device=dev, dtype=torch.float32)
    bp, bn, bk = (
        min(_block(hd), tune["state_p"]),
        min(_block(n), tune["state_n"]),
        min(_block(ch), tune["state_k"]),
    )
    grid = (triton.cdiv(hd, bp) * triton.cdiv(n, bn), batch * nc, heads)
    _ssd_chunk_state_kernel[grid](
        xc, Bc, dtc, cs, states, seqlen, hd, n, ch, nc, heads // groups,
        xc.stride(0), xc.stride(1), xc.stride(2), Bc.stride(0), Bc.stride(1), Bc.stride(2),
        cs.stride(0), cs.stride(1), cs.stride(2), states.stride(0), states.stride(1), states.stride(2),
        states.stride(3),
        DOT_F32=dot_f32, BLOCK_P=bp, BLOCK_N=bn, BLOCK_K=bk, num_warps=tune["state_warps"],
    )  # fmt: skip

    # 3. the incoming state of every chunk (in the dots' dtype), final state into the pool
    prev = torch.empty(batch, nc, heads, hd, n, device=dev, dtype=torch.float32 if dot_f32 else x.dtype)
    pool, rows = ssm_state, None
    if pool is not None:
        assert pool.is_contiguous()
        rows = _rows_of(pool, state_indices, batch)
    block = min(triton.next_power_of_2(hd * n), tune["pass_block"])
    _ssd_state_passing_kernel[(triton.cdiv(hd * n, block), batch, heads)](
        states, prev, cs, pool if pool is not None else states, rows if rows is not None else cs,
        hd * n, nc, ch, states.stride(0), states.stride(1), states.stride(2), prev.stride(0), prev.stride(1),
        prev.stride(2), cs.stride(0), cs.stride(1), cs.stride(2),
        pool.stride(0) if pool is not None else 0, pool.stride(1) if pool is not None else 0,
        HAS_POOL=pool is not None, BLOCK=block, num_warps=4,
    )  # fmt: skip

    # 4. outputs: intra-chunk scores, incoming state, D skip, z gate. C_l . B_s is shared by the heads of a
    # group: with several heads per group it is computed once per (chunk, group) into a [chunk, chunk] fp32
    # buffer (lower block triangle only), else inside the output kernel.
    bm, bpo, bk = (
        min(_block(ch), tune["out_m"]),
        min(_block(hd), tune["out_p"]),
        min(_block(ch), tune["out_k"]),
    )
    shared_cb = bool(tune["shared_cb"]) and heads > groups
    if shared_cb:
        cb = torch.empty(batch, nc, groups, ch, ch, device=dev, dtype=torch.float32)
        grid = (triton.cdiv(ch, bm) * triton.cdiv(ch, bk), batch * nc, groups)
        _ssd_chunk_cb_kernel[grid](
            Bc, Cc, cb, seqlen, n, ch, nc, Bc.stride(0), Bc.stride(1), Bc.stride(2), Cc.stride(0), Cc.stride(1),
            Cc.stride(2), cb.stride(0), cb.stride(1), cb.stride(2), cb.stride(3),
            DOT_F32=dot_f32, BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=_block(n), num_warps=tune["cb_warps"],
        )  # fmt: skip
    else:
        cb = cs  # not read
    zc = _unit_last(z) if z is not None else xc
    grid = (triton.cdiv(ch, bm) * triton.cdiv(hd, bpo), batch * nc, heads)
    _ssd_chunk_output_kernel[grid](
        xc, Bc, Cc, zc, D if D is not None else af, dtc, cs, prev, cb, y,
        seqlen, hd, n, ch, nc, heads // groups,
        xc.stride(0), xc.stride(1), xc.stride(2), Bc.stride(0), Bc.stride(1), Bc.stride(2),
        Cc.stride(0), Cc.stride(1), Cc.stride(2), zc.stride(0), zc.stride(1), zc.stride(2),
        y.stride(0), y.stride(1), y.stride(2), cs.stride(0), cs.stride(1), cs.stride(2),
        prev.stride(0), prev.stride(1), prev.stride(2), prev.stride(3),
        *(cb.stride()[:4] if shared_cb else (0, 0, 0, 0)),
        HAS_D=D is not None, HAS_Z=z is not None, DOT_F32=dot_f32, SHARED_CB=shared_cb,
        BLOCK_M=bm, BLOCK_P=bpo, BLOCK_K=bk, BLOCK_N=_block(n), num_warps=tune["out_warps"],
        num_stages=tune["out_stages"],
    )  # fmt: skip
    return y


def ssd_state_update(
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
) -> torch.Tensor:
    """Triton version of `local_model.mamba2.ssd_state_update_ref` (same arguments, same result)."""
    batch, heads, hd = x.shape
    groups, n = B.shape[1], B.shape[2]
    xc, Bc, Cc, dtc = _unit_last(x), _unit_last(B), _unit_last(C), _unit_last(dt)
    zc = _unit_last(z) if z is not None else xc
    y = torch.empty(batch, heads, hd, device=x.device, dtype=x.dtype)
    rows = _rows_of(ssm_state, state_indices, batch)
    assert ssm_state.is_contiguous()
    af = A if A.dtype == torch.float32 and A.is_contiguous() else A.float().contiguous()
    block_p = min(_block(hd), 16)  # P split over programs: batch x heads alone is too few to fill the card
    _ssd_state_update_kernel[(batch, heads, triton.cdiv(hd, block_p))](
        xc, dtc, dt_bias if dt_bias is not None else af, af, Bc, Cc, D if D is not None else af, zc, y,
        ssm_state, rows, hd, n, heads // groups, xc.stride(0), xc.stride(1), dtc.stride(0), Bc.stride(0),
        Bc.stride(1), Cc.stride(0), Cc.stride(1), zc.stride(0), zc.stride(1), y.stride(0), y.stride(1),
        ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_D=D is not None, HAS_Z=z is not None,
        BLOCK_P=block_p, BLOCK_N=_block(n),
    )  # fmt: skip
    return y
