"""Mamba-2 hybrid families served beside Jamba, one module each, picked by ``model_type``:

* `bamba` (IBM Bamba), `granitemoehybrid` (IBM Granite 4.0-H), `nemotron_h` (NVIDIA Nemotron-H),
  `falcon_h1` (TII Falcon-H1), `zamba2` (Zyphra Zamba2).

Each module has ``CONFIG`` (a `common.HybridConfig` subclass with ``from_hf_dict``), ``MODEL`` (a
`common.HybridForCausalLM`), ``rename`` (checkpoint key -> parameter name) and ``STACKED`` (per-expert
tensors fused at load). Shared parts live in `common`, the Mamba-2 mixer in `local_model.mamba2`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

FAMILIES: dict[str, str] = {
    "bamba": "bamba",
    "granitemoehybrid": "granitemoehybrid",
    "nemotron_h": "nemotron_h",
    "falcon_h1": "falcon_h1",
    "zamba2": "zamba2",
}


def family(model_type: str) -> ModuleType:
    if model_type not in FAMILIES:
        known = ", ".join(["jamba", *FAMILIES])
        raise ValueError(f"unsupported model_type {model_type!r}; this server knows: {known}")
    return importlib.import_module(f".{FAMILIES[model_type]}", __name__)


def config_from_dict(d: dict[str, Any]) -> Any:
    return family(str(d.get("model_type"))).CONFIG.from_hf_dict(d)


def load_model(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = torch.float32
) -> Any:
    """Build a family's model from a checkpoint directory: meta-device init, then the safetensors
    (single or sharded) read onto ``device`` and cast to ``dtype`` tensor by tensor. Eval mode."""
    from .common import load_weights, read_config_json

    d = read_config_json(path)
    fam = family(str(d.get("model_type")))
    config = fam.CONFIG.from_hf_dict(d)
    with torch.device("meta"):
        model = fam.MODEL(config)
    load_weights(model, path, fam.rename, stacked=fam.STACKED, device=device, dtype=dtype)
    return model.eval()


__all__ = ["FAMILIES", "config_from_dict", "family", "load_model"]
