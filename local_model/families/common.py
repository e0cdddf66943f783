"""What the Mamba-2 hybrid families share: the config base, RoPE, attention, the causal-LM wrapper and
checkpoint loading.

Cache layout. A family's layers may hold an attention mixer, a Mamba-2 mixer, both (Falcon-H1's
parallel layers, Zamba2's hybrid layers) or neither (Nemotron-H's MLP blocks). Every mixer gets one
*cache entry*, numbered consecutively layer by layer (`layout`, ``config.layer_entries``):
``HybridCache.layers[e]`` is a `KVCache` for ``e in config.attention_layer_ids`` and a `MambaState` for
``e in config.mamba_layer_ids``; ``config.num_cache_entries`` entries in all. The engine and
`HybridCache.allocate` read only these ids and the per-entry shapes, so they serve every family (and
Jamba, whose entries are its layers) the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import AllocatesCache, HybridCache, KVCache
from ..kernels.reference import ACTIVATIONS as KERNEL_ACTIVATIONS
from ..mamba2 import DEFAULT_MAMBA2_KERNELS, Mamba2Kernels, Mamba2Mixer, Mamba2Options
from ..model import RMSNorm, last_positions, repeat_kv
from ..weights import iter_checkpoint_tensors

# The kernels' activations plus Nemotron-H's squared ReLU.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    **KERNEL_ACTIVATIONS,
    "relu2": lambda x: torch.square(F.relu(x)),
}


def act_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _float(v: Any) -> float:
    """config.json writes infinity as {"__float__": "Infinity"} (transformers 5) or as a bare number."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    return float(v)


def dt_limit_of(d: dict[str, Any], key: str = "time_step_limit") -> tuple[float, float]:
    v = d.get(key)
    if v is None:
        return (0.0, float("inf"))
    return (_float(v[0]), _float(v[1]))


def mamba_options_of(
    d: dict[str, Any], hidden: int, d_inner: int, norm_eps: float, **overrides: Any
) -> Mamba2Options:
    """Mamba-2 mixer options from the ``mamba_*`` keys that Bamba, Granite 4.0-H and Falcon-H1 share;
    ``overrides`` set the fields a family reads from keys of its own."""
    head = d.get("mamba_d_head", "auto")
    n_heads = int(d["mamba_n_heads"])
    fields: dict[str, Any] = dict(
        hidden_size=hidden,
        num_heads=n_heads,
        head_dim=d_inner // n_heads if head in (None, "auto") else int(head),
        n_groups=int(d.get("mamba_n_groups", 1)),
        d_state=int(d["mamba_d_state"]),
        d_conv=int(d.get("mamba_d_conv", 4)),
        chunk_size=int(d.get("mamba_chunk_size", 256)),
        conv_bias=bool(d.get("mamba_conv_bias", True)),
        in_proj_bias=bool(d.get("mamba_proj_bias", False)),
        out_proj_bias=bool(d.get("mamba_proj_bias", False)),
        activation=d.get("hidden_act", "silu"),
        norm_eps=float(d.get("rms_norm_eps", norm_eps)),
        dt_limit=dt_limit_of(d),
    )
    fields.update(overrides)
    return Mamba2Options(**fields)


