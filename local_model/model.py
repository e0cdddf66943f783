"""Jamba-style hybrid decoder (Mamba-1 + GQA attention + MoE) in plain PyTorch.

Numerically this follows transformers' ``modeling_jamba.py`` (its pure-PyTorch path), with the same
parameter names, so a Hugging Face checkpoint loads with no renaming:

* ``MambaMixer``: in_proj -> (x, z); causal depthwise conv1d + activation; x_proj -> (dt, B, C);
  RMSNorm on dt, B and C (Jamba's dt/b/c_layernorm); dt = softplus(dt_proj(dt) + bias); A = -exp(A_log)
  in fp32; selective scan; D skip; gate with SiLU(z); out_proj.
* ``Attention``: grouped-query attention, causal, **no positional encoding** (Jamba relies on the Mamba
  layers for position).
* ``SparseMoE``: fp32 softmax over all experts, top-k **without** renormalisation, SwiGLU experts stored
  fused as ``experts.gate_up_proj [E, 2I, H]`` / ``experts.down_proj [E, H, I]`` (transformers >= 5 layout).
* ``MLP``: dense SwiGLU.

The sequence-mixing math lives in standalone functions with kernel-style signatures
(`causal_conv1d_ref`, `causal_conv1d_update_ref`, `selective_scan_ref` / `selective_scan_chunked` /
`selective_scan_auto`, `selective_state_update_ref`, `moe_experts_ref`, `attention_with_kv_cache`).
`MambaKernels` bundles the four Mamba ones (called positionally, in the order of the signatures below);
`JambaForCausalLM.set_kernels` swaps in faster implementations behind the same signatures.
Cache semantics (slots, lengths, right-padded ``seq_lens``) are described in `local_model.cache`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import HybridCache, KVCache, MambaState
from .config import JambaConfig

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
    window = torch.cat(
        [conv_state[rows].to(weight.dtype), x.unsqueeze(-1).to(weight.dtype)], dim=-1
    )  # [B, D, W]
    conv_state[rows] = window[..., 1:].to(conv_state.dtype)
    out = (window * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return _act(activation)(out).to(x.dtype)


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
    ssm_state: torch.Tensor | None, state_indices: torch.Tensor | None, batch: int, dim: int, n: int,
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


@dataclass(frozen=True)
class MambaKernels:
    """The four Mamba sequence ops; replace any of them with a kernel of the same signature."""

    causal_conv1d: Callable[..., torch.Tensor] = causal_conv1d_ref
    causal_conv1d_update: Callable[..., torch.Tensor] = causal_conv1d_update_ref
    selective_scan: Callable[..., torch.Tensor] = selective_scan_auto
    selective_state_update: Callable[..., torch.Tensor] = selective_state_update_ref


# Sequential scan everywhere: the slowest, most literal configuration (used by tests as a cross-check).
REFERENCE_KERNELS = MambaKernels(selective_scan=selective_scan_ref)
DEFAULT_KERNELS = MambaKernels()


# ============================================================================ attention


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, L, hd] -> [B, Hkv * n_rep, L, hd]; query head h uses kv head h // n_rep."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


def attention_with_kv_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv: KVCache,
    lengths: torch.Tensor,
    seq_lens: torch.Tensor,
    slots: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """`KVCache.attend` for the contiguous cache: write the new K/V, attend over each row's past + new tokens.

    q: [B, H, T, hd]; k, v: [B, Hkv, T, hd] for the (right-padded) new tokens. Row b's first seq_lens[b]
    keys/values go to positions lengths[b] .. lengths[b]+seq_lens[b]-1 of slot slots[b]; its query t
    attends to positions 0 .. lengths[b]+t. Returns [B, H, T, hd]; rows t >= seq_lens[b] are padding
    (finite, meaningless). A paged version replaces this with a block-table gather/kernel.
    """
    batch, n_heads, seqlen, _ = q.shape
    rows = slots if slots is not None else torch.arange(batch, device=q.device)
    t = torch.arange(seqlen, device=q.device)
    pos = lengths[:, None] + t  # [B, T] absolute position of every new token
    total = int((lengths + seq_lens).max())
    if total > kv.capacity:
        raise ValueError(f"KV cache capacity {kv.capacity} exceeded (need {total})")
    b_idx, t_idx = (t[None, :] < seq_lens[:, None]).nonzero(as_tuple=True)
    kv.k[rows[b_idx], :, pos[b_idx, t_idx]] = k[b_idx, :, t_idx].to(kv.k.dtype)
    kv.v[rows[b_idx], :, pos[b_idx, t_idx]] = v[b_idx, :, t_idx].to(kv.v.dtype)

    keys = kv.k[:batch, :, :total] if slots is None else kv.k[rows, :, :total]
    values = kv.v[:batch, :, :total] if slots is None else kv.v[rows, :, :total]
    n_rep = n_heads // keys.shape[1]
    mask = torch.arange(total, device=q.device)[None, None, :] <= pos[:, :, None]  # [B, T, total]
    return F.scaled_dot_product_attention(
        q,
        repeat_kv(keys, n_rep).to(q.dtype),
        repeat_kv(values, n_rep).to(q.dtype),
        attn_mask=mask[:, None],
        scale=scale,
    )


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back before the weight (as transformers' JambaRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query attention without positional encoding."""

    def __init__(self, config: JambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.attn_head_dim
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)

    def forward(
        self, x: torch.Tensor, cache: HybridCache | None = None, seq_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, seqlen, _ = x.shape
        q = self.q_proj(x).view(batch, seqlen, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is None:
            n_rep = self.n_heads // self.n_kv_heads
            out = F.scaled_dot_product_attention(
                q,
                repeat_kv(k, n_rep),
                repeat_kv(v, n_rep),
                is_causal=True,
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.scale,
            )
        else:
            kv = cache.layers[self.layer_idx]
            assert isinstance(kv, KVCache), f"layer {self.layer_idx} expects a KVCache"
            if seq_lens is None:
                seq_lens = torch.full((batch,), seqlen, dtype=torch.long, device=x.device)
            out = kv.attend(q, k, v, cache.lengths, seq_lens, cache.slots, self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seqlen, -1))


# ============================================================================ Mamba mixer


class MambaMixer(nn.Module):
    """Mamba-1 block with Jamba's extra RMSNorms on dt, B and C."""

    def __init__(self, config: JambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        h, d = config.hidden_size, config.mamba_d_inner
        self.d_inner, self.d_state, self.dt_rank = d, config.mamba_d_state, config.mamba_dt_rank
        self.activation = config.hidden_act
        self.in_proj = nn.Linear(h, 2 * d, bias=config.mamba_proj_bias)
        self.conv1d = nn.Conv1d(d, d, config.mamba_d_conv, groups=d, bias=config.mamba_conv_bias)
        self.x_proj = nn.Linear(d, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d, bias=True)
        # S4D-real initialisation: A = -[1..N] per channel, stored as log for positivity.
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(d, 1)
        )
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, h, bias=config.mamba_proj_bias)
        self.dt_layernorm = RMSNorm(self.dt_rank, eps=config.rms_norm_eps)
        self.b_layernorm = RMSNorm(self.d_state, eps=config.rms_norm_eps)
        self.c_layernorm = RMSNorm(self.d_state, eps=config.rms_norm_eps)
        self.kernels = DEFAULT_KERNELS

    def forward(
        self, hidden: torch.Tensor, cache: HybridCache | None = None, seq_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden: [B, T, H] -> [B, T, H]. Three modes: no cache (fresh sequences), a chunk of tokens
        continuing a cached state (prefill / chunked prefill / ragged), one token per row (decode)."""
        kern = self.kernels
        state: MambaState | None = None
        if cache is not None:
            state = cache.layers[self.layer_idx]
            assert isinstance(state, MambaState), f"layer {self.layer_idx} expects a MambaState"
        slots = cache.slots if cache is not None else None
        decode = state is not None and hidden.shape[1] == 1 and seq_lens is None

        # 1. input projection: x feeds the SSM, z gates its output
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # [B, D, T] each

        # 2. causal depthwise conv + activation (the conv window is part of the recurrent state)
        conv_w, conv_b = self.conv1d.weight.squeeze(1), self.conv1d.bias
        if decode:
            x = kern.causal_conv1d_update(x[..., 0], state.conv, conv_w, conv_b, self.activation, slots)
            x = x[..., None]
        elif state is not None:
            x = kern.causal_conv1d(x, conv_w, conv_b, self.activation, state.conv, slots, seq_lens)
        else:
            x = kern.causal_conv1d(x, conv_w, conv_b, self.activation)

        # 3. input-dependent SSM parameters, with Jamba's RMSNorms on dt, B and C
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj.weight @ self.dt_layernorm(dt).transpose(1, 2)  # [B, D, T]; bias added in fp32
        B = self.b_layernorm(B).transpose(1, 2)  # [B, N, T]
        C = self.c_layernorm(C).transpose(1, 2)  # [B, N, T]
        A = -torch.exp(self.A_log.float())  # [D, N], negative: decays
        dt_bias = self.dt_proj.bias.float()

        # 4. selective scan (softplus(dt + bias), D skip and SiLU(z) gate happen inside)
        if decode:
            y = kern.selective_state_update(
                state.ssm,
                x[..., 0],
                dt[..., 0],
                A,
                B[..., 0],
                C[..., 0],
                self.D,
                z[..., 0],
                dt_bias,
                True,
                slots,
            )
            y = y[..., None]
        elif state is not None:
            y = kern.selective_scan(x, dt, A, B, C, self.D, z, dt_bias, True, state.ssm, slots, seq_lens)
        else:
            y = kern.selective_scan(x, dt, A, B, C, self.D, z, dt_bias, True)

        # 5. back to the residual stream
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))


# ============================================================================ feed-forward


class MLP(nn.Module):
    """Dense SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: JambaConfig) -> None:
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)
        self.act = _act(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


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


class Experts(nn.Module):
    """Fused expert weights, laid out as transformers >= 5 keeps them in memory."""

    def __init__(self, config: JambaConfig) -> None:
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))


