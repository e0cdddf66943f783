"""The Triton kernel bundle's ops: RMSNorm (+ residual), paged attention decode, and the kernels of
`triton_moe` (fused top-k MoE), `triton_scan` / `triton_conv` (Mamba) and `triton_decode` (re-exported
here, so `triton_bundle` imports one module).

Every op keeps the keyword signature of its reference in `local_model.kernels.reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .pdl import pdl_args, pdl_begin
from .triton_conv import causal_conv1d, causal_conv1d_update
from .triton_decode import greedy_advance, linear, mamba_conv_xproj, moe_block, norm_linear, softmax_topk
from .triton_gemm import linear_splitk
from .triton_moe import moe_align, moe_experts
from .triton_scan import mamba_decode_ssm, selective_scan, selective_scan_varlen, selective_state_update

# ============================================================================ RMSNorm (+ residual)


@triton.jit
def _rms_norm(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    H,
    eps,
    s_x,
    s_r,
    s_o,
    s_ro,
    HAS_RES: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PDL: tl.constexpr = False,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    m = cols < H
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    pdl_begin(PDL)
    x = tl.load(x_ptr + row * s_x + cols, mask=m, other=0.0)
    if HAS_RES:
        x = (x.to(tl.float32) + tl.load(res_ptr + row * s_r + cols, mask=m, other=0.0).to(tl.float32)).to(
            x_ptr.dtype.element_ty
        )
        tl.store(res_out_ptr + row * s_ro + cols, x, mask=m)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
    y = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)  # cast back before the weight, as the reference
    tl.store(out_ptr + row * s_o + cols, (w * y).to(out_ptr.dtype.element_ty), mask=m)


def rms_norm(
    *, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`reference.rms_norm_ref`'s contract: norm(x) or (norm(x + residual), x + residual)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    rows, hid = x2.shape
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(rows, hid, device=x.device, dtype=out_dtype)
    r2 = residual.reshape(-1, hid) if residual is not None else x2
    res_out = torch.empty_like(x2) if residual is not None else out
    _rms_norm[(rows,)](
        x2,
        r2,
        weight,
        out,
        res_out,
        hid,
        eps,
        x2.stride(0),
        r2.stride(0),
        out.stride(0),
        res_out.stride(0),
        HAS_RES=residual is not None,
        BLOCK_H=triton.next_power_of_2(hid),
        num_warps=4 if hid <= 4096 else 8,
        **pdl_args(x.device, rows),
    )
    if residual is None:
        return out.reshape(shape)
    return out.reshape(shape), res_out.reshape(shape)


# ============================================================================ attention prefill (cuDNN SDPA)


def attention_prefill(
    *, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """`reference.attention_prefill_ref`'s contract through SDPA, preferring the cuDNN backend (then flash,
    then memory-efficient); GQA without materialising repeated K/V where the backend supports it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    try:
        with sdpa_kernel(backends, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
    except RuntimeError:  # no fused backend takes these inputs (dtype, head size): the math path
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)


# ============================================================================ attention decode (paged)


