"""NVIDIA Nemotron-H (``model_type: nemotron_h``): one mixer per block, chosen by the pattern
(``hybrid_override_pattern`` "M*-E" or ``layers_block_type``): Mamba-2 (M), attention without positional
encoding (*), a squared-ReLU MLP (-), or a mixture of squared-ReLU experts (E) with sigmoid routing
(grouped top-k with a score-correction bias, optional renormalisation and scaling), a shared expert and
optional latent projections. Every block is x + mixer(norm(x)). Follows transformers'
``modeling_nemotron_h.py``; parameter names are the checkpoint's (``backbone.``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import HybridCache
from ..mamba2 import Mamba2Mixer, Mamba2Options
from .common import (
    Attention,
    HybridConfig,
    HybridForCausalLM,
    StackedExperts,
    act_fn,
    expert_linear,
    experts,
    layout,
)

_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_KINDS = {
    "mamba": "mamba",
    "linear_attention": "mamba",
    "attention": "attention",
    "full_attention": "attention",
    "mlp": "mlp",
    "moe": "moe",
}


@dataclass
class NemotronHConfig(HybridConfig):
    model_type: ClassVar[str] = "nemotron_h"
    layer_types: list[str] = field(default_factory=list)  # "mamba" | "attention" | "mlp" | "moe"
    intermediate_size: int = 0
    mlp_hidden_act: str = "relu2"
    mlp_bias: bool = False
    n_routed_experts: int = 0
    num_experts_per_tok: int = 1
    moe_intermediate_size: int = 0
    moe_shared_expert_intermediate_size: int = 0
    moe_latent_size: int | None = None
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> NemotronHConfig:
        if d.get("layers_block_type"):
            types = [_KINDS[t] for t in d["layers_block_type"]]
        elif d.get("hybrid_override_pattern"):
            types = [_PATTERN[ch] for ch in d["hybrid_override_pattern"]]
        else:
            raise ValueError("nemotron_h config needs layers_block_type or hybrid_override_pattern")
        if int(d.get("num_nextn_predict_layers", 0) or 0):
            raise ValueError("nemotron_h multi-token prediction layers are not supported")
        hidden = int(d["hidden_size"])
        eps = float(d.get("layer_norm_epsilon", 1e-5))
        mamba = Mamba2Options(
            hidden_size=hidden,
            num_heads=int(d["mamba_num_heads"]),
            head_dim=int(d["mamba_head_dim"]),
            n_groups=int(d.get("n_groups", 1)),
            d_state=int(d["ssm_state_size"]),
            d_conv=int(d.get("conv_kernel", 4)),
            chunk_size=int(d.get("chunk_size", 128)),
            conv_bias=bool(d.get("use_conv_bias", True)),
            in_proj_bias=bool(d.get("use_bias", False)),
            out_proj_bias=bool(d.get("use_bias", False)),
            activation=d.get("mamba_hidden_act", "silu"),
            norm_eps=eps,
            dt_limit=(float(d.get("time_step_min", 0.001)), float("inf")),
        )
        common = HybridConfig.common_fields(d)
        common["rope_theta"] = None
        common["tie_word_embeddings"] = False  # transformers never ties Nemotron-H's lm_head
        entries = layout([[t] if t in ("mamba", "attention") else [] for t in types])
        return cls(
            **common,
            num_hidden_layers=len(types),
            attn_head_dim=int(d.get("head_dim") or hidden // common["num_attention_heads"]),
            rms_norm_eps=eps,
            mamba=mamba,
            layer_entries=entries,
            layer_types=types,
            intermediate_size=int(d["intermediate_size"]),
            mlp_hidden_act=d.get("mlp_hidden_act", "relu2"),
            mlp_bias=bool(d.get("mlp_bias", False)),
            n_routed_experts=int(d.get("n_routed_experts", 0) or 0),
            num_experts_per_tok=int(d.get("num_experts_per_tok", 1)),
            moe_intermediate_size=int(d.get("moe_intermediate_size", 0) or 0),
            moe_shared_expert_intermediate_size=int(d.get("moe_shared_expert_intermediate_size", 0) or 0),
            moe_latent_size=d.get("moe_latent_size"),
            n_group=int(d.get("n_group", 1)),
            topk_group=int(d.get("topk_group", 1)),
            norm_topk_prob=bool(d.get("norm_topk_prob", True)),
            routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
        )


class NemotronHRMSNorm(nn.Module):
    """RMSNorm with the weight multiply in fp32 (cast back after), as Nemotron-H's reference."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