@dataclass
class HybridConfig:
    """Fields every family has, in one vocabulary, plus the cache layout (see module docstring).

    Family configs subclass this with their own knobs and fill it from the HF ``config.json``
    (``from_hf_dict``); ``raw`` keeps that json as read.
    """

    model_type: ClassVar[str] = ""
    vocab_size: int = 0
    hidden_size: int = 0
    num_hidden_layers: int = 0
    num_attention_heads: int = 1
    num_key_value_heads: int = 1
    attn_head_dim: int = 1
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    mamba: Mamba2Options | None = None
    rope_theta: float | None = None  # None: no rotary embedding
    partial_rotary_factor: float = 1.0
    layer_entries: list[dict[str, int]] = field(default_factory=list)  # per layer: mixer kind -> cache entry
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def mamba_layer_ids(self) -> list[int]:
        """Cache entries holding a `MambaState` (the name is the engine's, shared with Jamba)."""
        return [e["mamba"] for e in self.layer_entries if "mamba" in e]

    @property
    def attention_layer_ids(self) -> list[int]:
        """Cache entries holding a `KVCache`."""
        return [e["attention"] for e in self.layer_entries if "attention" in e]

    @property
    def num_cache_entries(self) -> int:
        return sum(len(e) for e in self.layer_entries)

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    @property
    def mamba_conv_state_shape(self) -> tuple[int, ...]:
        assert self.mamba is not None
        return self.mamba.conv_state_shape

    @property
    def mamba_ssm_state_shape(self) -> tuple[int, ...]:
        assert self.mamba is not None
        return self.mamba.ssm_state_shape

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.mamba is not None:
            m = self.mamba
            if m.num_heads % m.n_groups:
                raise ValueError("the Mamba heads must be a multiple of the Mamba groups (n_groups)")
            if m.d_conv < 1 or m.chunk_size < 1:
                raise ValueError("mamba d_conv and chunk_size must be >= 1")

    @staticmethod
    def common_fields(d: dict[str, Any]) -> dict[str, Any]:
        """The shared fields that read the same in every family's json."""
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if kind != "default":
            raise ValueError(f"rope_type {kind!r} is not supported (only 'default')")
        return dict(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            num_attention_heads=int(d.get("num_attention_heads", 1)),
            num_key_value_heads=int(d.get("num_key_value_heads") or d.get("num_attention_heads", 1)),
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            partial_rotary_factor=float(rope.get("partial_rotary_factor", 1.0)),
            raw=dict(d),
        )


def layout(kinds: list[list[str]]) -> list[dict[str, int]]:
    """Consecutive cache entries for every mixer, layer by layer: ``kinds[i]`` lists layer i's mixers
    ("mamba", "attention"; none for an MLP-only layer). Returns, per layer, mixer kind -> entry."""
    out: list[dict[str, int]] = []
    n = 0
    for ks in kinds:
        out.append({k: n + j for j, k in enumerate(ks)})
        n += len(ks)
    return out


# ============================================================================ attention


