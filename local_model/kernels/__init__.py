"""The model's compute kernels, behind one keyword-only bundle.

`KernelBundle` names every op that has a fast path; the model calls them by keyword only, so any
implementation with the same keyword signature can replace the reference. `reference` holds the
pure-PyTorch definitions (the CPU path and the tests' ground truth); `triton_ops` the GPU kernels
(imported only when a CUDA bundle is asked for, so the CPU path never needs Triton).
`bundle_for(device)` picks the bundle when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .reference import (
    attention_decode_ref,
    attention_prefill_ref,
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    greedy_advance_ref,
    linear_ref,
    mamba_conv_xproj_ref,
    mamba_decode_ssm_ref,
    moe_block_ref,
    moe_experts_ref,
    norm_linear_ref,
    rms_norm_ref,
    router_topk_ref,
    selective_scan_auto,
    selective_scan_ref,
    selective_state_update_ref,
)


@dataclass(frozen=True, kw_only=True)
class KernelBundle:
    """One implementation of each op; fields are called with keyword arguments only."""

    causal_conv1d: Callable[..., torch.Tensor] = causal_conv1d_ref
    causal_conv1d_update: Callable[..., torch.Tensor] = causal_conv1d_update_ref
    selective_scan: Callable[..., torch.Tensor] = selective_scan_auto
    selective_state_update: Callable[..., torch.Tensor] = selective_state_update_ref
    rms_norm: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = rms_norm_ref
    moe_experts: Callable[..., torch.Tensor] = moe_experts_ref
    attention_prefill: Callable[..., torch.Tensor] = attention_prefill_ref
    attention_decode: Callable[..., torch.Tensor] = attention_decode_ref
    linear: Callable[..., torch.Tensor] = linear_ref
    router_topk: Callable[..., tuple[torch.Tensor, torch.Tensor]] = router_topk_ref
    mamba_decode_ssm: Callable[..., torch.Tensor] = mamba_decode_ssm_ref
    mamba_conv_xproj: Callable[..., torch.Tensor] = mamba_conv_xproj_ref
    norm_linear: Callable[..., tuple[torch.Tensor, torch.Tensor]] = norm_linear_ref
    moe_block: Callable[..., tuple[torch.Tensor, torch.Tensor]] = moe_block_ref
    greedy_advance: Callable[..., None] = greedy_advance_ref
    name: str = "reference"


# The sequential scan everywhere: the slowest, most literal configuration (tests use it as a cross-check).
REFERENCE_KERNELS = KernelBundle(selective_scan=selective_scan_ref, name="reference-sequential")
# The CPU default.
DEFAULT_KERNELS = KernelBundle()


def triton_bundle() -> KernelBundle:
    """The Triton kernels (GPU; also runs on CPU tensors under TRITON_INTERPRET=1)."""
    from . import triton_ops as t

    return KernelBundle(
        causal_conv1d=t.causal_conv1d,
        causal_conv1d_update=t.causal_conv1d_update,
        selective_scan=t.selective_scan,
        selective_state_update=t.selective_state_update,
        rms_norm=t.rms_norm,
        moe_experts=t.moe_experts,
        attention_prefill=t.attention_prefill,
        attention_decode=t.attention_decode,
        linear=t.linear,
        router_topk=t.router_topk,
        mamba_decode_ssm=t.mamba_decode_ssm,
        mamba_conv_xproj=t.mamba_conv_xproj,
        norm_linear=t.norm_linear,
        moe_block=t.moe_block,
        greedy_advance=t.greedy_advance,
        name="triton",
    )


def bundle_for(device: torch.device | str) -> KernelBundle:
    """The bundle a model on ``device`` runs: Triton on CUDA (when Triton imports), the references otherwise."""
    if torch.device(device).type == "cuda":
        try:
            return triton_bundle()
        except ImportError:
            return DEFAULT_KERNELS
    return DEFAULT_KERNELS


__all__ = ["DEFAULT_KERNELS", "REFERENCE_KERNELS", "KernelBundle", "bundle_for", "triton_bundle"]
