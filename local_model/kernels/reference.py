"""Pure-PyTorch reference kernels: the definitions the fast kernels are tested against, and the CPU path.

Each op has a kernel-style signature (called by keyword through `local_model.kernels.KernelBundle`):

* `causal_conv1d_ref` / `causal_conv1d_update_ref`: causal depthwise conv over a chunk / one decode step;
* `selective_scan_ref` (sequential definition), `selective_scan_chunked` (log-depth within chunks, faster
  on CPU for small states), `selective_scan_auto` (the CPU default), `selective_scan_varlen_ref` (packed
  sequences with ``cu_seqlens``), `selective_state_update_ref` (one decode step);
* `rms_norm_ref` (optionally adding a residual first), `moe_experts_ref` (weighted top-k SwiGLU experts),
  `attention_decode_ref` (one query token per row over a contiguous or paged KV cache).

State pools are indexed by slot (``state_indices``), so a kernel updates them in place without a gather.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _act(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if name is None:
        return lambda x: x
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _rows(state: torch.Tensor, state_indices: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Slot indices of the batch rows inside a state pool."""
    if state_indices is not None:
        return state_indices
    return torch.arange(batch, device=state.device)


# ============================================================================ causal depthwise conv


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    conv_state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise conv over a sequence chunk.

    x: [B, D, T]; weight: [D, W]; bias: [D]; returns activation(conv(x)) as [B, D, T] in x.dtype.
    conv_state: optional pool [S, D, W-1]. If given, rows ``state_indices`` (default 0..B-1) are the left
    context (the last W-1 inputs before this chunk) and are overwritten in place with the last W-1 inputs
    of each row, counting only its first ``seq_lens[b]`` (default T) positions. Without it the left
    context is zeros, i.e. a fresh sequence.
    """
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    if conv_state is None:
        prefix = x.new_zeros(batch, dim, width - 1)
    else:
        rows = _rows(conv_state, state_indices, batch)
        prefix = conv_state[rows].to(x.dtype)
    xp = torch.cat([prefix, x], dim=-1)  # [B, D, W-1+T]
    out = F.conv1d(xp.to(weight.dtype), weight.unsqueeze(1), bias, groups=dim)
    if conv_state is not None:
        # Row b's new context is xp[..., n_b : n_b + W-1] where n_b is its number of valid new tokens.
        n = torch.full((batch,), seqlen, device=x.device) if seq_lens is None else seq_lens
        idx = n[:, None] + torch.arange(width - 1, device=x.device)
        conv_state[rows] = xp.gather(-1, idx[:, None, :].expand(batch, dim, width - 1)).to(conv_state.dtype)
    return _act(activation)(out).to(x.dtype)


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    state_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step of the causal conv. x: [B, D]; conv_state: pool [S, D, W-1] updated in place."""
    rows = _rows(conv_state, state_indices, x.shape[0])
    out, window = _conv_window(x, conv_state, weight, bias, activation, rows)
    conv_state[rows] = window[..., 1:].to(conv_state.dtype)
    return out


