"""Triton causal depthwise conv1d (Mamba's short conv) for prefill chunks and its single-token update.

Both read the left context from a conv-state pool ([S, D, W-1], rows picked by ``state_indices``) and
write it back in place; a negative state index marks a padding row that reads zeros and writes nothing.
Outputs are token-major ([B, T, D] memory returned as a [B, D, T] view), the layout x_proj reads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_fwd(
    x_ptr,
    w_ptr,
    bias_ptr,
    state_ptr,
    idx_ptr,
    len_ptr,
    out_ptr,
    D,
    T,
    s_xb,
    s_xd,
    s_xt,
    s_ss,
    s_sd,
    s_sw,
    s_ob,
    s_od,
    s_ot,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_STATE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    length = tl.load(len_ptr + b)
    acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    slot = b * 0 - 1
    if HAS_STATE:
        slot = tl.load(idx_ptr + b).to(tl.int64)
    for k in tl.static_range(W):
        src = t - (W - 1 - k)  # input position feeding tap k
        wk = tl.load(w_ptr + d * W + k, mask=dmask, other=0.0).to(tl.float32)
        cur = tl.load(
            x_ptr + b * s_xb + src[:, None].to(tl.int64) * s_xt + d[None, :] * s_xd,
            mask=(src >= 0)[:, None] & (src < length)[:, None] & dmask[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_STATE:
            # positions before the chunk come from the state: state column W-1+src for src in [-(W-1), 0)
            prev = tl.load(
                state_ptr + tl.maximum(slot, 0) * s_ss + d[None, :] * s_sd + (W - 1 + src)[:, None] * s_sw,
                mask=(src < 0)[:, None] & dmask[None, :],
                other=0.0,
            ).to(tl.float32)
            cur += prev * (slot >= 0).to(tl.float32)
        acc += cur * wk[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tmask = (t < T)[:, None] & dmask[None, :]
    tl.store(
        out_ptr + b * s_ob + t[:, None] * s_ot + d[None, :] * s_od,
        acc.to(out_ptr.dtype.element_ty),
        mask=tmask,
    )


@triton.jit
def _conv_state_store(
    x_ptr,
    state_ptr,
    idx_ptr,
    len_ptr,
    D,
    s_xb,
    s_xd,
    s_xt,
    s_ss,
    s_sd,
    s_sw,
    W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """New context of row b: the last W-1 inputs among (old state, its first len[b] new tokens)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    j = tl.arange(0, BLOCK_W)
    dmask = d < D
    jmask = j < W - 1
    slot = tl.load(idx_ptr + b).to(tl.int64)
    length = tl.load(len_ptr + b)
    if slot >= 0:
        p = length - (W - 1) + j  # position in the new tokens; negative: from the old state
        new = tl.load(
            x_ptr + b * s_xb + p[None, :].to(tl.int64) * s_xt + d[:, None] * s_xd,
            mask=(p >= 0)[None, :] & jmask[None, :] & dmask[:, None],
            other=0.0,
        )
        base = state_ptr + slot * s_ss + d[:, None] * s_sd
        old = tl.load(
            base + (W - 1 + p)[None, :] * s_sw,
            mask=(p < 0)[None, :] & jmask[None, :] & dmask[:, None],
            other=0.0,
        )
        val = tl.where((p >= 0)[None, :], new.to(tl.float32), old.to(tl.float32))
        tl.debug_barrier()
        tl.store(
            base + j[None, :] * s_sw, val.to(state_ptr.dtype.element_ty), mask=jmask[None, :] & dmask[:, None]
        )