class SparseMoE(nn.Module):
    """Top-k routed SwiGLU experts; routing weights are the softmax probabilities, not renormalised."""

    def __init__(self, config: JambaConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Experts(config)
        self.act = _act(config.hidden_act)

    def forward(self, x: torch.Tensor, router_logits: list[torch.Tensor] | None = None) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        if router_logits is not None:
            router_logits.append(logits)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        out = moe_experts_ref(
            x, top_i, top_w.to(x.dtype), self.experts.gate_up_proj, self.experts.down_proj, self.act
        )
        return out.reshape(shape)


# ============================================================================ decoder


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + ffn(norm(x)).

    The mixer is registered as ``self_attn`` or ``mamba`` and the ffn as ``feed_forward`` so parameter
    names equal transformers' (``model.layers.N.mamba.in_proj.weight`` ...).
    """

    def __init__(self, config: JambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.is_attention = config.layer_is_attention(layer_idx)
        self.is_moe = config.layer_is_moe(layer_idx)
        if self.is_attention:
            self.self_attn = Attention(config, layer_idx)
        else:
            self.mamba = MambaMixer(config, layer_idx)
        self.feed_forward = SparseMoE(config) if self.is_moe else MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @property
    def mixer(self) -> Attention | MambaMixer:
        return self.self_attn if self.is_attention else self.mamba

    def forward(
        self,
        x: torch.Tensor,
        cache: HybridCache | None = None,
        seq_lens: torch.Tensor | None = None,
        router_logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.mixer(self.input_layernorm(x), cache, seq_lens)
        h = self.pre_ff_layernorm(x)
        h = self.feed_forward(h, router_logits) if self.is_moe else self.feed_forward(h)
        return x + h


class JambaModel(nn.Module):
    """Embedding, decoder layers and final norm (transformers' ``model.`` prefix)."""

    def __init__(self, config: JambaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: HybridCache | None = None,
        seq_lens: torch.Tensor | None = None,
        router_logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, H]. With a cache, advances it by seq_lens (see local_model.cache)."""
        batch, seqlen = input_ids.shape
        if cache is not None:
            if cache.lengths.shape[0] != batch:
                raise ValueError(f"cache has {cache.lengths.shape[0]} rows, input has {batch}")
            if seq_lens is not None and bool((seq_lens == seqlen).all()):
                seq_lens = None  # not ragged: lets T == 1 take the single-step decode kernels
            cache.zero_fresh_states()
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cache, seq_lens, router_logits)
        if cache is not None:
            cache.lengths = cache.lengths + (seqlen if seq_lens is None else seq_lens)
        return self.final_layernorm(x)


class JambaForCausalLM(nn.Module):
    """The language model: `JambaModel` + lm_head (tied to the embedding if the config says so).

    Construction initialises weights deterministically from ``seed`` (skipped on the meta device, where
    the loader assigns checkpoint tensors instead).
    """

    def __init__(self, config: JambaConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.model = JambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        if not self.lm_head.weight.is_meta:
            self.reset_parameters(seed)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: HybridCache | None = None,
        seq_lens: torch.Tensor | None = None,
        last_only: bool = False,
        router_logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (or [B, 1, vocab] at each row's last valid token if ``last_only``).

        input_ids: [B, T], right-padded when rows have different numbers of new tokens (``seq_lens``).
        cache: optional `HybridCache`, read and advanced in place. Without one: a full causal prefill.
        router_logits: pass a list to collect each MoE layer's router logits (for an auxiliary loss).
        """
        hidden = self.model(input_ids, cache, seq_lens, router_logits)
        if last_only:
            last = (
                seq_lens if seq_lens is not None else torch.full_like(input_ids[:, 0], input_ids.shape[1])
            ) - 1
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last][:, None]
        return self.lm_head(hidden)

    def allocate_cache(
        self,
        batch_size: int,
        capacity: int,
        *,
        num_slots: int | None = None,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> HybridCache:
        """A zeroed cache on this model's device/dtype (see `HybridCache.allocate`)."""
        w = self.lm_head.weight
        return HybridCache.allocate(
            self.config,
            batch_size,
            capacity,
            num_slots=num_slots,
            device=w.device,
            dtype=w.dtype,
            ssm_dtype=ssm_dtype,
        )

    def set_kernels(self, kernels: MambaKernels) -> None:
        for module in self.modules():
            if isinstance(module, MambaMixer):
                module.kernels = kernels

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic init for training from scratch (same result on any device).

        Linear/embedding weights ~ N(0, initializer_range) as in transformers; residual output projections
        scaled by 1/sqrt(2 * num_layers) (GPT-2 / mamba_simple) so the residual stream does not grow with
        depth; dt_proj as in mamba_simple (bias = softplus^-1 of dt ~ logUniform[1e-3, 1e-1]) so initial
        time steps span useful memory lengths; A_log = log(1..N), D = 1, norms = 1.
        """
        g = torch.Generator().manual_seed(seed)
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.num_hidden_layers)

        def fill(p: torch.Tensor, t: torch.Tensor) -> None:
            p.copy_(t.to(device=p.device, dtype=p.dtype))

        def normal(p: torch.Tensor, s: float) -> None:
            fill(p, torch.empty(p.shape).normal_(0.0, s, generator=g))

        for name, module in self.named_modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, MambaMixer):
                fill(
                    module.A_log,
                    torch.log(torch.arange(1, module.d_state + 1, dtype=torch.float32)).repeat(
                        module.d_inner, 1
                    ),
                )
                module.D.fill_(1.0)
                bound = module.dt_rank**-0.5
                fill(
                    module.dt_proj.weight,
                    torch.empty(module.dt_proj.weight.shape).uniform_(-bound, bound, generator=g),
                )
                dt = torch.exp(
                    torch.rand(module.d_inner, generator=g) * (math.log(0.1) - math.log(1e-3))
                    + math.log(1e-3)
                )
                dt = dt.clamp(min=1e-4)
                fill(module.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            elif isinstance(module, Experts):
                normal(module.gate_up_proj, std)
                normal(module.down_proj, out_std)
            elif isinstance(module, nn.Linear) and not name.endswith("dt_proj"):
                if name == "lm_head" and self.config.tie_word_embeddings:
                    continue
                residual_out = name.endswith(("o_proj", "out_proj", "down_proj"))
                normal(module.weight, out_std if residual_out else std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                normal(module.weight, std)
            elif isinstance(module, nn.Conv1d):
                bound = 1.0 / math.sqrt(module.kernel_size[0])  # PyTorch's default fan-in bound for depthwise
                fill(module.weight, torch.empty(module.weight.shape).uniform_(-bound, bound, generator=g))
                if module.bias is not None:
                    fill(module.bias, torch.empty(module.bias.shape).uniform_(-bound, bound, generator=g))
