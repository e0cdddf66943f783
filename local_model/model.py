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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .cache import AllocatesCache, HybridCache, KVCache, MambaState
from .config import JambaConfig
from .kernels import DEFAULT_KERNELS, REFERENCE_KERNELS, KernelBundle  # noqa: F401  (re-exported)
from .kernels.reference import (  # noqa: F401  (re-exported: the model's reference kernels)
    ACTIVATIONS,
    _act,
    _discretization_dt,
    _rows,
    _scan_epilogue,
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    moe_experts_ref,
    selective_scan_auto,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update_ref,
)

# The bundle type under its older name (train.py and scan_train.py build bundles through it).
MambaKernels = KernelBundle

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


def attention_over_context(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of ``T`` new queries over ``S >= T`` keys whose last ``T`` are the queries' own
    tokens: query t sees keys ``0 .. S - T + t``. q: [B, H, T, hd]; keys, values: [B, Hkv, S, hd].

    No dense mask (a 16K-token chunk over a 256K context would need a 4G-element one): SDPA's lower-right
    causal bias, which runs the flash kernel on CUDA in half precision. GQA reads K/V in place when flash
    takes these inputs; otherwise K/V are repeated per query head (the CPU and fp32 paths).
    """
    from torch.backends.cuda import SDPAParams, can_use_flash_attention
    from torch.nn.attention.bias import causal_lower_right

    t, s = q.shape[2], keys.shape[2]
    n_rep = q.shape[1] // keys.shape[1]
    gqa = (
        n_rep > 1
        and q.is_cuda
        and can_use_flash_attention(SDPAParams(q, keys, values, None, 0.0, False, True))
    )
    bias = causal_lower_right(t, s) if t != s else None

    def sdpa(k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> torch.Tensor:
        if bias is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=enable_gqa)

    if gqa:
        try:
            return sdpa(keys, values, True)
        except RuntimeError:  # a torch whose flash kernel refuses grouped K/V: repeat them below
            pass
    if n_rep > 1:
        keys, values = repeat_kv(keys, n_rep), repeat_kv(values, n_rep)
    return sdpa(keys, values, False)


def last_positions(
    hidden: torch.Tensor, input_ids: torch.Tensor, seq_lens: torch.Tensor | None
) -> torch.Tensor:
    """Each row's hidden state at its last valid input position (``seq_lens[b] - 1``, default T - 1):
    [B, T, H] -> [B, 1, H]."""
    last = (seq_lens if seq_lens is not None else torch.full_like(input_ids[:, 0], input_ids.shape[1])) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last][:, None]


def causal_conv(
    kern: Any,
    conv1d: nn.Conv1d,
    x: torch.Tensor,
    activation: str,
    state: MambaState | None,
    slots: torch.Tensor | None,
    seq_lens: torch.Tensor | None,
    decode: bool,
) -> torch.Tensor:
    """A mixer's causal depthwise conv + activation on x [B, D, T] through its kernels: one step on the
    cached window when ``decode`` (T == 1), else the whole chunk, continuing the cached window if any."""
    conv_w, conv_b = conv1d.weight.squeeze(1), conv1d.bias
    if decode:
        out = kern.causal_conv1d_update(
            x=x[..., 0],
            conv_state=state.conv,  # decode implies a cached state
            weight=conv_w,
            bias=conv_b,
            activation=activation,
            state_indices=slots,
        )
        return out[..., None]
    return kern.causal_conv1d(
        x=x,
        weight=conv_w,
        bias=conv_b,
        activation=activation,
        conv_state=None if state is None else state.conv,
        state_indices=slots,
        seq_lens=seq_lens,
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
        self.kernels = DEFAULT_KERNELS

    def forward(
        self, x: torch.Tensor, cache: HybridCache | None = None, seq_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, seqlen, _ = x.shape
        q = self.q_proj(x).view(batch, seqlen, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is None:
            out = self.kernels.attention_prefill(
                q=q, k=k, v=v, scale=self.scale, dropout_p=self.dropout if self.training else 0.0
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
        x = causal_conv(kern, self.conv1d, x, self.activation, state, slots, seq_lens, decode)

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
                ssm_state=state.ssm,
                x=x[..., 0],
                dt=dt[..., 0],
                A=A,
                B=B[..., 0],
                C=C[..., 0],
                D=self.D,
                z=z[..., 0],
                dt_bias=dt_bias,
                dt_softplus=True,
                state_indices=slots,
            )
            y = y[..., None]
        else:
            y = kern.selective_scan(
                u=x,
                delta=dt,
                A=A,
                B=B,
                C=C,
                D=self.D,
                z=z,
                delta_bias=dt_bias,
                delta_softplus=True,
                ssm_state=None if state is None else state.ssm,
                state_indices=slots,
                seq_lens=seq_lens,
            )

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
        self.kernels = DEFAULT_KERNELS

    def forward(self, x: torch.Tensor, router_logits: list[torch.Tensor] | None = None) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        if router_logits is not None:
            router_logits.append(logits)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        out = self.kernels.moe_experts(
            x=x,
            top_k_index=top_i,
            top_k_weights=top_w.to(x.dtype),
            gate_up_proj=self.experts.gate_up_proj,
            down_proj=self.experts.down_proj,
            act=self.act,
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


class JambaForCausalLM(AllocatesCache, nn.Module):
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
            hidden = last_positions(hidden, input_ids, seq_lens)
        return self.lm_head(hidden)

    def set_kernels(self, kernels: KernelBundle) -> None:
        for module in self.modules():
            if isinstance(module, (Attention, MambaMixer, SparseMoE)):
                module.kernels = kernels

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0, *, on_device: bool = False) -> None:
        """Deterministic init for training from scratch (same result on any device).

        ``on_device``: draw the random numbers on the parameters' device instead of the CPU (for models too
        large to initialise through host memory in reasonable time; the values then differ from a CPU init).

        Linear/embedding weights ~ N(0, initializer_range) as in transformers; residual output projections
        scaled by 1/sqrt(2 * num_layers) (GPT-2 / mamba_simple) so the residual stream does not grow with
        depth; dt_proj as in mamba_simple (bias = softplus^-1 of dt ~ logUniform[1e-3, 1e-1]) so initial
        time steps span useful memory lengths; A_log = log(1..N), D = 1, norms = 1.
        """
        dev = self.lm_head.weight.device if on_device else torch.device("cpu")
        g = torch.Generator(dev).manual_seed(seed)
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.num_hidden_layers)

        def fill(p: torch.Tensor, t: torch.Tensor) -> None:
            p.copy_(t.to(device=p.device, dtype=p.dtype))

        def normal(p: torch.Tensor, s: float) -> None:
            fill(p, torch.empty(p.shape, device=dev).normal_(0.0, s, generator=g))

        for name, module in self.named_modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, MambaMixer):
                fill(
                    module.A_log,
                    torch.log(torch.arange(1, module.d_state + 1, dtype=torch.float32, device=dev)).repeat(
                        module.d_inner, 1
                    ),
                )
                module.D.fill_(1.0)
                bound = module.dt_rank**-0.5
                fill(
                    module.dt_proj.weight,
                    torch.empty(module.dt_proj.weight.shape, device=dev).uniform_(-bound, bound, generator=g),
                )
                dt = torch.exp(
                    torch.rand(module.d_inner, generator=g, device=dev) * (math.log(0.1) - math.log(1e-3))
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
                shape = module.weight.shape
                fill(module.weight, torch.empty(shape, device=dev).uniform_(-bound, bound, generator=g))
                if module.bias is not None:
                    shape = module.bias.shape
                    fill(module.bias, torch.empty(shape, device=dev).uniform_(-bound, bound, generator=g))
