"""Configuration of the Jamba-style hybrid (Mamba + attention + MoE) decoder.

`JambaConfig` mirrors the fields of transformers' `JambaConfig` (model_type "jamba") one to one, so a
Hugging Face `config.json` reads into it and `to_hf_dict()` writes one that transformers reads back.
The semantics follow `transformers/models/jamba/configuration_jamba.py`:

* layer ``i`` is an attention layer iff ``i % attn_layer_period == attn_layer_offset``, else a Mamba layer;
* layer ``i`` has a sparse MoE feed-forward iff ``i % expert_layer_period == expert_layer_offset`` and
  ``num_experts > 1``, else a dense SwiGLU MLP;
* ``mamba_dt_rank == "auto"`` means ``ceil(hidden_size / 16)``;
* the attention head size is ``hidden_size // num_attention_heads`` unless the json carries ``head_dim``.

Keys of the json that are not fields (``architectures``, ``transformers_version``, ...) are kept in
`extra` so a read/write round trip loses nothing.

Named presets (`PRESETS`, `JambaConfig.preset`) give small models for tests and for training our own
shipped checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Keys transformers writes into config.json that describe the file, not the architecture.
_HF_META_KEYS = ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype")


@dataclass
class JambaConfig:
    """Architecture hyper-parameters; defaults are those of transformers' JambaConfig (Jamba-v0.1)."""

    vocab_size: int = 65536
    tie_word_embeddings: bool = False
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.001
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    max_position_embeddings: int = 262144
    attention_dropout: float = 0.0
    num_experts_per_tok: int = 2
    num_experts: int = 16
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    use_mamba_kernels: bool = True
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    use_mambapy: bool = False
    use_associative_scan: bool = True
    # Storage dtype recorded in config.json ("float32", "bfloat16", ...); informational only.
    dtype: str | None = None
    # Unknown keys of the source json, written back unchanged by to_hf_dict().
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.mamba_dt_rank == "auto":
            self.mamba_dt_rank = math.ceil(self.hidden_size / 16)
        self.mamba_dt_rank = int(self.mamba_dt_rank)
        self.validate()

    def validate(self) -> None:
        """Reject configurations that transformers rejects or that the model cannot build."""
        if not 0 <= self.attn_layer_offset < self.attn_layer_period:
            raise ValueError(
                f"attn_layer_offset ({self.attn_layer_offset}) must be in [0, attn_layer_period={self.attn_layer_period})"
            )
        if not 0 <= self.expert_layer_offset < self.expert_layer_period:
            raise ValueError(
                f"expert_layer_offset ({self.expert_layer_offset}) must be in "
                f"[0, expert_layer_period={self.expert_layer_period})"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                "hidden_size must be divisible by num_attention_heads when head_dim is not given"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.num_experts > 1 and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError("num_experts_per_tok must be in [1, num_experts]")
        if self.mamba_d_conv < 1:
            raise ValueError("mamba_d_conv must be >= 1")

    # ------------------------------------------------------------------ derived sizes

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_expand * self.hidden_size

    @property
    def mamba_conv_state_shape(self) -> tuple[int, ...]:
        """Per-slot shape of a Mamba layer's conv window (see `local_model.cache.MambaState`)."""
        return (self.mamba_d_inner, self.mamba_d_conv - 1)

    @property
    def mamba_ssm_state_shape(self) -> tuple[int, ...]:
        """Per-slot shape of a Mamba layer's SSM state."""
        return (self.mamba_d_inner, self.mamba_d_state)

    @property
    def num_cache_entries(self) -> int:
        """Length of `HybridCache.layers`: one entry per layer (a KV cache or a Mamba state)."""
        return self.num_hidden_layers

    def layer_is_attention(self, i: int) -> bool:
        return i % self.attn_layer_period == self.attn_layer_offset

    def layer_is_moe(self, i: int) -> bool:
        return self.num_experts > 1 and i % self.expert_layer_period == self.expert_layer_offset

    @property
    def layer_types(self) -> list[str]:
        """ "attention" or "mamba" for each layer (transformers calls this `layers_block_type`)."""
        return ["attention" if self.layer_is_attention(i) else "mamba" for i in range(self.num_hidden_layers)]

    @property
    def attention_layer_ids(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.layer_is_attention(i)]

    @property
    def mamba_layer_ids(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if not self.layer_is_attention(i)]

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    def num_parameters(self) -> int:
        """Parameter count of JambaForCausalLM for this config (tied embeddings counted once)."""
        h, d_in, n, r = self.hidden_size, self.mamba_d_inner, self.mamba_d_state, self.mamba_dt_rank
        kv = self.num_key_value_heads * self.attn_head_dim
        q = self.num_attention_heads * self.attn_head_dim
        attn = h * q + 2 * h * kv + q * h
        mamba = (
            h * 2 * d_in
            + (2 * d_in if self.mamba_proj_bias else 0)  # in_proj
            + d_in * self.mamba_d_conv
            + (d_in if self.mamba_conv_bias else 0)  # conv1d
            + d_in * (r + 2 * n)  # x_proj
            + r * d_in
            + d_in  # dt_proj
            + d_in * n
            + d_in  # A_log, D
            + d_in * h
            + (h if self.mamba_proj_bias else 0)  # out_proj
            + r
            + 2 * n  # dt/B/C norms
        )
        mlp = 3 * h * self.intermediate_size
        moe = self.num_experts * mlp + self.num_experts * h
        total = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) + h
        for i in range(self.num_hidden_layers):
            total += attn if self.layer_is_attention(i) else mamba
            total += moe if self.layer_is_moe(i) else mlp
            total += 2 * h
        return total

    # ------------------------------------------------------------------ json I/O

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JambaConfig:
        """Build from a transformers-style config dict (unknown keys go to `extra`)."""
        d = dict(d)
        model_type = d.get("model_type", "jamba")
        if model_type != "jamba":
            raise ValueError(f"expected model_type 'jamba', got {model_type!r}")
        if "num_local_experts" in d:  # transformers' attribute_map alias
            d.setdefault("num_experts", d.pop("num_local_experts"))
        if "torch_dtype" in d and "dtype" not in d:
            d["dtype"] = d["torch_dtype"]
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in _HF_META_KEYS}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> JambaConfig:
        """Read a config.json (or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_dict(json.loads(path.read_text()))

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that transformers' JambaConfig/JambaForCausalLM loads."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if d["head_dim"] is None:
            del d["head_dim"]
        if d["dtype"] is None:
            del d["dtype"]
        d.update(self.extra)
        d["model_type"] = "jamba"
        d["architectures"] = ["JambaForCausalLM"]
        return dict(sorted(d.items()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> JambaConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> JambaConfig:
        """A named small configuration (see PRESETS), optionally with fields overridden."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Small configurations. Layer patterns keep Jamba's flavour (mostly Mamba, a few attention layers,
# MoE on a regular period) at sizes that run on a laptop CPU.
PRESETS: dict[str, dict[str, Any]] = {
    # For unit tests and smoke runs: every concept present (3 Mamba layers + 1 attention layer, MoE on
    # odd layers, GQA 2:1), ~0.36M parameters.
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_period=4,
        attn_layer_offset=2,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=4,
        num_experts_per_tok=2,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    # Our own trainable model: ~21.4M parameters (~18M active per token), 8 layers with attention at 3 and 7,
    # MoE (4 experts, top-2) at layers 1 and 5, 16k vocabulary, tied embeddings.
    "small-20m": dict(
        vocab_size=16384,
        hidden_size=320,
        intermediate_size=864,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        attn_layer_period=4,
        attn_layer_offset=3,
        expert_layer_period=4,
        expert_layer_offset=1,
        num_experts=4,
        num_experts_per_tok=2,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
}
