"""TII Falcon-H1 (``model_type: falcon_h1``): every layer runs attention (RoPE) and a Mamba-2 mixer side by
side on the same normed input and adds both, then a SwiGLU MLP; µP multipliers on the embedding, the
mixer's input and each section of its in_proj output (z, x, B, C, dt), both branches' outputs, keys,
the MLP's gate and down projections and the logits. The mixer's gated RMSNorm is optional
(``mamba_rms_norm``; else a plain SiLU gate). Follows transformers' ``modeling_falcon_h1.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..cache import HybridCache
from ..mamba2 import Mamba2Mixer
from ..model import RMSNorm
from .common import (
    Attention,
    GatedMLP,
    HybridConfig,
    HybridForCausalLM,
    layout,
    mamba_options_of,
)


@dataclass
class FalconH1Config(HybridConfig):
    model_type: ClassVar[str] = "falcon_h1"
    intermediate_size: int = 0
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    embedding_multiplier: float = 1.0
    lm_head_multiplier: float = 1.0
    mlp_multipliers: tuple[float, float] = (1.0, 1.0)
    key_multiplier: float = 1.0
    attention_in_multiplier: float = 1.0
    attention_out_multiplier: float = 1.0
    ssm_out_multiplier: float = 1.0

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> FalconH1Config:
        n = int(d["num_hidden_layers"])
        hidden = int(d["hidden_size"])
        d_inner = (
            int(d["mamba_d_ssm"])
            if d.get("mamba_d_ssm") is not None
            else int(d.get("mamba_expand", 2)) * hidden
        )
        rms = bool(d.get("mamba_rms_norm", False))
        gate_norm = (
            ("norm_then_gate" if d.get("mamba_norm_before_gate", True) else "gate_then_norm")
            if rms
            else "gate"
        )
        mamba = mamba_options_of(
            d,
            hidden,
            d_inner,
            1e-5,
            out_proj_bias=bool(d.get("projectors_bias", False)),
            gate_norm=gate_norm,
            ssm_in_multiplier=float(d.get("ssm_in_multiplier", 1.0)),
            zxbcdt_multipliers=tuple(float(m) for m in (d.get("ssm_multipliers") or [1.0] * 5)),
        )
        common = HybridConfig.common_fields(d)
        entries = layout([["mamba", "attention"]] * n)
        return cls(
            **common,
            num_hidden_layers=n,
            attn_head_dim=int(d.get("head_dim") or hidden // common["num_attention_heads"]),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            mamba=mamba,
            layer_entries=entries,
            intermediate_size=int(d["intermediate_size"]),
            hidden_act=d.get("hidden_act", "silu"),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            embedding_multiplier=float(d.get("embedding_multiplier", 1.0)),
            lm_head_multiplier=float(d.get("lm_head_multiplier", 1.0)),
            mlp_multipliers=tuple(float(m) for m in (d.get("mlp_multipliers") or [1.0, 1.0])),  # type: ignore[arg-type]
            key_multiplier=float(d.get("key_multiplier", 1.0)),
            attention_in_multiplier=float(d.get("attention_in_multiplier", 1.0)),
            attention_out_multiplier=float(d.get("attention_out_multiplier", 1.0)),
            ssm_out_multiplier=float(d.get("ssm_out_multiplier", 1.0)),
        )


class FalconH1DecoderLayer(nn.Module):
    """x + ssm_out * mamba(n) + attn_out * attn(attn_in * n) with n = norm(x); then x + mlp(norm(x))."""

    def __init__(self, c: FalconH1Config, i: int) -> None:
        super().__init__()
        assert c.mamba is not None
        self.mamba = Mamba2Mixer(c.mamba, c.layer_entries[i]["mamba"])
        self.self_attn = Attention.for_layer(c, i, bias=c.attention_bias, key_multiplier=c.key_multiplier)
        gate_m, down_m = c.mlp_multipliers
        self.feed_forward = GatedMLP(
            c.hidden_size,
            c.intermediate_size,
            c.hidden_act,
            bias=c.mlp_bias,
            gate_multiplier=gate_m,
            down_multiplier=down_m,
        )
        self.input_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.c = c

    def forward(
        self, x: torch.Tensor, rope: Any, cache: HybridCache | None, seq_lens: torch.Tensor | None
    ) -> torch.Tensor:
        c = self.c
        h = self.input_layernorm(x)
        ssm = self.mamba(h, cache, seq_lens) * c.ssm_out_multiplier
        attn = (
            self.self_attn(h * c.attention_in_multiplier, rope, cache, seq_lens) * c.attention_out_multiplier
        )
        x = x + (ssm + attn)
        return x + self.feed_forward(self.pre_ff_layernorm(x))


class FalconH1Model(nn.Module):
    def __init__(self, c: FalconH1Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(FalconH1DecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.final_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)


class FalconH1ForCausalLM(HybridForCausalLM):
    def __init__(self, config: FalconH1Config) -> None:
        super().__init__()
        self.config = config
        self.model = FalconH1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logit_multiplier = config.lm_head_multiplier
        self.tie_weights()

    def input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids) * self.config.embedding_multiplier

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        return self.model.layers, self.model.final_layernorm


CONFIG = FalconH1Config
MODEL = FalconH1ForCausalLM


def rename(key: str) -> str | None:
    return key


STACKED = ()