class MLP(nn.Module):
    """down(act(up(x))), no gate (squared ReLU by default)."""

    def __init__(self, hidden: int, inter: int, act: str, bias: bool) -> None:
        super().__init__()
        self.up_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)
        self.act = act_fn(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class Experts(nn.Module):
    def __init__(self, num: int, in_dim: int, inter: int) -> None:
        super().__init__()
        self.up_proj = nn.Parameter(torch.empty(num, inter, in_dim))
        self.down_proj = nn.Parameter(torch.empty(num, in_dim, inter))


class TopkRouter(nn.Module):
    """Sigmoid scores; choose among the top ``topk_group`` of ``n_group`` expert groups (ranked by the sum of
    each group's two best corrected scores), then the top-k experts by corrected score; weights are the
    uncorrected scores, optionally renormalised, times ``routed_scaling_factor``."""

    def __init__(self, c: NemotronHConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c.n_routed_experts, c.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(c.n_routed_experts))
        self.c = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.c
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias.float()
        per_group = c.n_routed_experts // c.n_group
        group_scores = choice.view(-1, c.n_group, per_group).topk(2, dim=-1)[0].sum(-1)
        group_idx = group_scores.topk(c.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0)
        mask = group_mask[:, :, None].expand(-1, -1, per_group).reshape(-1, c.n_routed_experts)
        choice = choice.masked_fill(~mask.bool(), float("-inf"))
        top_i = choice.topk(c.num_experts_per_tok, dim=-1, sorted=False)[1]
        top_w = scores.gather(1, top_i)
        if c.norm_topk_prob:
            top_w = top_w / (top_w.sum(-1, keepdim=True) + 1e-20)
        return top_i, top_w * c.routed_scaling_factor


class MoE(nn.Module):
    def __init__(self, c: NemotronHConfig) -> None:
        super().__init__()
        in_dim = c.moe_latent_size or c.hidden_size
        self.experts = Experts(c.n_routed_experts, in_dim, c.moe_intermediate_size)
        self.gate = TopkRouter(c)
        self.shared_experts = MLP(
            c.hidden_size, c.moe_shared_expert_intermediate_size, c.mlp_hidden_act, c.mlp_bias
        )
        if c.moe_latent_size is not None:
            self.fc1_latent_proj = nn.Linear(c.hidden_size, c.moe_latent_size, bias=c.mlp_bias)
            self.fc2_latent_proj = nn.Linear(c.moe_latent_size, c.hidden_size, bias=c.mlp_bias)
        else:
            self.fc1_latent_proj = self.fc2_latent_proj = None
        self.act = act_fn(c.mlp_hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        top_i, top_w = self.gate(flat)
        h = self.fc1_latent_proj(flat) if self.fc1_latent_proj is not None else flat
        up, down = self.experts.up_proj, self.experts.down_proj
        h = experts(
            h,
            top_i,
            top_w,
            lambda e, xs: expert_linear(self.act(expert_linear(xs, up, e)), down, e),
            up.shape[0],
        )
        if self.fc2_latent_proj is not None:
            h = self.fc2_latent_proj(h)
        return h.reshape(shape) + self.shared_experts(x)


class NemotronHBlock(nn.Module):
    def __init__(self, c: NemotronHConfig, i: int) -> None:
        super().__init__()
        self.kind = c.layer_types[i]
        self.norm = NemotronHRMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mixer: nn.Module
        if self.kind == "mamba":
            assert c.mamba is not None
            self.mixer = Mamba2Mixer(c.mamba, c.layer_entries[i]["mamba"])
        elif self.kind == "attention":
            self.mixer = Attention.for_layer(c, i)
        elif self.kind == "mlp":
            self.mixer = MLP(c.hidden_size, c.intermediate_size, c.mlp_hidden_act, c.mlp_bias)
        else:
            self.mixer = MoE(c)

    def forward(
        self, x: torch.Tensor, rope: Any, cache: HybridCache | None, seq_lens: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.norm(x)
        if self.kind == "mamba":
            h = self.mixer(h, cache, seq_lens)
        elif self.kind == "attention":
            h = self.mixer(h, None, cache, seq_lens)
        else:
            h = self.mixer(h)
        return x + h


class NemotronHModel(nn.Module):
    def __init__(self, c: NemotronHConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(NemotronHBlock(c, i) for i, t in enumerate(c.layer_types))
        self.norm_f = NemotronHRMSNorm(c.hidden_size, c.rms_norm_eps)


class NemotronHForCausalLM(HybridForCausalLM):
    def __init__(self, config: NemotronHConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = NemotronHModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def input_embeddings(self) -> nn.Embedding:
        return self.backbone.embeddings

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        return self.backbone.layers, self.backbone.norm_f


CONFIG = NemotronHConfig
MODEL = NemotronHForCausalLM


def rename(key: str) -> str | None:
    """transformers >= 5 in-memory names use ``model.``; checkpoints on disk use ``backbone.``."""
    if key.startswith("model."):
        return "backbone." + key[len("model.") :]
    return key


STACKED = (
    StackedExperts(
        re.compile(r"^(.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$"),
        {"up_proj": ("up_proj", None), "down_proj": ("down_proj", None)},
    ),
)