@triton.jit
def _attn_decode(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    len_ptr,
    slot_ptr,
    bt_ptr,
    kn_ptr,
    vn_ptr,
    scale,
    s_qb,
    s_qh,
    s_kb,
    s_kh,
    s_kt,
    s_vb,
    s_vh,
    s_vt,
    s_ob,
    s_oh,
    s_btb,
    s_knb,
    s_knh,
    s_vnb,
    s_vnh,
    part_ptr,
    ml_ptr,
    N_REP: tl.constexpr,
    HD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
    PAGE: tl.constexpr,
    PAGED: tl.constexpr,
    IEEE: tl.constexpr,
    WRITE_NEW: tl.constexpr,
    SPLITS: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """One program per (row, kv head, context split): the N_REP query heads sharing the kv head, online
    softmax over the split's share of the row's context in tiles of BLOCK_T positions (paged: one page, or
    several small pages gathered by position).
    WRITE_NEW: the row's new key and value for this head are first stored at its last position by the
    split that reads it (then a barrier, so the tiles see them). With SPLITS > 1 (flash-decoding: a long
    context is read by several programs, not one) each split stores its unnormalised output, running max
    and sum for `_attn_decode_combine`."""
    b = tl.program_id(0).to(tl.int64)
    hk = tl.program_id(1)
    sp = tl.program_id(2)
    pdl_begin(PDL)
    r = tl.arange(0, BLOCK_R)
    dd = tl.arange(0, HD)
    rmask = r < N_REP
    heads = hk * N_REP + r
    q = tl.load(q_ptr + b * s_qb + heads[:, None] * s_qh + dd[None, :], mask=rmask[:, None], other=0.0)
    q = (q.to(tl.float32) * scale).to(q_ptr.dtype.element_ty)
    n = tl.load(len_ptr + b)
    # this split's positions [t_lo, t_hi): whole tiles (pages), so a tile never straddles two splits
    per = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK_T) * BLOCK_T
    t_lo = sp * per
    t_hi = tl.minimum(t_lo + per, n)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HD], tl.float32)
    if not PAGED:
        slot = tl.load(slot_ptr + b).to(tl.int64)
    if WRITE_NEW:  # noqa: SIM102 (a constexpr around a device condition: no `and` between them)
        # only the split that reads the last position writes it (an empty split has t_lo >= n)
        if (t_lo < n) & (t_hi >= n):
            last = (n - 1).to(tl.int64)
            if PAGED:
                blk_l = tl.load(bt_ptr + b * s_btb + last // PAGE).to(tl.int64)
                kp = blk_l * s_kb + (last % PAGE) * s_kt
                vp = blk_l * s_vb + (last % PAGE) * s_vt
            else:
                kp = slot * s_kb + last * s_kt
                vp = slot * s_vb + last * s_vt
            kn = tl.load(kn_ptr + b * s_knb + hk * s_knh + dd)
            vn = tl.load(vn_ptr + b * s_vnb + hk * s_vnh + dd)
            tl.store(k_ptr + kp + hk * s_kh + dd, kn.to(k_ptr.dtype.element_ty))
            tl.store(v_ptr + vp + hk * s_vh + dd, vn.to(v_ptr.dtype.element_ty))
            tl.debug_barrier()
    for t0 in range(t_lo, t_hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tmask = t < t_hi
        if PAGED and PAGE == BLOCK_T:  # the tile is one page: one block-table entry
            blk = tl.load(bt_ptr + b * s_btb + t0 // PAGE).to(tl.int64)
            koff = blk * s_kb + (t - t0)[:, None] * s_kt
            voff = blk * s_vb + (t - t0)[:, None] * s_vt
        elif PAGED:  # pages smaller than a tile (or not a power of two): each position's own block
            blk = tl.load(bt_ptr + b * s_btb + t // PAGE, mask=tmask, other=0).to(tl.int64)
            koff = blk[:, None] * s_kb + (t % PAGE)[:, None] * s_kt
            voff = blk[:, None] * s_vb + (t % PAGE)[:, None] * s_vt
        else:
            koff = slot * s_kb + t[:, None] * s_kt
            voff = slot * s_vb + t[:, None] * s_vt
        k = tl.load(k_ptr + koff + hk * s_kh + dd[None, :], mask=tmask[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k).to(q.dtype), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k).to(q.dtype))
        s = tl.where(tmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + voff + hk * s_vh + dd[None, :], mask=tmask[:, None], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + b * s_ob + heads[:, None] * s_oh + dd[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=rmask[:, None],
        )
    else:
        # partials laid out [B, H, SPLITS, HD] and [B, H, SPLITS, 2] (max, sum); an empty split leaves
        # max -inf and sum 0, which the combine weighs by zero
        row = (b * (tl.num_programs(1) * N_REP) + heads) * SPLITS + sp
        tl.store(part_ptr + row[:, None] * HD + dd[None, :], acc, mask=rmask[:, None])
        tl.store(ml_ptr + row * 2, m_i, mask=rmask)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=rmask)


@triton.jit
def _attn_decode_combine(
    part_ptr, ml_ptr, out_ptr, s_ob, s_oh, H, HD: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr = False
):  # fmt: skip
    """One program per (row, query head): the splits' partial softmax outputs rescaled to their common max."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pdl_begin(PDL)
    s = tl.arange(0, SPLITS)
    dd = tl.arange(0, HD)
    row = (b * H + h) * SPLITS + s
    m = tl.load(ml_ptr + row * 2)
    lsum = tl.load(ml_ptr + row * 2 + 1)
    w = tl.exp(m - tl.max(m, axis=0))  # split 0 is never empty (context >= 1), so the max is finite
    acc = tl.load(part_ptr + row[:, None] * HD + dd[None, :])
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(lsum * w, axis=0)
    tl.store(out_ptr + b * s_ob + h * s_oh + dd, out.to(out_ptr.dtype.element_ty))


def attention_decode(
    *,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    slots: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """`reference.attention_decode_ref`'s contract (contiguous per-slot cache, or paged with block_table).

    Rows need context_lens >= 1 (the token being decoded is in the cache, or written first from
    ``k_new`` / ``v_new``). ``num_splits`` (a power of two) splits each row's context over that many
    programs; None chooses from the cache's capacity (`decode_splits`)."""
    batch, n_heads, hd = q.shape
    n_kv = k_cache.shape[1]
    n_rep = n_heads // n_kv
    out = torch.empty_like(q) if out is None else out
    paged = block_table is not None
    if paged:
        page = k_cache.shape[2]
        # a tile is one page when the page is a power of two the tensor cores take (>= 16 positions);
        # smaller or odd pages are gathered position by position into 16-position (or wider) tiles
        block_t = max(16, triton.next_power_of_2(page))
        bt, s_btb = block_table, block_table.stride(0)
        sl = context_lens
    else:
        page = 1
        block_t = 64
        bt, s_btb = context_lens, 0
        sl = torch.arange(batch, device=q.device) if slots is None else slots
    ks = k_cache.stride()
    vs = v_cache.stride()
    write = k_new is not None and v_new is not None
    kn = k_new if write else q
    vn = v_new if write else q
    capacity = (block_table.shape[1] * page) if paged else k_cache.shape[2]
    splits = decode_splits(batch * n_kv, capacity) if num_splits is None else num_splits
    if splits > 1:
        part = torch.empty(batch, n_heads, splits, hd, device=q.device, dtype=torch.float32)
        ml = torch.empty(batch, n_heads, splits, 2, device=q.device, dtype=torch.float32)
    else:
        part = ml = out
    _attn_decode[(batch, n_kv, splits)](
        q,
        k_cache,
        v_cache,
        out,
        context_lens,
        sl,
        bt,
        kn,
        vn,
        scale,
        q.stride(0),
        q.stride(1),
        ks[0],
        ks[1],
        ks[2],
        vs[0],
        vs[1],
        vs[2],
        out.stride(0),
        out.stride(1),
        s_btb,
        kn.stride(0),
        kn.stride(1),
        vn.stride(0),
        vn.stride(1),
        part,
        ml,
        N_REP=n_rep,
        HD=hd,
        BLOCK_R=max(16, triton.next_power_of_2(n_rep)),
        BLOCK_T=block_t,
        PAGE=page,
        PAGED=paged,
        IEEE=q.dtype == torch.float32,
        WRITE_NEW=write,
        SPLITS=splits,
        num_warps=4,
        **pdl_args(q.device, batch),
    )
    if splits > 1:
        _attn_decode_combine[(batch, n_heads)](
            part, ml, out, out.stride(0), out.stride(1), n_heads, HD=hd, SPLITS=splits, num_warps=1,
            **pdl_args(q.device, batch),
        )  # fmt: skip
    return out


# Flash-decoding: with few (row, kv head) programs a long context is walked by one program each (decode at
# a 256K context ran at ~21 tokens/s on the H100), so long-context caches split it over more programs.
# Only caches that can hold >= 32K tokens split (the split costs a second launch per attention layer).
DECODE_SPLIT_MIN_CAPACITY = 32768


def decode_splits(programs: int, capacity: int, sms: int = 132) -> int:
    """Context splits for paged decode: enough (row, kv head, split) programs for ~2 per SM, at most 16,
    each split at least 2K positions of the cache's capacity (a static shape, so graphs can capture it).
    On the H100 (`bench/kernels_gpu.py --attn`, one row, 8 kv heads) 16 splits were the fastest tried at
    both 32K and 256K positions."""
    if capacity < DECODE_SPLIT_MIN_CAPACITY or programs >= 2 * sms:
        return 1
    want = min(16, triton.cdiv(2 * sms, programs), capacity // 2048)
    return 1 << (max(1, want).bit_length() - 1)  # a power of two (the combine's tile)


# ============================================================================ decode-step pieces


@triton.jit
def _router_topk(logits_ptr, w_ptr, i_ptr, E, s_l, K: tl.constexpr, BLOCK_E: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    x = tl.load(logits_ptr + row * s_l + e, mask=e < E, other=float("-inf")).to(tl.float32)
    softmax_topk(x, e, w_ptr, i_ptr, row, K, BLOCK_E)


def router_topk(*, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`reference.router_topk_ref`'s contract in one launch (softmax in fp32, k rounds of argmax)."""
    rows, experts = logits.shape
    w = torch.empty(rows, k, device=logits.device, dtype=logits.dtype)
    i = torch.empty(rows, k, device=logits.device, dtype=torch.long)
    _router_topk[(rows,)](
        logits, w, i, experts, logits.stride(0), K=k, BLOCK_E=triton.next_power_of_2(experts)
    )
    return w, i


__all__ = [
    "greedy_advance",
    "linear",
    "linear_splitk",
    "mamba_conv_xproj",
    "moe_block",
    "norm_linear",
    "attention_decode",
    "attention_prefill",
    "causal_conv1d",
    "causal_conv1d_update",
    "mamba_decode_ssm",
    "moe_align",
    "moe_experts",
    "rms_norm",
    "router_topk",
    "selective_scan",
    "selective_scan_varlen",
    "selective_state_update",
]
