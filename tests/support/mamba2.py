"""Tiny random checkpoints of the five Mamba-2 hybrid families, saved by transformers' own classes.

Two configurations per family cover MoE and dense feed-forwards, different layer patterns, GQA ratios
(MHA, 2:1, 4:1, MQA), tied and untied embeddings, biases, RoPE on/off and the families' multipliers.
Weights are redrawn at O(1) scale (the default init makes every logit ~0 and hides bugs); dt biases
keep softplus(dt) well above the families' ``time_step_min``, where transformers clamps in prefill but
not in decode. Each directory also gets a byte-level BPE tokenizer with a chat template, so the same
checkpoints serve the engine, server and gateway tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.support import engine, jamba

VOCAB = engine.VOCAB  # the tokenizer's vocabulary
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Mamba-2 layers keep a fixed-size state; attention layers keep keys and values.",
    "Prefix caching reuses the state of a long system prompt.",
    "Héllo wörld, ça va? Naïve café.",
] * 4

BASE: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    max_position_embeddings=4096,
)

# name -> (transformers config class, causal-LM class, config kwargs)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bamba_gqa": (
        "BambaConfig",
        "BambaForCausalLM",
        dict(
            num_hidden_layers=4,
            attn_layer_indices=[1],
            num_attention_heads=4,
            num_key_value_heads=2,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=8,
            tie_word_embeddings=False,
        ),
    ),
    "bamba_mha_tied_bias": (
        "BambaConfig",
        "BambaForCausalLM",
        dict(
            num_hidden_layers=3,
            attn_layer_indices=[0, 2],
            num_attention_heads=2,
            num_key_value_heads=2,
            mamba_n_heads=8,
            mamba_d_state=4,
            mamba_chunk_size=4,
            mamba_d_conv=3,
            mamba_proj_bias=True,
            mamba_conv_bias=False,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),
    ),
    "granite_moe_rope": (
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        dict(
            num_hidden_layers=3,
            layer_types=["mamba", "attention", "mamba"],
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            shared_intermediate_size=24,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=8,
            position_embedding_type="rope",
            embedding_multiplier=2.0,
            residual_multiplier=0.7,
            attention_multiplier=0.3,
            logits_scaling=2.5,
        ),
    ),
    "granite_dense_tied_mqa": (
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        dict(
            num_hidden_layers=2,
            layer_types=["attention", "mamba"],
            num_attention_heads=4,
            num_key_value_heads=1,
            num_local_experts=0,
            shared_intermediate_size=24,
            mamba_n_heads=8,
            mamba_d_state=4,
            mamba_chunk_size=4,
            tie_word_embeddings=True,
        ),
    ),
    "nemotron_moe_gqa4": (
        "NemotronHConfig",
        "NemotronHForCausalLM",
        dict(
            layers_block_type=["mamba", "moe", "attention", "mlp", "mamba"],
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            mamba_num_heads=4,
            mamba_head_dim=16,
            ssm_state_size=8,
            n_groups=2,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            moe_shared_expert_intermediate_size=16,
            chunk_size=8,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=1.5,
            time_step_min=1e-4,
        ),
    ),
    "nemotron_dense_pattern": (
        "NemotronHConfig",
        "NemotronHForCausalLM",
        dict(
            hybrid_override_pattern="M*-M",
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            mamba_num_heads=8,
            mamba_head_dim=8,
            ssm_state_size=4,
            n_groups=1,
            chunk_size=4,
            use_bias=True,
            mlp_bias=True,
            time_step_min=1e-4,
        ),
    ),
    "falcon_mup_gqa": (
        "FalconH1Config",
        "FalconH1ForCausalLM",
        dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mamba_d_ssm=48,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=8,
            embedding_multiplier=1.5,
            lm_head_multiplier=0.8,
            mlp_multipliers=[0.9, 1.2],
            key_multiplier=0.7,
            attention_in_multiplier=1.1,
            attention_out_multiplier=0.6,
            ssm_multipliers=[0.9, 1.1, 0.8, 1.2, 0.7],
            ssm_in_multiplier=1.3,
            ssm_out_multiplier=0.5,
        ),
    ),
    "falcon_norm_tied_mqa": (
        "FalconH1Config",
        "FalconH1ForCausalLM",
        dict(
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            mamba_n_heads=8,
            mamba_d_state=4,
            mamba_chunk_size=4,
            mamba_rms_norm=True,
            mamba_norm_before_gate=False,
            tie_word_embeddings=True,
            projectors_bias=True,
        ),
    ),
    "zamba2_shared_lora_rope": (
        "Zamba2Config",
        "Zamba2ForCausalLM",
        dict(
            num_hidden_layers=5,
            layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"],
            num_attention_heads=4,
            n_mamba_heads=4,
            mamba_ngroups=2,
            mamba_d_state=8,
            chunk_size=8,
            use_shared_attention_adapter=True,
            adapter_rank=4,
            num_mem_blocks=2,
            use_mem_rope=True,
            time_step_min=1e-4,
        ),
    ),
    "zamba2_untied_gqa": (
        "Zamba2Config",
        "Zamba2ForCausalLM",
        dict(
            num_hidden_layers=3,
            layers_block_type=["hybrid", "mamba", "hybrid"],
            num_attention_heads=4,
            num_key_value_heads=2,
            n_mamba_heads=8,
            mamba_d_state=4,
            chunk_size=4,
            adapter_rank=4,
            num_mem_blocks=1,
            tie_word_embeddings=False,
            time_step_min=1e-4,
        ),
    ),
}

# One configuration per family for the engine, server and gateway tests.
ENGINE_CASES = [
    "bamba_gqa",
    "granite_moe_rope",
    "nemotron_moe_gqa4",
    "falcon_mup_gqa",
    "zamba2_shared_lora_rope",
]
SHARDED = {"bamba_gqa", "nemotron_moe_gqa4"}  # saved with a small max_shard_size (index + several files)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        shape = p.shape
        if name.endswith("A_log"):
            new = torch.log(torch.empty(shape).uniform_(0.5, 4.0, generator=g))
        elif name.endswith(".D"):
            new = 1.0 + 0.5 * torch.randn(shape, generator=g)
        elif name.endswith("dt_bias"):
            new = torch.empty(shape).uniform_(-3.0, 0.0, generator=g)
        elif "norm" in name:
            new = 1.0 + 0.3 * torch.randn(shape, generator=g)
        elif p.ndim == 1:
            new = 0.3 * torch.randn(shape, generator=g)
        elif "embed" in name:
            new = torch.randn(shape, generator=g)
        else:
            new = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        p.copy_(new)
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))


def build_hf(name: str, seed: int = 0) -> Any:
    import transformers

    config_cls, model_cls, kw = CASES[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**{**BASE, **kw})).eval()
    randomize_(model, seed + 1)
    return model


def save_case(name: str, path: Path, seed: int) -> Any:
    """Build, save (sharded for the SHARDED cases) and return the transformers model."""
    hf = build_hf(name, seed)
    hf.save_pretrained(path, max_shard_size="20KB" if name in SHARDED else "5GB")
    engine.write_tokenizer(path, CORPUS)
    return hf


def random_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    """Token ids of this vocabulary avoiding pad/bos/eos (0, 1, 2)."""
    return jamba.random_ids(batch, length, seed, VOCAB)


@dataclass
class FamilyCase:
    name: str
    hf: Any
    path: Path
    lm: Any  # local_model.LocalModel
