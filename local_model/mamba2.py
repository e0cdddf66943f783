"""Mamba-2 (SSD) mixer in plain PyTorch, with its reference kernels beside it.

Numerically this follows the pure-PyTorch path of transformers' Mamba-2 hybrids (``modeling_bamba.py``,
``modeling_granitemoehybrid.py``, ``modeling_nemotron_h.py``, ``modeling_falcon_h1.py``,
``modeling_zamba2.py``), which all share one mixer:

* ``in_proj`` -> (z, xBC, dt); z gates the output, xBC = [x | B | C] goes through one causal depthwise
  conv + SiLU, dt is one scalar per head;
* x is split into ``num_heads`` heads of ``head_dim``; B and C into ``n_groups`` groups of ``d_state``
  (head h reads group ``h // (num_heads // n_groups)``);
* dt = softplus(dt + dt_bias), clamped to ``dt_limit`` in the chunked (prefill) path only, as
  transformers, mamba-ssm and vLLM do (their single-token update does not clamp);
* A = -exp(A_log) is one scalar per head: h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T, y_t = C_t h_t + D x_t;
* the output is gated and normalised (`GatedRMSNorm`: RMSNorm over ``n_groups`` groups, gate before or
  after the norm, or a plain SiLU gate), then ``out_proj``.

Kernel-style functions: `ssd_chunk_scan_ref` (a sequence chunk, optionally continuing pool rows of state
and right-padded with ``seq_lens``) and `ssd_state_update_ref` (one token). `Mamba2Kernels` bundles them
with the causal conv of `local_model.model`; the mixer calls them by keyword only (the convention of the
Mamba-1 kernel bundle), so `Mamba2Mixer.kernels` can be swapped for faster ones with the same keywords. The state per slot is ``conv [conv_dim, d_conv - 1]`` and
``ssm [num_heads, head_dim, d_state]`` (see `local_model.cache.MambaState`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import HybridCache, MambaState
from .model import _rows, causal_conv, causal_conv1d_ref, causal_conv1d_update_ref

NO_DT_LIMIT = (0.0, float("inf"))


def _discretize_dt(
    dt: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float] | None,
) -> torch.Tensor:
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit is not None and tuple(dt_limit) != NO_DT_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def ssd_chunk_scan_ref(
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
    """The SSD scan over a chunk of tokens, in blocks of ``chunk_size`` (the quadratic "dual" form inside
    a block, the recurrence between blocks).

    x: [B, T, H, P]; dt: [B, T, H]; A: [H] (negative); B, C: [B, T, G, N]; D: [H]; z: [B, T, H, P].
    ssm_state: optional pool [S, H, P, N]; rows ``state_indices`` (default 0..B-1) give the initial state
    and receive the final one. seq_lens: optional [B]; steps t >= seq_lens[b] get dt = 0, which leaves
    the state untouched (exp(0) = 1, no input). Returns y: [B, T, H, P] in x.dtype.

    Within a block with cumulative log-decays a_l = sum_{i<=l} dt_i A:
    y_l = sum_{s<=l} (C_l . B_s) exp(a_l - a_s) dt_s x_s + exp(a_l) C_l . h_0, and the block's final state
    is exp(a_L) h_0 + sum_s exp(a_L - a_s) dt_s B_s x_s^T. Only non-positive exponents appear.
    """
    batch, seqlen, heads, _ = x.shape
    groups = B.shape[2]
    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [B, T, H]
    if seq_lens is not None:
        dt = dt * (torch.arange(seqlen, device=dt.device)[None, :] < seq_lens[:, None])[..., None]
    rep = heads // groups
    Bh = B.float().repeat_interleave(rep, dim=2)  # [B, T, H, N]
    Ch = C.float().repeat_interleave(rep, dim=2)
    xf = x.float()
    xdt = xf * dt[..., None]  # [B, T, H, P]
    dA = dt * A.float()  # [B, T, H]
    rows = None
    if ssm_state is None:
        h = xf.new_zeros(batch, heads, x.shape[3], B.shape[3])
    else:
        rows = _rows(ssm_state, state_indices, batch)
        h = ssm_state[rows].float()
    ys = []
    for t0 in range(0, seqlen, chunk_size):
        sl = slice(t0, min(t0 + chunk_size, seqlen))
        cs = dA[:, sl].cumsum(dim=1)  # [B, L, H]
        length = cs.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        seg = (cs[:, :, None, :] - cs[:, None, :, :]).masked_fill(~causal[None, :, :, None], float("-inf"))
        scores = torch.einsum("blhn,bshn->blsh", Ch[:, sl], Bh[:, sl]) * torch.exp(seg)  # [B, L, L, H]
        y = torch.einsum("blsh,bshp->blhp", scores, xdt[:, sl])
        y = y + torch.einsum("blhn,bhpn->blhp", Ch[:, sl], h) * torch.exp(cs)[..., None]
        to_end = torch.exp(cs[:, -1:, :] - cs)  # [B, L, H]
        h = h * torch.exp(cs[:, -1])[:, :, None, None] + torch.einsum(
            "blhn,blhp->bhpn", Bh[:, sl] * to_end[..., None], xdt[:, sl]
        )
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else xf.new_zeros(xf.shape)
    if ssm_state is not None:
        ssm_state[rows] = h.to(ssm_state.dtype)
    if D is not None:
        y = y + xf * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def ssd_state_update_ref(
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
    """One decode step. x, z: [B, H, P]; dt: [B, H]; A, D, dt_bias: [H]; B, C: [B, G, N].

    ssm_state: pool [S, H, P, N]; rows ``state_indices`` (default 0..B-1) are updated in place.
    Returns y: [B, H, P] in x.dtype.
    """
    rows = _rows(ssm_state, state_indices, x.shape[0])
    heads = x.shape[1]
    rep = heads // B.shape[1]
    dt = _discretize_dt(dt, dt_bias, dt_softplus, None)  # [B, H]
    Bh = B.float().repeat_interleave(rep, dim=1)  # [B, H, N]
    Ch = C.float().repeat_interleave(rep, dim=1)
    xf = x.float()
    h = ssm_state[rows].float()
    h = h * torch.exp(dt * A.float())[..., None, None] + (xf * dt[..., None])[..., None] * Bh[:, :, None, :]
    ssm_state[rows] = h.to(ssm_state.dtype)
    y = torch.einsum("bhpn,bhn->bhp", h, Ch)
    if D is not None:
        y = y + xf * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


@dataclass(frozen=True)
class Mamba2Kernels:
    """The four Mamba-2 sequence ops; replace any of them with a kernel of the same signature."""

    causal_conv1d: Callable[..., torch.Tensor] = causal_conv1d_ref
    causal_conv1d_update: Callable[..., torch.Tensor] = causal_conv1d_update_ref
    chunk_scan: Callable[..., torch.Tensor] = ssd_chunk_scan_ref
    state_update: Callable[..., torch.Tensor] = ssd_state_update_ref


DEFAULT_MAMBA2_KERNELS = Mamba2Kernels()


# ============================================================================ the mixer


@dataclass(frozen=True)
class Mamba2Options:
    """Shape and flavour of one family's Mamba-2 mixer (read from its config by the family module)."""

    hidden_size: int
    num_heads: int
    head_dim: int
    n_groups: int
    d_state: int
    d_conv: int
    chunk_size: int
    conv_bias: bool = True
    in_proj_bias: bool = False
    out_proj_bias: bool = False
    activation: str = "silu"
    # "gate_then_norm": RMSNorm(y * silu(z)) (Bamba, Granite, Nemotron-H, Zamba2); "norm_then_gate":
    # RMSNorm(y) * silu(z) (Falcon-H1 with mamba_norm_before_gate); "gate": y * silu(z), no norm weight.
    gate_norm: str = "gate_then_norm"
    norm_eps: float = 1e-6
    dt_limit: tuple[float, float] = NO_DT_LIMIT
    ssm_in_multiplier: float = 1.0  # Falcon-H1: scales the mixer's input
    zxbcdt_multipliers: tuple[float, ...] | None = None  # Falcon-H1: per-section scales of in_proj's output

    @property
    def d_inner(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    @property
    def conv_state_shape(self) -> tuple[int, int]:
        return (self.conv_dim, self.d_conv - 1)

    @property
    def ssm_state_shape(self) -> tuple[int, int, int]:
        return (self.num_heads, self.head_dim, self.d_state)


class GatedRMSNorm(nn.Module):
    """RMSNorm over ``n_groups`` equal groups of the channels, combined with a SiLU gate (in fp32)."""

    def __init__(self, dim: int, n_groups: int, eps: float, gate_first: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.n_groups, self.eps, self.gate_first = n_groups, eps, gate_first

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        y = y.float()
        if self.gate_first:
            y = y * F.silu(z.float())
        g = y.view(*y.shape[:-1], self.n_groups, -1)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        y = self.weight.float() * g.view(y.shape)
        if not self.gate_first:
            y = y * F.silu(z.float())
        return y.to(dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2 sequence mixer; parameter names are transformers' (in_proj, conv1d, dt_bias, A_log, D,
    norm, out_proj). ``cache_index`` picks its `MambaState` in a `HybridCache`."""

    def __init__(self, opts: Mamba2Options, cache_index: int) -> None:
        super().__init__()
        self.opts = opts
        self.cache_index = cache_index
        h, d, n_heads = opts.hidden_size, opts.d_inner, opts.num_heads
        self.in_proj = nn.Linear(h, d + opts.conv_dim + n_heads, bias=opts.in_proj_bias)
        self.conv1d = nn.Conv1d(
            opts.conv_dim, opts.conv_dim, opts.d_conv, groups=opts.conv_dim, bias=opts.conv_bias
        )
        self.dt_bias = nn.Parameter(torch.ones(n_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = (
            GatedRMSNorm(d, opts.n_groups, opts.norm_eps, gate_first=opts.gate_norm == "gate_then_norm")
            if opts.gate_norm != "gate"
            else None
        )
        self.out_proj = nn.Linear(d, h, bias=opts.out_proj_bias)
        self.kernels = DEFAULT_MAMBA2_KERNELS

    def _section_multipliers(self, like: torch.Tensor) -> torch.Tensor:
        """Falcon-H1's per-section scales of the in_proj output [z | x | B | C | dt] as one vector."""
        o = self.opts
        assert o.zxbcdt_multipliers is not None
        g = o.n_groups * o.d_state
        sizes = (o.d_inner, o.d_inner, g, g, o.num_heads)
        return torch.cat(
            [
                torch.full((s,), float(m), dtype=like.dtype, device=like.device)
                for s, m in zip(sizes, o.zxbcdt_multipliers, strict=True)
            ]
        )

    def forward(
        self, hidden: torch.Tensor, cache: HybridCache | None = None, seq_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden: [B, T, H] -> [B, T, H]; without a cache a fresh sequence, with one a continuation
        (prefill chunk, ragged rows by ``seq_lens``) or, for T == 1 and no ``seq_lens``, one decode step."""
        o, kern = self.opts, self.kernels
        batch, seqlen, _ = hidden.shape
        state: MambaState | None = None
        if cache is not None:
            state = cache.layers[self.cache_index]
            assert isinstance(state, MambaState), f"cache entry {self.cache_index} expects a MambaState"
        slots = cache.slots if cache is not None else None
        decode = state is not None and seqlen == 1 and seq_lens is None

        if o.ssm_in_multiplier != 1.0:
            hidden = hidden * o.ssm_in_multiplier
        zxbcdt = self.in_proj(hidden)
        if o.zxbcdt_multipliers is not None and any(m != 1.0 for m in o.zxbcdt_multipliers):
            zxbcdt = zxbcdt * self._section_multipliers(zxbcdt)
        z, xbc, dt = zxbcdt.split([o.d_inner, o.conv_dim, o.num_heads], dim=-1)

        # causal depthwise conv over [x | B | C] (its window is part of the recurrent state)
        xbc = xbc.transpose(1, 2)
        xbc = causal_conv(kern, self.conv1d, xbc, o.activation, state, slots, seq_lens, decode)
        x, B, C = xbc.transpose(1, 2).split(
            [o.d_inner, o.n_groups * o.d_state, o.n_groups * o.d_state], dim=-1
        )

        A = -torch.exp(self.A_log.float())
        if decode:
            y = kern.state_update(
                ssm_state=state.ssm,
                x=x.reshape(batch, o.num_heads, o.head_dim),
                dt=dt[:, 0],
                A=A,
                B=B.reshape(batch, o.n_groups, o.d_state),
                C=C.reshape(batch, o.n_groups, o.d_state),
                D=self.D,
                dt_bias=self.dt_bias,
                dt_softplus=True,
                state_indices=slots,
            )
        else:
            y = kern.chunk_scan(
                x=x.reshape(batch, seqlen, o.num_heads, o.head_dim),
                dt=dt,
                A=A,
                B=B.reshape(batch, seqlen, o.n_groups, o.d_state),
                C=C.reshape(batch, seqlen, o.n_groups, o.d_state),
                chunk_size=o.chunk_size,
                D=self.D,
                dt_bias=self.dt_bias,
                dt_softplus=True,
                dt_limit=o.dt_limit,
                ssm_state=state.ssm if state is not None else None,
                state_indices=slots,
                seq_lens=seq_lens,
            )
        y = y.reshape(batch, seqlen, o.d_inner)
        y = self.norm(y, z) if self.norm is not None else (y.float() * F.silu(z.float())).to(y.dtype)
        return self.out_proj(y.to(hidden.dtype))