def _conv_window(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the conv output of each row's cached window followed by x, that window [B, D, W]); no update."""
    window = torch.cat(
        [conv_state[rows].to(weight.dtype), x.unsqueeze(-1).to(weight.dtype)], dim=-1
    )  # [B, D, W]
    out = (window * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return _act(activation)(out).to(x.dtype), window


# ============================================================================ selective scan (Mamba-1)


def _discretization_dt(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool, seq_lens: torch.Tensor | None
) -> torch.Tensor:
    """fp32 step sizes; zero past seq_lens so padded steps leave the state untouched (exp(0*A) = 1, dB = 0)."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if seq_lens is not None:
        valid = torch.arange(dt.shape[-1], device=dt.device)[None, :] < seq_lens[:, None]
        dt = dt * valid[:, None, :]
    return dt


def _scan_epilogue(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def _initial_state(
    ssm_state: torch.Tensor | None,
    state_indices: torch.Tensor | None,
    batch: int,
    dim: int,
    n: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The scan's starting state in fp32 (zeros, or the pool rows of this batch) and those rows."""
    if ssm_state is None:
        return like.new_zeros(batch, dim, n, dtype=torch.float32), None
    rows = _rows(ssm_state, state_indices, batch)
    return ssm_state[rows].float(), rows


def selective_scan_ref(
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
) -> torch.Tensor:
    """Mamba-1 selective scan, one time step at a time (the definition; slow on long sequences).

    u, delta, z: [B, D, T]; A: [D, N] (already negative); B, C: [B, N, T]; D, delta_bias: [D].
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t ;  y_t = C_t . h_t + D u_t ;  y *= silu(z).
    ssm_state: optional pool [S, D, N]: rows ``state_indices`` give h_0 and receive the final state.
    seq_lens: optional [B]: only the first seq_lens[b] steps of row b change its state.
    Returns y: [B, D, T] in u.dtype.
    """
    batch, dim, seqlen = u.shape
    dt = _discretization_dt(delta, delta_bias, delta_softplus, seq_lens)
    A, B, C, uf = A.float(), B.float(), C.float(), u.float()
    h, rows = _initial_state(ssm_state, state_indices, batch, dim, A.shape[-1], u)
    ys = []
    for t in range(seqlen):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * uf[:, :, t])[..., None] * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    if ssm_state is not None:
        ssm_state[rows] = h.to(ssm_state.dtype)  # type: ignore[index]
    return _scan_epilogue(y, u, D, z)


def selective_scan_chunked(
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
    chunk_size: int = 64,
) -> torch.Tensor:
    """Same contract as `selective_scan_ref`, faster on CPU.

    Within a chunk of L steps the linear recurrence h_t = a_t h_{t-1} + b_t is solved by a log2(L)-step
    Hillis-Steele scan over (a, b) pairs, combining (a1, b1), (a2, b2) -> (a2 a1, a2 b1 + b2). Only products
    of decays in (0, 1] appear, so it is as stable as the sequential loop (unlike cumsum-of-log tricks
    that divide by decays). Chunks are chained sequentially through h, bounding memory to [B, D, L, N].
    """
    batch, dim, seqlen = u.shape
    dt = _discretization_dt(delta, delta_bias, delta_softplus, seq_lens)
    A, uf = A.float(), u.float()
    h, rows = _initial_state(ssm_state, state_indices, batch, dim, A.shape[-1], u)
    ys = []
    for t0 in range(0, seqlen, chunk_size):
        sl = slice(t0, min(t0 + chunk_size, seqlen))
        dtc = dt[:, :, sl]  # [B, D, L]
        a = torch.exp(dtc[..., None] * A[:, None, :])  # [B, D, L, N]
        b = (dtc * uf[:, :, sl])[..., None] * B[:, None, :, sl].float().transpose(-1, -2)  # [B, D, L, N]
        step, length = 1, dtc.shape[-1]
        while step < length:
            b = torch.cat([b[:, :, :step], a[:, :, step:] * b[:, :, :-step] + b[:, :, step:]], dim=2)
            a = torch.cat([a[:, :, :step], a[:, :, step:] * a[:, :, :-step]], dim=2)
            step *= 2
        hs = a * h[:, :, None, :] + b  # [B, D, L, N]: states after each step of the chunk
        ys.append(torch.einsum("bdln,bnl->bdl", hs, C[:, :, sl].float()))
        h = hs[:, :, -1]
    y = torch.cat(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    if ssm_state is not None:
        ssm_state[rows] = h.to(ssm_state.dtype)  # type: ignore[index]
    return _scan_epilogue(y, u, D, z)


def selective_state_update_ref(
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
    """One decode step of the selective scan. x, dt, z: [B, D]; A: [D, N]; B, C: [B, N]; D, dt_bias: [D].

    ssm_state: pool [S, D, N]; rows ``state_indices`` (default 0..B-1) are updated in place. Returns [B, D].
    """
    rows = _rows(ssm_state, state_indices, x.shape[0])
    dt = _discretization_dt(dt[..., None], dt_bias, dt_softplus, None)[..., 0]  # [B, D]
    h = ssm_state[rows].float()
    h = torch.exp(dt[..., None] * A.float()) * h + (dt * x.float())[..., None] * B.float()[:, None, :]
    ssm_state[rows] = h.to(ssm_state.dtype)
    y = torch.einsum("bdn,bn->bd", h, C.float())
    return _scan_epilogue(y[..., None], x[..., None], D, None if z is None else z[..., None])[..., 0]


_CHUNKED_SCAN_MAX_STATE = 4096  # B * D * N elements; see selective_scan_auto


def selective_scan_auto(
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
) -> torch.Tensor:
    """CPU default: the chunked scan while a step's state is small, the sequential loop otherwise.

    Measured on 2 CPU cores: with B*D*N below a few thousand elements the loop is dominated by per-op
    overhead and the chunked scan is 5-10x faster; at Jamba sizes (D*N >= 10k) each step is memory-bound
    and the chunked scan's log2(L) extra passes make it slower than the plain loop.
    """
    small = u.shape[0] * u.shape[1] * A.shape[-1] <= _CHUNKED_SCAN_MAX_STATE
    scan = selective_scan_chunked if small else selective_scan_ref
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ssm_state, state_indices, seq_lens)


def selective_scan_varlen_ref(
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
) -> torch.Tensor:
    """Selective scan over sequences packed along time.

    u, delta, z: [D, T_total]; B, C: [N, T_total]; sequence i is columns cu_seqlens[i] .. cu_seqlens[i+1]-1.
    ssm_state: optional pool [S, D, N]; sequence i starts from slot state_indices[i] (default i) when
    has_initial_state[i] (default: all true) and from zeros otherwise, and its final state is written there.
    """
    bounds = cu_seqlens.tolist()
    out = torch.empty_like(u)
    for i in range(len(bounds) - 1):
        sl = slice(bounds[i], bounds[i + 1])
        pool, rows = None, None
        if ssm_state is not None:
            slot = i if state_indices is None else int(state_indices[i])
            rows = torch.tensor([slot], device=u.device)
            pool = ssm_state
            if has_initial_state is not None and not bool(has_initial_state[i]):
                ssm_state[slot] = 0
        out[:, sl] = selective_scan_ref(
            u[None, :, sl],
            delta[None, :, sl],
            A,
            B[None, :, sl],
            C[None, :, sl],
            D,
            None if z is None else z[None, :, sl],
            delta_bias,
            delta_softplus,
            pool,
            rows,
        )[0]
    return out


# ============================================================================ RMSNorm


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim in fp32, cast back before the weight (transformers' JambaRMSNorm).

    With ``residual``: returns (norm(x + residual), x + residual), the pre-norm block's fused step.
    """
    if residual is not None:
        x = x + residual
    xf = x.float()
    out = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return out if residual is None else (out, x)


# ============================================================================ mixture of experts


def moe_experts_ref(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Weighted sum of the chosen SwiGLU experts per token (loop over experts that got tokens).

    x: [N, H]; top_k_index / top_k_weights: [N, k]; gate_up_proj: [E, 2I, H]; down_proj: [E, H, I].
    A grouped-GEMM kernel can replace this behind the same signature.
    """
    out = torch.zeros_like(x)
    for e in top_k_index.unique().tolist():
        token, which = (top_k_index == e).nonzero(as_tuple=True)
        gate, up = F.linear(x[token], gate_up_proj[e]).chunk(2, dim=-1)
        y = F.linear(act(gate) * up, down_proj[e]) * top_k_weights[token, which, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


# ============================================================================ attention


def attention_prefill_ref(
    *, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal attention of a fresh chunk. q: [B, H, T, hd]; k, v: [B, Hkv, T, hd] (query head h uses kv
    head h // (H // Hkv)). PyTorch SDPA with whichever backend it picks."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)


def attention_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    slots: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per row attending to its first context_lens[b] cached positions.

    With ``k_new`` / ``v_new`` ([B, Hkv, hd]) the row's new key and value are first written at its last
    position, context_lens[b] - 1 (the decode step's own token).

    q: [B, H, hd]. Contiguous cache (``block_table`` None): k_cache/v_cache [S, Hkv, capacity, hd] and row b
    reads slot slots[b] (default b). Paged cache: k_cache/v_cache [num_blocks, Hkv, block_size, hd] and row
    b's position p lives in block block_table[b, p // block_size] at offset p % block_size.
    Query head h uses kv head h // (H // Hkv). Returns [B, H, hd] in q.dtype.
    """
    batch, n_heads, hd = q.shape
    n_kv = k_cache.shape[1]
    out = torch.empty_like(q)
    if k_new is not None and v_new is not None:
        for b in range(batch):
            p = int(context_lens[b]) - 1
            if block_table is None:
                slot = b if slots is None else int(slots[b])
                k_cache[slot, :, p] = k_new[b].to(k_cache.dtype)
                v_cache[slot, :, p] = v_new[b].to(v_cache.dtype)
            else:
                bs = k_cache.shape[2]
                blk = int(block_table[b, p // bs])
                k_cache[blk, :, p % bs] = k_new[b].to(k_cache.dtype)
                v_cache[blk, :, p % bs] = v_new[b].to(v_cache.dtype)
    for b in range(batch):
        n = int(context_lens[b])
        if block_table is None:
            slot = b if slots is None else int(slots[b])
            k, v = k_cache[slot, :, :n], v_cache[slot, :, :n]
        else:
            bs = k_cache.shape[2]
            blocks = block_table[b, : (n + bs - 1) // bs]
            k = k_cache[blocks].permute(1, 0, 2, 3).reshape(n_kv, -1, hd)[:, :n]
            v = v_cache[blocks].permute(1, 0, 2, 3).reshape(n_kv, -1, hd)[:, :n]
        k = k.repeat_interleave(n_heads // n_kv, dim=0).float()
        v = v.repeat_interleave(n_heads // n_kv, dim=0).float()
        p = torch.softmax((q[b].float()[:, None, :] @ k.transpose(1, 2)) * scale, dim=-1)
        out[b] = (p @ v)[:, 0].to(q.dtype)
    return out


# ============================================================================ decode-step pieces


def linear_ref(*, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias): the projections of the decode step."""
    return F.linear(x, weight, bias)


def router_topk_ref(*, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the fp32 softmax over experts (no renormalisation): (weights in logits.dtype, indices)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    w, i = torch.topk(probs, k, dim=-1)
    return w.to(logits.dtype), i


def mamba_decode_ssm_ref(
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
    conv_state: torch.Tensor | None = None,
    conv_weight: torch.Tensor | None = None,
    conv_bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """The Mamba decode step after x_proj: Jamba's RMSNorms on (dt, B, C), dt_proj, the selective state
    update of slot rows ``state_indices`` in place, D skip and SiLU(z) gate. xproj: [B, R + 2N].
    With ``conv_state``, x is the causal conv's new input: the conv window is updated first."""
    rank, n = dt_proj_weight.shape[1], A.shape[-1]
    dt, b, c = xproj.split([rank, n, n], dim=-1)
    dt = rms_norm_ref(dt, dt_norm_weight, eps) @ dt_proj_weight.t()
    b = rms_norm_ref(b, b_norm_weight, eps)
    c = rms_norm_ref(c, c_norm_weight, eps)
    if conv_state is not None:
        x = causal_conv1d_update_ref(x, conv_state, conv_weight, conv_bias, activation, state_indices)
    return selective_state_update_ref(ssm_state, x, dt, A, b, c, D, z, dt_bias.float(), True, state_indices)


def mamba_conv_xproj_ref(
    *,
    x: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    activation: str | None,
    state_indices: torch.Tensor,
    xproj_weight: torch.Tensor,
) -> torch.Tensor:
    """x_proj of the causal conv over each row's cached window and its new input x [B, D]. The window is
    only read: `mamba_decode_ssm_ref` (given the same conv arguments) shifts it afterwards."""
    rows = _rows(conv_state, state_indices, x.shape[0])
    xc, _ = _conv_window(x, conv_state, conv_weight, conv_bias, activation, rows)
    return F.linear(xc, xproj_weight)


def norm_linear_ref(
    *,
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(proj(h), s) with s = x + residual (x without one) and h = RMSNorm(s) (s without a norm weight);
    with ``swiglu`` the projection's two halves (gate, up) become silu(gate) * up. ``out``, if given,
    receives the result."""
    s = x if residual is None else x + residual
    h = s if norm_weight is None else rms_norm_ref(s, norm_weight, eps)
    y = F.linear(h, weight)
    if swiglu:
        g, u = y.chunk(2, dim=-1)
        y = F.silu(g) * u
    if out is not None:
        out.copy_(y)
        y = out
    return y, s


def moe_block_ref(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """A MoE feed-forward at decode: (experts(RMSNorm(s)), s) with s = x + residual; routing is the top-k
    of the fp32 softmax of the router logits, not renormalised (`router_topk_ref`)."""
    s = x if residual is None else x + residual
    h = rms_norm_ref(s, norm_weight, eps)
    w, idx = router_topk_ref(logits=F.linear(h, router_weight), k=top_k)
    return moe_experts_ref(h, idx, w, gate_up_proj, down_proj, act), s


def greedy_advance_ref(
    *,
    logits: torch.Tensor,
    ids: torch.Tensor,
    positions: torch.Tensor,
    history: torch.Tensor,
    counter: torch.Tensor,
) -> None:
    """One greedy step's bookkeeping on device buffers: ids = argmax(logits) (first among equals),
    positions += 1, history[counter] = ids, counter += 1."""
    nxt = logits.argmax(-1)
    ids.copy_(nxt)
    positions.add_(1)
    history.index_copy_(0, counter, nxt[None])
    counter.add_(1)