def rope_cos_sin(
    positions: torch.Tensor, rot_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """cos/sin [B, T, rot_dim] for integer positions [B, T] (transformers' default RoPE, half-split layout)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float32, device=positions.device) / rot_dim)
    )
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, hd]; rotates the first cos.shape[-1] channels, passes the rest through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    xr, xp = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + rotated * sin, xp], dim=-1)


class Attention(nn.Module):
    """Causal grouped-query attention with optional RoPE; q/k/v/o names as transformers'.

    ``key_multiplier`` scales keys before RoPE (Falcon-H1); ``scale`` is the softmax scale. With a
    cache it stores K/V and attends through ``KVCache.attend`` (contiguous or paged)."""

    def __init__(
        self,
        in_dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        out_dim: int,
        cache_index: int,
        *,
        bias: bool = False,
        scale: float | None = None,
        key_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.cache_index = cache_index
        self.scale = head_dim**-0.5 if scale is None else scale
        self.key_multiplier = key_multiplier
        self.q_proj = nn.Linear(in_dim, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(in_dim, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(in_dim, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, out_dim, bias=bias)

    @classmethod
    def for_layer(cls, c: HybridConfig, i: int, **kwargs: Any) -> Attention:
        """Layer ``i``'s attention at the model width, with the config's heads and cache entry."""
        return cls(
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.attn_head_dim,
            c.hidden_size,
            c.layer_entries[i]["attention"],
            **kwargs,
        )

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...] | None,
        cache: HybridCache | None = None,
        seq_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.attend(*self.qkv(x), rope, cache, seq_lens, self.cache_index)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope: tuple[torch.Tensor, ...] | None,
        cache: HybridCache | None,
        seq_lens: torch.Tensor | None,
        cache_index: int,
    ) -> torch.Tensor:
        """Projected q, k, v [B, T, heads * hd] -> RoPE, causal attention (through ``cache.layers[cache_index]``
        when there is a cache) -> o_proj."""
        batch, seqlen, _ = q.shape
        q = q.view(batch, seqlen, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.key_multiplier != 1.0:
            k = k * self.key_multiplier
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is None:
            n_rep = self.n_heads // self.n_kv_heads
            out = F.scaled_dot_product_attention(
                q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=True, scale=self.scale
            )
        else:
            kv = cache.layers[cache_index]
            assert isinstance(kv, KVCache), f"cache entry {cache_index} expects a KVCache"
            if seq_lens is None:
                seq_lens = torch.full((batch,), seqlen, dtype=torch.long, device=q.device)
            out = kv.attend(q, k, v, cache.lengths, seq_lens, cache.slots, self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seqlen, -1))


class GatedMLP(nn.Module):
    """down(act(gate(x) * gate_multiplier) * up(x)) * down_multiplier (SwiGLU; Falcon-H1's multipliers)."""

    def __init__(
        self,
        hidden: int,
        inter: int,
        act: str,
        *,
        bias: bool = False,
        gate_multiplier: float = 1.0,
        down_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=bias)
        self.up_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)
        self.act = act_fn(act)
        self.gate_multiplier, self.down_multiplier = gate_multiplier, down_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        if self.gate_multiplier != 1.0:
            gate = gate * self.gate_multiplier
        y = self.down_proj(self.act(gate) * self.up_proj(x))
        return y * self.down_multiplier if self.down_multiplier != 1.0 else y


# An expert callable ``expert(e, xs)`` maps xs [M, in] through expert ``e``: an int (every row through that
# expert), a LongTensor [M] (row m through expert e[m], weights gathered per row) or None (every row through
# every expert: [E, M, out]). `expert_linear` is the projection that serves all three.
ExpertFn = Callable[[Any, torch.Tensor], torch.Tensor]

# Set (by `sync_free_experts`) while a decode step that must not read back to the host runs: `experts` then
# takes the routing-independent paths of `experts_sync_free` instead of `experts_ref`'s loop over the
# experts that got tokens.
_SYNC_FREE_EXPERTS: contextvars.ContextVar[bool] = contextvars.ContextVar("sync_free_experts", default=False)


@contextlib.contextmanager
def sync_free_experts() -> Iterator[None]:
    """Within the block, the families' MoE layers route without a host sync (CUDA-graph capturable)."""
    token = _SYNC_FREE_EXPERTS.set(True)
    try:
        yield
    finally:
        _SYNC_FREE_EXPERTS.reset(token)


def expert_linear(xs: torch.Tensor, w: torch.Tensor, e: int | torch.Tensor | None) -> torch.Tensor:
    """xs through expert weight ``w[e]`` ([E, out, in] stacked); see `ExpertFn` for the three kinds of ``e``.
    With ``e`` None, xs may already be per expert ([E, M, in])."""
    if isinstance(e, int):
        return F.linear(xs, w[e])
    if e is None:
        return torch.einsum("mi,eoi->emo" if xs.dim() == 2 else "emi,eoi->emo", xs, w)
    return torch.bmm(w[e], xs[:, :, None])[:, :, 0]


def experts(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    expert: ExpertFn,
    num_experts: int,
) -> torch.Tensor:
    """Weighted sum of the chosen experts per token (x [N, H], index/weights [N, k]): `experts_ref`, or
    `experts_sync_free` inside `sync_free_experts`."""
    if _SYNC_FREE_EXPERTS.get():
        return experts_sync_free(x, top_k_index, top_k_weights, expert, num_experts)
    return experts_ref(x, top_k_index, top_k_weights, expert)


def experts_ref(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    expert: ExpertFn,
) -> torch.Tensor:
    """Weighted sum of the chosen experts per token: x [N, H], index/weights [N, k]; ``expert(e, xs)``."""
    out = torch.zeros_like(x)
    for e in top_k_index.unique().tolist():
        token, which = (top_k_index == e).nonzero(as_tuple=True)
        y = expert(e, x[token]) * top_k_weights[token, which, None].to(x.dtype)
        out.index_add_(0, token, y.to(out.dtype))
    return out


def experts_sync_free(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    expert: ExpertFn,
    num_experts: int,
) -> torch.Tensor:
    """`experts_ref`'s result with shapes that do not depend on the routing (no host sync). With few
    (token, choice) pairs (3 N k <= E, small decode batches) each pair runs its expert's weights gathered
    into a copy (read, written, read again: about 3 N k experts' worth of traffic); otherwise every expert
    runs every token and the dense routing matrix (zero for experts not chosen) weights the sum, reading
    each expert once."""
    n, k = top_k_index.shape
    if 3 * n * k <= num_experts:
        y = expert(top_k_index.reshape(-1), x.repeat_interleave(k, dim=0))  # [N * k, H]
        return (y.view(n, k, -1) * top_k_weights[..., None].to(x.dtype)).sum(1).to(x.dtype)
    dense = x.new_zeros(n, num_experts, dtype=top_k_weights.dtype).scatter_add_(1, top_k_index, top_k_weights)
    y = expert(None, x)  # [E, N, H]
    return torch.einsum("enh,ne->nh", y, dense.to(y.dtype)).to(x.dtype)


# ============================================================================ the causal LM


class HybridForCausalLM(AllocatesCache, nn.Module):
    """Shared forward/cache plumbing; a family implements `input_embeddings` and `decoder` (or `body`
    when its layers take other arguments), and may override `embed` and ``logit_multiplier``.

    ``forward(input_ids, cache, seq_lens, last_only)`` has the contract of `JambaForCausalLM.forward`
    (see `local_model.cache`), so the engine and `LocalModel` drive every family the same way.
    """

    config: HybridConfig
    lm_head: nn.Linear

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.input_embeddings()(input_ids)

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        """The decoder layers, each called as ``layer(x, rope, cache, seq_lens)``, and the final norm."""
        raise NotImplementedError

    def body(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...] | None,
        cache: HybridCache | None,
        seq_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decoder layers and final norm: [B, T, H] -> [B, T, H]."""
        layers, final_norm = self.decoder()
        for layer in layers:
            x = layer(x, rope, cache, seq_lens)
        return final_norm(x)

    def input_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    logit_multiplier: float = 1.0

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.input_embeddings().weight

    def rope(
        self, input_ids: torch.Tensor, cache: HybridCache | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, ...] | None:
        c = self.config
        if c.rope_theta is None:
            return None
        t = torch.arange(input_ids.shape[1], device=input_ids.device)
        positions = t[None, :] if cache is None else cache.lengths[:, None] + t
        rot = int(self.rope_head_dim * c.partial_rotary_factor)
        return rope_cos_sin(positions, rot, c.rope_theta, dtype)

    @property
    def rope_head_dim(self) -> int:
        return self.config.attn_head_dim

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: HybridCache | None = None,
        seq_lens: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        batch, seqlen = input_ids.shape
        if cache is not None:
            if cache.lengths.shape[0] != batch:
                raise ValueError(f"cache has {cache.lengths.shape[0]} rows, input has {batch}")
            if seq_lens is not None and bool((seq_lens == seqlen).all()):
                seq_lens = None  # not ragged: lets T == 1 take the single-step decode kernels
            cache.zero_fresh_states()
        x = self.embed(input_ids)
        hidden = self.body(x, self.rope(input_ids, cache, x.dtype), cache, seq_lens)
        if cache is not None:
            cache.lengths = cache.lengths + (seqlen if seq_lens is None else seq_lens)
        if last_only:
            hidden = last_positions(hidden, input_ids, seq_lens)
        logits = self.lm_head(hidden)
        return logits * self.logit_multiplier if self.logit_multiplier != 1.0 else logits

    def set_kernels(self, kernels: Any) -> None:
        """Use ``kernels`` in every Mamba-2 mixer. A Mamba-1 kernel bundle (what the engine or loader
        picks for Jamba) contributes its causal-conv ops, which share the Mamba-2 mixer's keywords."""
        if not isinstance(kernels, Mamba2Kernels):
            kernels = dataclasses.replace(
                DEFAULT_MAMBA2_KERNELS,
                causal_conv1d=kernels.causal_conv1d,
                causal_conv1d_update=kernels.causal_conv1d_update,
            )
        for module in self.modules():
            if isinstance(module, Mamba2Mixer):
                module.kernels = kernels


# ============================================================================ loading


@dataclass(frozen=True)
class StackedExperts:
    """Per-expert checkpoint tensors stacked into one fused parameter.

    ``pattern`` matches a per-expert key and captures (prefix, expert, projection); ``target`` maps the
    projection name to (fused parameter name under prefix, row slice index: 0 or 1 of a [gate; up] pair,
    or None for the whole expert)."""

    pattern: re.Pattern[str]
    target: dict[str, tuple[str, int | None]]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), leaf


