"""IBM Granite 4.0-H (``model_type: granitemoehybrid``): Mamba-2 and attention layers from
``layer_types``, each followed by top-k routed SwiGLU experts (softmax over the chosen logits) plus an
always-on shared SwiGLU MLP (or the shared MLP alone when ``num_local_experts`` is 0); µP-style
multipliers on the embedding, residual branches, attention scale and logits; RoPE only when
``position_embedding_type == "rope"``. Follows transformers' ``modeling_granitemoehybrid.py``; parameter
names are those of the checkpoint on disk (``block_sparse_moe.input_linear`` ...)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..cache import HybridCache
from ..mamba2 import Mamba2Mixer
from ..model import RMSNorm
from .common import (
    Attention,
    HybridConfig,
    HybridForCausalLM,
    act_fn,
    expert_linear,
    experts,
    layout,
    mamba_options_of,
)

_KINDS = {
    "mamba": "mamba",
    "linear_attention": "mamba",
    "attention": "attention",
    "full_attention": "attention",
}


@dataclass
class GraniteMoeHybridConfig(HybridConfig):
    model_type: ClassVar[str] = "granitemoehybrid"
    layer_types: list[str] = field(default_factory=list)  # "attention" | "mamba"
    intermediate_size: int = 0
    shared_intermediate_size: int = 0
    num_local_experts: int = 0
    num_experts_per_tok: int = 1
    hidden_act: str = "silu"
    attention_bias: bool = False
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float = 1.0
    logits_scaling: float = 1.0

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> GraniteMoeHybridConfig:
        n = int(d["num_hidden_layers"])
        raw_types = d.get("layer_types") or d.get("layers_block_type") or ["mamba"] * n
        try:
            types = [_KINDS[t] for t in raw_types]
        except KeyError as exc:
            raise ValueError(f"unknown granitemoehybrid layer type {exc.args[0]!r}") from None
        hidden = int(d["hidden_size"])
        d_inner = int(d.get("mamba_expand", 2)) * hidden
        mamba = mamba_options_of(d, hidden, d_inner, 1e-6)
        common = HybridConfig.common_fields(d)
        if d.get("position_embedding_type") != "rope":
            common["rope_theta"] = None
        entries = layout([[t] for t in types])
        return cls(
            **common,
            num_hidden_layers=n,
            attn_head_dim=hidden // common["num_attention_heads"],
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            mamba=mamba,
            layer_entries=entries,
            layer_types=types,
            intermediate_size=int(d["intermediate_size"]),
            shared_intermediate_size=int(d.get("shared_intermediate_size", 1024)),
            num_local_experts=int(d.get("num_local_experts", 0) or 0),
            num_experts_per_tok=int(d.get("num_experts_per_tok", 1)),
            hidden_act=d.get("hidden_act", "silu"),
            attention_bias=bool(d.get("attention_bias", False)),
            embedding_multiplier=float(d.get("embedding_multiplier", 1.0)),
            residual_multiplier=float(d.get("residual_multiplier", 1.0)),
            attention_multiplier=float(d.get("attention_multiplier", 1.0)),
            logits_scaling=float(d.get("logits_scaling", 1.0)),
        )


class _Weight(nn.Module):
    """A bare ``weight`` parameter (the checkpoint's fused expert tensors are stored under ``*.weight``)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))


class SharedMLP(nn.Module):
    """SwiGLU with fused input projection: output(act(a) * b) where [a; b] = input_linear(x)."""

    def __init__(self, hidden: int, inter: int, act: str) -> None:
        super().__init__()
        self.input_linear = nn.Linear(hidden, 2 * inter, bias=False)
        self.output_linear = nn.Linear(inter, hidden, bias=False)
        self.act = act_fn(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.input_linear(x).chunk(2, dim=-1)
        return self.output_linear(self.act(a) * b)


class Router(nn.Module):
    def __init__(self, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.layer = nn.Linear(hidden, num_experts, bias=False)


class MoE(nn.Module):
    """Top-k experts; weights = softmax over the k chosen router logits (renormalised among the chosen)."""

    def __init__(self, c: GraniteMoeHybridConfig) -> None:
        super().__init__()
        e, h, i = c.num_local_experts, c.hidden_size, c.intermediate_size
        self.top_k = c.num_experts_per_tok
        self.router = Router(h, e)
        self.input_linear = _Weight(e, 2 * i, h)
        self.output_linear = _Weight(e, h, i)
        self.act = act_fn(c.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router.layer(x).float()
        top_logits, top_i = logits.topk(self.top_k, dim=-1)
        top_w = torch.softmax(top_logits, dim=-1).to(x.dtype)
        w_in, w_out = self.input_linear.weight, self.output_linear.weight

        def expert(e: int | torch.Tensor | None, xs: torch.Tensor) -> torch.Tensor:
            a, b = expert_linear(xs, w_in, e).chunk(2, dim=-1)
            return expert_linear(self.act(a) * b, w_out, e)

        return experts(x, top_i, top_w, expert, w_in.shape[0]).reshape(shape)


class GraniteMoeHybridDecoderLayer(nn.Module):
    def __init__(self, c: GraniteMoeHybridConfig, i: int) -> None:
        super().__init__()
        self.is_attention = c.layer_types[i] == "attention"
        if self.is_attention:
            self.self_attn = Attention.for_layer(c, i, bias=c.attention_bias, scale=c.attention_multiplier)
        else:
            assert c.mamba is not None
            self.mamba = Mamba2Mixer(c.mamba, c.layer_entries[i]["mamba"])
        self.input_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.block_sparse_moe = MoE(c) if c.num_local_experts > 0 else None
        self.shared_mlp = SharedMLP(c.hidden_size, c.shared_intermediate_size, c.hidden_act)
        self.residual_multiplier = c.residual_multiplier

    def forward(
        self, x: torch.Tensor, rope: Any, cache: HybridCache | None, seq_lens: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.input_layernorm(x)
        h = self.self_attn(h, rope, cache, seq_lens) if self.is_attention else self.mamba(h, cache, seq_lens)
        x = x + h * self.residual_multiplier
        h = self.post_attention_layernorm(x)
        ff = self.shared_mlp(h)
        if self.block_sparse_moe is not None:
            ff = self.block_sparse_moe(h) + ff
        return x + ff * self.residual_multiplier


class GraniteMoeHybridModel(nn.Module):
    def __init__(self, c: GraniteMoeHybridConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(GraniteMoeHybridDecoderLayer(c, i) for i, t in enumerate(c.layer_types))
        self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)


class GraniteMoeHybridForCausalLM(HybridForCausalLM):
    def __init__(self, config: GraniteMoeHybridConfig) -> None:
        super().__init__()
        self.config = config
        self.model = GraniteMoeHybridModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logit_multiplier = 1.0 / config.logits_scaling
        self.tie_weights()

    def input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids) * self.config.embedding_multiplier

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        return self.model.layers, self.model.norm


CONFIG = GraniteMoeHybridConfig
MODEL = GraniteMoeHybridForCausalLM

# transformers >= 5 in-memory names (save_pretrained(save_original_format=False)) -> on-disk names
_IN_MEMORY = [
    (re.compile(r"\.block_sparse_moe\.router\.weight$"), ".block_sparse_moe.router.layer.weight"),
    (re.compile(r"\.block_sparse_moe\.experts\.gate_up_proj$"), ".block_sparse_moe.input_linear.weight"),
    (re.compile(r"\.block_sparse_moe\.experts\.down_proj$"), ".block_sparse_moe.output_linear.weight"),
]


def rename(key: str) -> str | None:
    for pattern, repl in _IN_MEMORY:
        key = pattern.sub(repl, key)
    return key


STACKED = ()