def causal_conv1d(
    *,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    conv_state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """`reference.causal_conv1d_ref`'s contract. x: [B, D, T]; weight: [D, W]."""
    if activation not in (None, "silu", "swish"):
        from .reference import causal_conv1d_ref

        return causal_conv1d_ref(x, weight, bias, activation, conv_state, state_indices, seq_lens)
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    w = weight.contiguous()
    out = torch.empty(batch, seqlen, dim, device=x.device, dtype=x.dtype).transpose(1, 2)
    lens = (
        torch.full((batch,), seqlen, device=x.device, dtype=torch.int32)
        if seq_lens is None
        else seq_lens.to(torch.int32)
    )
    idx = torch.arange(batch, device=x.device) if state_indices is None else state_indices
    st = conv_state if conv_state is not None else w
    s_st = conv_state.stride() if conv_state is not None else (0, 0, 0)
    bt, bd = 32, 64
    # The conv reads positions past a row's length as zeros, which only affects padding outputs.
    _conv_fwd[(batch, triton.cdiv(max(seqlen, 1), bt), triton.cdiv(dim, bd))](
        x,
        w,
        bias if bias is not None else w,
        st,
        idx,
        lens,
        out,
        dim,
        seqlen,
        *x.stride(),
        *s_st,
        *out.stride(),
        W=width,
        HAS_BIAS=bias is not None,
        HAS_STATE=conv_state is not None,
        SILU=activation is not None,
        BLOCK_T=bt,
        BLOCK_D=bd,
        num_warps=4,
    )
    if conv_state is not None:
        _conv_state_store[(batch, triton.cdiv(dim, bd))](
            x,
            conv_state,
            idx,
            lens,
            dim,
            *x.stride(),
            *conv_state.stride(),
            W=width,
            BLOCK_D=bd,
            BLOCK_W=triton.next_power_of_2(max(width - 1, 1)),
            num_warps=2,
        )
    return out


@triton.jit
def _conv_update(
    x_ptr,
    w_ptr,
    bias_ptr,
    state_ptr,
    idx_ptr,
    out_ptr,
    D,
    s_xb,
    s_xd,
    s_ss,
    s_sd,
    s_sw,
    s_ob,
    s_od,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPDATE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    slot = tl.load(idx_ptr + b).to(tl.int64)
    if slot >= 0:
        x = tl.load(x_ptr + b * s_xb + d * s_xd, mask=dmask, other=0.0)
        acc = tl.load(w_ptr + d * W + (W - 1), mask=dmask, other=0.0).to(tl.float32) * x.to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        base = state_ptr + slot * s_ss + d * s_sd
        prev = tl.load(base, mask=dmask, other=0.0)
        acc += tl.load(w_ptr + d * W, mask=dmask, other=0.0).to(tl.float32) * prev.to(tl.float32)
        for k in tl.static_range(1, W - 1):
            cur = tl.load(base + k * s_sw, mask=dmask, other=0.0)
            acc += tl.load(w_ptr + d * W + k, mask=dmask, other=0.0).to(tl.float32) * cur.to(tl.float32)
            if UPDATE:
                tl.store(base + (k - 1) * s_sw, cur, mask=dmask)
        if UPDATE:
            tl.store(base + (W - 2) * s_sw, x.to(state_ptr.dtype.element_ty), mask=dmask)
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_ptr + b * s_ob + d * s_od, acc.to(out_ptr.dtype.element_ty), mask=dmask)


def causal_conv1d_update(
    *,
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    state_indices: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    update: bool = True,
) -> torch.Tensor:
    """`reference.causal_conv1d_update_ref`'s contract. x: [B, D]; a negative state index skips the row.
    ``update=False`` only reads the window (the output is the same; the state is left as it was)."""
    if activation not in (None, "silu", "swish") or weight.shape[-1] < 2:
        from .reference import causal_conv1d_update_ref

        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation, state_indices)
    batch, dim = x.shape
    w = weight.contiguous()
    idx = torch.arange(batch, device=x.device) if state_indices is None else state_indices
    out = torch.empty_like(x) if out is None else out
    bd = 128
    _conv_update[(batch, triton.cdiv(dim, bd))](
        x,
        w,
        bias if bias is not None else w,
        conv_state,
        idx,
        out,
        dim,
        *x.stride(),
        *conv_state.stride(),
        *out.stride(),
        W=w.shape[-1],
        HAS_BIAS=bias is not None,
        SILU=activation is not None,
        BLOCK_D=bd,
        UPDATE=update,
        num_warps=4,
    )
    return out
