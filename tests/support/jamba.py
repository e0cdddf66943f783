"""Helpers for the local_model tests: small random transformers Jamba models and the parity criterion.

Each case is a transformers `JambaForCausalLM` with its weights re-drawn at O(1) scale (the default
init at std 0.02 makes every logit ~0, which would hide most bugs), saved with `save_pretrained`,
and loaded back with `local_model.load`. Everything is seeded, so results are stable run to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import local_model

# Shared by all cases; each case overrides the layer pattern, MoE, GQA ratio, tying and biases.
BASE: dict[str, Any] = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=48,
    rms_norm_eps=1e-6,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    mamba_d_state=8,
    mamba_d_conv=4,
    mamba_expand=2,
    max_position_embeddings=1024,
)

CASES: dict[str, dict[str, Any]] = {
    # MoE on even layers, attention on odd layers, GQA 2:1, untied.
    "moe_gqa": dict(
        num_hidden_layers=4,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=0,
        num_experts=4,
        num_experts_per_tok=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        mamba_conv_bias=True,
        mamba_proj_bias=False,
    ),
    # No MoE at all, attention first, plain MHA, tied embeddings, proj bias on / conv bias off.
    "dense_mha_tied": dict(
        num_hidden_layers=3,
        attn_layer_period=3,
        attn_layer_offset=0,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=1,
        num_experts_per_tok=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        mamba_conv_bias=False,
        mamba_proj_bias=True,
    ),
    # Odd periods/offsets, top-1 of 3 experts, GQA 4:1, both biases, GELU, d_conv 3, expand 1, dt_rank 5.
    "offsets_gelu": dict(
        num_hidden_layers=6,
        attn_layer_period=4,
        attn_layer_offset=3,
        expert_layer_period=3,
        expert_layer_offset=2,
        num_experts=3,
        num_experts_per_tok=1,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        mamba_conv_bias=True,
        mamba_proj_bias=True,
        hidden_act="gelu",
        mamba_d_conv=3,
        mamba_d_state=4,
        mamba_expand=1,
        mamba_dt_rank=5,
    ),
    # Every layer MoE (8 experts, top-2), one attention layer in the middle, MQA, tied, no biases, d_conv 2.
    "all_moe_mqa": dict(
        num_hidden_layers=5,
        attn_layer_period=5,
        attn_layer_offset=2,
        expert_layer_period=1,
        expert_layer_offset=0,
        num_experts=8,
        num_experts_per_tok=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        mamba_conv_bias=False,
        mamba_proj_bias=False,
        mamba_d_conv=2,
    ),
}


def hf_config(name: str) -> Any:
    from transformers import JambaConfig

    return JambaConfig(**{**BASE, **CASES[name]})


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter at a scale where each part of the network matters."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        shape = p.shape
        if name.endswith("A_log"):
            new = torch.log(torch.empty(shape).uniform_(0.5, 6.0, generator=g))
        elif name.endswith(".D"):
            new = 1.0 + 0.5 * torch.randn(shape, generator=g)
        elif "layernorm" in name:
            new = 1.0 + 0.3 * torch.randn(shape, generator=g)
        elif name.endswith("dt_proj.bias"):
            new = torch.empty(shape).uniform_(-4.0, 0.0, generator=g)
        elif p.ndim == 1:
            new = 0.3 * torch.randn(shape, generator=g)
        elif name.endswith("embed_tokens.weight"):
            new = torch.randn(shape, generator=g)
        else:
            new = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        p.copy_(new)


def random_ids(batch: int, length: int, seed: int, vocab: int = BASE["vocab_size"]) -> torch.Tensor:
    """Token ids avoiding pad/bos/eos (0, 1, 2)."""
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_close_logits(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """The parity criterion: max abs diff <= 1e-4 * max(1, max |ref|)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= tol, f"max abs diff {diff:.3e} > tol {tol:.3e}"


@dataclass
class Case:
    name: str
    hf: Any  # transformers JambaForCausalLM (eval, fp32)
    path: Path  # save_pretrained directory
    lm: local_model.LocalModel


def build_hf(name: str, seed: int = 0) -> Any:
    from transformers import JambaForCausalLM

    torch.manual_seed(seed)
    model = JambaForCausalLM(hf_config(name)).eval()
    randomize_(model, seed + 1)
    return model
