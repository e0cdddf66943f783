"""Zyphra Zamba2 (``model_type: zamba2``): a Mamba-2 backbone; at each "hybrid" layer a *shared*
transformer block (attention + MLP, ``num_mem_blocks`` distinct copies reused in turn) reads the
concatenation of the current hidden state and the original token embeddings, with per-layer LoRA
adapters on q/k/v (``use_shared_attention_adapter``) and on the MLP's gate/up projection; its output goes
through a per-layer ``linear`` and is added to that layer's Mamba input. Attention works at width
2 * hidden_size with softmax scale (head_dim / 2)^-1/2 and optional RoPE (``use_mem_rope``). Each hybrid
layer keeps its own KV cache although the attention weights are shared. Follows transformers'
``modeling_zamba2.py``; the shared blocks are stored once, under the first layer that uses them.
transformers 5 ties weights all or nothing: with ``tie_word_embeddings: false`` every hybrid layer has
its own copy of the block (and the checkpoint stores each), so this model does the same."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..cache import HybridCache
from ..mamba2 import Mamba2Mixer, Mamba2Options
from ..model import RMSNorm
from .common import Attention, HybridConfig, HybridForCausalLM, act_fn, layout

_KINDS = {
    "mamba": "mamba",
    "linear_attention": "mamba",
    "mamba2": "mamba",
    "m": "mamba",
    "hybrid": "hybrid",
    "g": "hybrid",
}


@dataclass
class Zamba2Config(HybridConfig):
    model_type: ClassVar[str] = "zamba2"
    layer_types: list[str] = field(default_factory=list)  # "mamba" | "hybrid"
    intermediate_size: int = 0
    hidden_act: str = "gelu"
    add_bias_linear: bool = False
    num_mem_blocks: int = 1
    use_shared_attention_adapter: bool = False
    adapter_rank: int = 128

    @property
    def hybrid_layer_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "hybrid"]

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> Zamba2Config:
        if d.get("use_long_context"):
            raise ValueError("zamba2 use_long_context (rescaled RoPE) is not supported")
        raw = d.get("layers_block_type")
        if raw is None:
            raise ValueError("zamba2 config needs layers_block_type")
        try:
            types = [_KINDS[t] for t in raw]
        except KeyError as exc:
            raise ValueError(f"unknown zamba2 layer type {exc.args[0]!r}") from None
        hidden = int(d["hidden_size"])
        heads = int(d["num_attention_heads"])
        n_mamba_heads = int(d.get("n_mamba_heads", 8))
        mamba = Mamba2Options(
            hidden_size=hidden,
            num_heads=n_mamba_heads,
            head_dim=int(d.get("mamba_expand", 2)) * hidden // n_mamba_heads,
            n_groups=int(d.get("mamba_ngroups", 1)),
            d_state=int(d["mamba_d_state"]),
            d_conv=int(d.get("mamba_d_conv", 4)),
            chunk_size=int(d.get("chunk_size", 256)),
            conv_bias=True,
            in_proj_bias=bool(d.get("add_bias_linear", False)),
            out_proj_bias=bool(d.get("add_bias_linear", False)),
            activation="silu",
            norm_eps=1e-5,
            dt_limit=(float(d.get("time_step_min", 0.001)), float("inf")),
        )
        common = HybridConfig.common_fields(d)
        if not d.get("use_mem_rope", False):
            common["rope_theta"] = None
        common["tie_word_embeddings"] = bool(d.get("tie_word_embeddings", True))
        kinds = [["mamba", "attention"] if t == "hybrid" else ["mamba"] for t in types]
        entries = layout(kinds)
        return cls(
            **common,
            num_hidden_layers=len(types),
            attn_head_dim=2 * hidden // heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            mamba=mamba,
            layer_entries=entries,
            layer_types=types,
            intermediate_size=int(d.get("intermediate_size") or 4 * hidden),
            hidden_act=d.get("hidden_act", "gelu"),
            add_bias_linear=bool(d.get("add_bias_linear", False)),
            num_mem_blocks=int(d.get("num_mem_blocks", 1)),
            use_shared_attention_adapter=bool(d.get("use_shared_attention_adapter", False)),
            adapter_rank=int(d.get("adapter_rank", 128)),
        )


def _adapters(c: Zamba2Config, block_id: int, in_dim: int, out_dim: int) -> nn.ModuleList:
    """One LoRA pair per hybrid layer that this block serves (Identity placeholders for the others, so
    indices line up with the checkpoint's ``*_adapter_list.<hybrid index>``)."""
    out = nn.ModuleList()
    for k in range(len(c.hybrid_layer_ids)):
        if k % c.num_mem_blocks == block_id:
            out.append(
                nn.Sequential(
                    nn.Linear(in_dim, c.adapter_rank, bias=False),
                    nn.Linear(c.adapter_rank, out_dim, bias=False),
                )
            )
        else:
            out.append(nn.Identity())
    return out


class Zamba2Attention(Attention):
    """Shared attention at width 2H; adds the serving layer's LoRA adapter to q, k and v."""

    def __init__(self, c: Zamba2Config, block_id: int) -> None:
        width = 2 * c.hidden_size
        super().__init__(
            width,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.attn_head_dim,
            c.hidden_size,
            -1,
            scale=(c.attn_head_dim / 2) ** -0.5,
        )
        self.use_adapters = c.use_shared_attention_adapter
        if self.use_adapters:
            self.linear_q_adapter_list = _adapters(c, block_id, width, width)
            self.linear_k_adapter_list = _adapters(c, block_id, width, width)
            self.linear_v_adapter_list = _adapters(c, block_id, width, width)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        rope: Any,
        cache: HybridCache | None,
        seq_lens: torch.Tensor | None,
        *,
        hybrid_index: int,
        cache_index: int,
    ) -> torch.Tensor:
        """The block serves hybrid layer ``hybrid_index``: its adapters, its KV cache entry."""
        q, k, v = self.qkv(x)
        if self.use_adapters:
            q = q + self.linear_q_adapter_list[hybrid_index](x)
            k = k + self.linear_k_adapter_list[hybrid_index](x)
            v = v + self.linear_v_adapter_list[hybrid_index](x)
        return self.attend(q, k, v, rope, cache, seq_lens, cache_index)


