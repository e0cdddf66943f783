"""Triton kernels for the Mamba-2 (SSD) mixer: the chunked scan and the single-token state update.

Same keyword signatures and results as `local_model.mamba2.ssd_chunk_scan_ref` / `ssd_state_update_ref`,
so `Mamba2Kernels(chunk_scan=ssd_chunk_scan, state_update=ssd_state_update)` swaps them in. dt is
discretised (bias, softplus, limit, ``seq_lens`` mask) in PyTorch first — one elementwise pass — so the
kernels see plain fp32 step sizes.

Chunked scan: one program per (batch row, head). It keeps the head's state h [P, N] in registers and
walks the sequence in blocks of ``BLOCK_L`` tokens; inside a block (cumulative log-decays a_l):
``y = (C B^T ∘ exp(a_l - a_s) [s <= l]) (dt x) + exp(a) ⊙ (C h^T) + D x`` and
``h <- exp(a_L) h + (dt exp(a_L - a) x)^T B`` — the same block decomposition as the reference, with the
intra-block products as ``tl.dot``. Initial and final states live in the slot pool
(``ssm_state[state_indices[b]]``), read and written in place. Runs on CPU tensors under
``TRITON_INTERPRET=1`` (the tests do this).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..mamba2 import _discretize_dt


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, y_ptr, state_ptr, rows_ptr,
    T, H, P, N, heads_per_group,
    sx_b, sx_t, sx_h, sdt_b, sdt_t, sb_b, sb_t, sb_g, sy_b, sy_t, sy_h, ss_s, ss_h, ss_p,
    HAS_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0)
    hi = tl.program_id(1)
    gi = hi // heads_per_group
    row = tl.load(rows_ptr + bi)
    offs_l = tl.arange(0, BLOCK_L)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pn_mask = (offs_p[:, None] < P) & (offs_n[None, :] < N)
    s_ptrs = state_ptr + row * ss_s + hi * ss_h + offs_p[:, None] * ss_p + offs_n[None, :]
    h = tl.load(s_ptrs, mask=pn_mask, other=0.0).to(tl.float32)  # [P, N]
    a = tl.load(a_ptr + hi).to(tl.float32)
    d = 0.0
    if HAS_D:
        d = tl.load(d_ptr + hi).to(tl.float32)
    causal = offs_l[:, None] >= offs_l[None, :]
    for t0 in range(0, T, BLOCK_L):
        t = t0 + offs_l
        tm = t < T
        dt = tl.load(dt_ptr + bi * sdt_b + t * sdt_t + hi, mask=tm, other=0.0)  # [L]
        cs = tl.cumsum(dt * a, axis=0)  # [L], non-increasing
        xl = tl.load(
            x_ptr + bi * sx_b + t[:, None] * sx_t + hi * sx_h + offs_p[None, :],
            mask=tm[:, None] & (offs_p[None, :] < P),
            other=0.0,
        ).to(tl.float32)  # [L, P]
        bl = tl.load(
            b_ptr + bi * sb_b + t[:, None] * sb_t + gi * sb_g + offs_n[None, :],
            mask=tm[:, None] & (offs_n[None, :] < N),
            other=0.0,
        ).to(tl.float32)  # [L, N]
        cl = tl.load(
            c_ptr + bi * sb_b + t[:, None] * sb_t + gi * sb_g + offs_n[None, :],
            mask=tm[:, None] & (offs_n[None, :] < N),
            other=0.0,
        ).to(tl.float32)  # [L, N]
        xdt = xl * dt[:, None]
        seg = tl.where(causal, cs[:, None] - cs[None, :], float("-inf"))
        scores = tl.dot(cl, tl.trans(bl), input_precision="ieee") * tl.exp(seg)  # [L, L]
        y = tl.dot(scores, xdt, input_precision="ieee")  # [L, P]
        y += tl.dot(cl, tl.trans(h), input_precision="ieee") * tl.exp(cs)[:, None]
        if HAS_D:
            y += xl * d
        tl.store(
            y_ptr + bi * sy_b + t[:, None] * sy_t + hi * sy_h + offs_p[None, :],
            y,
            mask=tm[:, None] & (offs_p[None, :] < P),
        )
        last = tl.sum(tl.where(offs_l == BLOCK_L - 1, cs, 0.0), axis=0)  # padded steps have dt = 0
        w = tl.exp(last - cs)  # [L]
        h = h * tl.exp(last) + tl.dot(tl.trans(xdt * w[:, None]), bl, input_precision="ieee")
    tl.store(s_ptrs, h, mask=pn_mask)


@triton.jit
def _ssd_state_update_kernel(
    x_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, y_ptr, state_ptr, rows_ptr,
    P, N, heads_per_group, sx_b, sx_h, sdt_b, sb_b, sb_g, sy_b, sy_h, ss_s, ss_h, ss_p,
    HAS_D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0)
    hi = tl.program_id(1)
    gi = hi // heads_per_group
    row = tl.load(rows_ptr + bi)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pm, nm = offs_p < P, offs_n < N
    s_ptrs = state_ptr + row * ss_s + hi * ss_h + offs_p[:, None] * ss_p + offs_n[None, :]
    h = tl.load(s_ptrs, mask=pm[:, None] & nm[None, :], other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + bi * sdt_b + hi)
    a = tl.load(a_ptr + hi).to(tl.float32)
    x = tl.load(x_ptr + bi * sx_b + hi * sx_h + offs_p, mask=pm, other=0.0).to(tl.float32)
    bv = tl.load(b_ptr + bi * sb_b + gi * sb_g + offs_n, mask=nm, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + bi * sb_b + gi * sb_g + offs_n, mask=nm, other=0.0).to(tl.float32)
    h = h * tl.exp(dt * a) + (x * dt)[:, None] * bv[None, :]
    tl.store(s_ptrs, h, mask=pm[:, None] & nm[None, :])
    y = tl.sum(h * cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(d_ptr + hi).to(tl.float32)
    tl.store(y_ptr + bi * sy_b + hi * sy_h + offs_p, y, mask=pm)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _rows_of(state: torch.Tensor, state_indices: torch.Tensor | None, batch: int) -> torch.Tensor:
    if state_indices is None:
        return torch.arange(batch, device=state.device, dtype=torch.int64)
    return state_indices.to(torch.int64)


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
    dtf = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    if seq_lens is not None:
        dtf = dtf * (torch.arange(seqlen, device=dt.device)[None, :] < seq_lens[:, None])[..., None]
    dtf = dtf.contiguous()
    xc, Bc, Cc = x.contiguous(), B.contiguous(), C.contiguous()
    y = torch.empty(batch, seqlen, heads, hd, device=x.device, dtype=torch.float32)
    if ssm_state is None:
        state = torch.zeros(batch, heads, hd, n, device=x.device, dtype=torch.float32)
        rows = torch.arange(batch, device=x.device)
    else:
        state, rows = ssm_state, _rows_of(ssm_state, state_indices, batch)
    assert state.is_contiguous()
    block_l = min(_block(chunk_size), 64)
    _ssd_chunk_scan_kernel[(batch, heads)](
        xc, dtf, A.float().contiguous(), Bc, Cc, (D if D is not None else A).float().contiguous(), y, state, rows,
        seqlen, heads, hd, n, heads // groups,
        xc.stride(0), xc.stride(1), xc.stride(2), dtf.stride(0), dtf.stride(1), Bc.stride(0), Bc.stride(1),
        Bc.stride(2), y.stride(0), y.stride(1), y.stride(2), state.stride(0), state.stride(1), state.stride(2),
        HAS_D=D is not None, BLOCK_L=block_l, BLOCK_P=_block(hd), BLOCK_N=_block(n),
    )  # fmt: skip
    if z is not None:
        y = y * torch.nn.functional.silu(z.float())
    return y.to(x.dtype)


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
    dtf = _discretize_dt(dt, dt_bias, dt_softplus, None).contiguous()
    xc, Bc, Cc = x.contiguous(), B.contiguous(), C.contiguous()
    y = torch.empty(batch, heads, hd, device=x.device, dtype=torch.float32)
    rows = _rows_of(ssm_state, state_indices, batch)
    assert ssm_state.is_contiguous()
    _ssd_state_update_kernel[(batch, heads)](
        xc, dtf, A.float().contiguous(), Bc, Cc, (D if D is not None else A).float().contiguous(), y, ssm_state,
        rows, hd, n, heads // groups, xc.stride(0), xc.stride(1), dtf.stride(0), Bc.stride(0), Bc.stride(1),
        y.stride(0), y.stride(1), ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2),
        HAS_D=D is not None, BLOCK_P=_block(hd), BLOCK_N=_block(n),
    )  # fmt: skip
    if z is not None:
        y = y * torch.nn.functional.silu(z.float())
    return y.to(x.dtype)
