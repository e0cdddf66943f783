"""IBM Bamba (``model_type: bamba``): Mamba-2 layers with attention at ``attn_layer_indices``, a SwiGLU
MLP after every mixer, RoPE on half of each attention head (transformers fixes partial_rotary_factor
at 0.5 for Bamba). Follows transformers' ``modeling_bamba.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..cache import HybridCache
from ..mamba2 import Mamba2Mixer
from ..model import RMSNorm
from .common import Attention, GatedMLP, HybridConfig, HybridForCausalLM, layout, mamba_options_of


@dataclass
class BambaConfig(HybridConfig):
    model_type: ClassVar[str] = "bamba"
    layer_types: list[str] = field(default_factory=list)  # "attention" | "mamba" per layer
    intermediate_size: int = 0
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> BambaConfig:
        n = int(d["num_hidden_layers"])
        attn = set(d.get("attn_layer_indices") or [])
        types = ["attention" if i in attn else "mamba" for i in range(n)]
        hidden = int(d["hidden_size"])
        d_inner = int(d.get("mamba_expand", 2)) * hidden
        mamba = mamba_options_of(d, hidden, d_inner, 1e-5)
        common = HybridConfig.common_fields(d)
        rope = d.get("rope_parameters") or {}
        common["partial_rotary_factor"] = float(rope.get("partial_rotary_factor", 0.5))
        entries = layout([[t] for t in types])
        return cls(
            **common,
            num_hidden_layers=n,
            attn_head_dim=int(d.get("head_dim") or hidden // common["num_attention_heads"]),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            mamba=mamba,
            layer_entries=entries,
            layer_types=types,
            intermediate_size=int(d["intermediate_size"]),
            hidden_act=d.get("hidden_act", "silu"),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
        )


class BambaDecoderLayer(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)); the mixer is ``mamba`` or ``self_attn``."""

    def __init__(self, c: BambaConfig, i: int) -> None:
        super().__init__()
        self.is_attention = c.layer_types[i] == "attention"
        if self.is_attention:
            self.self_attn = Attention.for_layer(c, i, bias=c.attention_bias)
        else:
            assert c.mamba is not None
            self.mamba = Mamba2Mixer(c.mamba, c.layer_entries[i]["mamba"])
        self.feed_forward = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=c.mlp_bias)
        self.input_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, rope: Any, cache: HybridCache | None, seq_lens: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.input_layernorm(x)
        h = self.self_attn(h, rope, cache, seq_lens) if self.is_attention else self.mamba(h, cache, seq_lens)
        x = x + h
        return x + self.feed_forward(self.pre_ff_layernorm(x))


class BambaModel(nn.Module):
    def __init__(self, c: BambaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(BambaDecoderLayer(c, i) for i, t in enumerate(c.layer_types))
        self.final_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)


class BambaForCausalLM(HybridForCausalLM):
    def __init__(self, config: BambaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = BambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        return self.model.layers, self.model.final_layernorm


CONFIG = BambaConfig
MODEL = BambaForCausalLM


def rename(key: str) -> str | None:
    return key


STACKED = ()