def assign_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` where parameter/buffer ``name`` lives (shared modules see it under every name)."""
    module, leaf = _owner(model, name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    elif leaf in module._buffers:
        module._buffers[leaf] = tensor
    else:
        raise KeyError(name)


def load_weights(
    model: HybridForCausalLM,
    path: str | Path,
    rename: Callable[[str], str | None],
    *,
    stacked: tuple[StackedExperts, ...] = (),
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> None:
    """Assign a checkpoint's tensors to ``model`` (built on the meta device).

    ``rename`` maps a checkpoint key to the model's name (None: skip it). Keys matching a `StackedExperts`
    pattern are copied into their fused tensor. Every parameter and persistent buffer must be filled
    (tied parameters count once); unknown keys are an error.
    """
    expected = {n: p for n, p in model.named_parameters()}
    expected.update({n: b for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in _persistent(model, n)})
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    filled: set[str] = set()
    fused: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []

    def cast(t: torch.Tensor) -> torch.Tensor:
        return (
            t.to(device=device, dtype=dtype) if dtype is not None and t.is_floating_point() else t.to(device)
        )

    for key, tensor in iter_checkpoint_tensors(path, device=device):
        name = rename(key)
        if name is None:
            continue
        for st in stacked:
            m = st.pattern.match(name)
            if m is None:
                continue
            prefix, e, proj = m.group(1), int(m.group(2)), m.group(3)
            pname, half = st.target[proj]
            target = f"{prefix}.{pname}"
            if target not in expected:
                unexpected.append(key)
                break
            if target not in fused:
                ref = expected[target]
                fused[target] = torch.empty(ref.shape, device=device, dtype=dtype or tensor.dtype)
            dst = fused[target][e]
            if half is not None:
                dst = dst.chunk(2, dim=0)[half]
            if tuple(dst.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{key}: checkpoint shape {tuple(tensor.shape)} != expected {tuple(dst.shape)}"
                )
            dst.copy_(tensor)
            break
        else:
            if name not in expected:
                if _is_alias(model, name):  # a tied copy (e.g. Zamba2's reused shared block) stored again
                    continue
                unexpected.append(key)
                continue
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(
                    f"{key}: checkpoint shape {tuple(tensor.shape)} != model {tuple(expected[name].shape)}"
                )
            assign_tensor(model, name, cast(tensor))
            filled.add(name)
    for name, tensor in fused.items():
        assign_tensor(model, name, tensor)
        filled.add(name)
    missing = sorted(set(expected) - filled)
    if missing or unexpected:
        raise KeyError(f"checkpoint mismatch: missing={missing[:10]} unexpected={unexpected[:10]}")
    model.tie_weights()


def _is_alias(model: nn.Module, name: str) -> bool:
    """``name`` reaches a parameter that the model knows under another name (weight tying)."""
    try:
        model.get_parameter(name)
    except AttributeError:
        return False
    return True


def _persistent(model: nn.Module, name: str) -> set[str]:
    module, _ = _owner(model, name)
    return set(module._buffers) - module._non_persistent_buffers_set


def read_config_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    return json.loads(path.read_text())


__all__ = [
    "Attention",
    "GatedMLP",
    "HybridConfig",
    "HybridForCausalLM",
    "Mamba2Mixer",
    "Mamba2Options",
    "RMSNorm",
    "StackedExperts",
    "act_fn",
    "expert_linear",
    "experts",
    "load_weights",
    "sync_free_experts",
]