class Zamba2MLP(nn.Module):
    def __init__(self, c: Zamba2Config, block_id: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.add_bias_linear)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.add_bias_linear)
        self.gate_up_proj_adapter_list = _adapters(c, block_id, c.hidden_size, 2 * c.intermediate_size)
        self.act = act_fn(c.hidden_act)

    def forward(self, x: torch.Tensor, hybrid_index: int) -> torch.Tensor:
        gate, up = (self.gate_up_proj(x) + self.gate_up_proj_adapter_list[hybrid_index](x)).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class Zamba2AttentionDecoderLayer(nn.Module):
    """The shared block: mlp(norm(attn(norm([h, embeddings])))) — no residual inside."""

    def __init__(self, c: Zamba2Config, block_id: int) -> None:
        super().__init__()
        self.self_attn = Zamba2Attention(c, block_id)
        self.feed_forward = Zamba2MLP(c, block_id)
        self.input_layernorm = RMSNorm(2 * c.hidden_size, eps=c.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)

    def forward(
        self,
        h: torch.Tensor,
        embeddings: torch.Tensor,
        hybrid_index: int,
        cache_index: int,
        rope: Any,
        cache: HybridCache | None,
        seq_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        x = self.input_layernorm(torch.cat([h, embeddings], dim=-1))
        x = self.self_attn(x, rope, cache, seq_lens, hybrid_index=hybrid_index, cache_index=cache_index)
        return self.feed_forward(self.pre_ff_layernorm(x), hybrid_index)


class Zamba2MambaDecoderLayer(nn.Module):
    """x + mamba(norm(x + extra)): ``extra`` is the shared block's contribution at hybrid layers."""

    def __init__(self, c: Zamba2Config, i: int) -> None:
        super().__init__()
        assert c.mamba is not None
        self.mamba = Mamba2Mixer(c.mamba, c.layer_entries[i]["mamba"])
        self.input_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cache: HybridCache | None,
        seq_lens: torch.Tensor | None,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.input_layernorm(x if extra is None else x + extra)
        return x + self.mamba(h, cache, seq_lens)


class Zamba2HybridLayer(nn.Module):
    def __init__(
        self,
        c: Zamba2Config,
        i: int,
        shared: Zamba2AttentionDecoderLayer,
        hybrid_index: int,
        cache_index: int,
    ) -> None:
        super().__init__()
        self.shared_transformer = shared
        self.linear = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.mamba_decoder = Zamba2MambaDecoderLayer(c, i)
        self.hybrid_index, self.cache_index = hybrid_index, cache_index

    def forward(
        self,
        x: torch.Tensor,
        embeddings: torch.Tensor,
        rope: Any,
        cache: HybridCache | None,
        seq_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        t = self.shared_transformer(x, embeddings, self.hybrid_index, self.cache_index, rope, cache, seq_lens)
        return self.mamba_decoder(x, cache, seq_lens, extra=self.linear(t))


class Zamba2Model(nn.Module):
    def __init__(self, c: Zamba2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        blocks: list[Zamba2AttentionDecoderLayer] = []
        layers: list[nn.Module] = []
        for i, t in enumerate(c.layer_types):
            if t == "mamba":
                layers.append(Zamba2MambaDecoderLayer(c, i))
                continue
            k = len([j for j in c.hybrid_layer_ids if j < i])
            if k < c.num_mem_blocks or not c.tie_word_embeddings:
                blocks.append(Zamba2AttentionDecoderLayer(c, block_id=k % c.num_mem_blocks))
            shared = blocks[k % c.num_mem_blocks] if c.tie_word_embeddings else blocks[k]
            layers.append(Zamba2HybridLayer(c, i, shared, k, c.layer_entries[i]["attention"]))
        self.layers = nn.ModuleList(layers)
        self.final_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)


class Zamba2ForCausalLM(HybridForCausalLM):
    def __init__(self, config: Zamba2Config) -> None:
        super().__init__()
        self.config = config
        self.model = Zamba2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def body(
        self, x: torch.Tensor, rope: Any, cache: HybridCache | None, seq_lens: torch.Tensor | None
    ) -> torch.Tensor:
        embeddings = x
        for layer in self.model.layers:
            if isinstance(layer, Zamba2HybridLayer):
                x = layer(x, embeddings, rope, cache, seq_lens)
            else:
                x = layer(x, cache, seq_lens)
        return self.model.final_layernorm(x)


CONFIG = Zamba2Config
MODEL = Zamba2ForCausalLM


def rename(key: str) -> str | None:
    return key


STACKED = ()
