"""Self-hosted hybrid models in plain PyTorch: Jamba (Mamba + attention + MoE) and the Mamba-2 hybrids
(Bamba, Granite 4.0-H, Nemotron-H, Falcon-H1, Zamba2), picked by the checkpoint's ``model_type``.

Contract for outside code::

    lm = local_model.load("/path/to/checkpoint", device="cpu", dtype=torch.float32)
    lm.logits(input_ids)          # LongTensor[B, T] -> FloatTensor[B, T, vocab]
    lm.module, lm.config, lm.tokenizer   # JambaForCausalLM | a family's model, its config, Tokenizer | None

Submodules: `config` (JambaConfig, presets), `model` (the network and reference kernels), `cache`
(HybridCache / MambaState / KVCache: the interface a serving engine builds on), `weights` (safetensors
load/save in the Hugging Face layout, tokenizer), `mamba2` (the SSD mixer) and `families` (the Mamba-2
hybrids). ``import local_model`` does not import torch; `load` and attribute access do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .cache import HybridCache
    from .config import JambaConfig
    from .model import JambaForCausalLM
    from .weights import Tokenizer

__all__ = ["LocalModel", "load", "JambaConfig", "JambaForCausalLM", "HybridCache", "Tokenizer"]

_LAZY = {
    "JambaConfig": "config",
    "PRESETS": "config",
    "JambaForCausalLM": "model",
    "MambaKernels": "model",
    "HybridCache": "cache",
    "KVCache": "cache",
    "MambaState": "cache",
    "Tokenizer": "weights",
    "load_model": "weights",
    "save_checkpoint": "weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LocalModel:
    """A loaded checkpoint: the module, its config, its tokenizer (if the directory has one)."""

    def __init__(
        self, module: JambaForCausalLM, tokenizer: Tokenizer | None, path: Path | None = None
    ) -> None:
        self.module = module
        self.config: JambaConfig = module.config
        self.tokenizer = tokenizer
        self.path = path

    @property
    def device(self) -> torch.device:
        return self.module.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.module.lm_head.weight.dtype

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full causal forward, no cache: LongTensor[B, T] -> FloatTensor[B, T, vocab]."""
        import torch

        with torch.inference_mode():
            return self.module(input_ids.to(self.device))

    def new_cache(self, batch_size: int, capacity: int, **kwargs: Any) -> HybridCache:
        return self.module.allocate_cache(batch_size, capacity, **kwargs)

    def greedy(
        self, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int] | None = None
    ) -> list[int]:
        """Greedy decode one sequence with the cache (prefill, then one token per step); returns new ids."""
        import torch

        stop = set(self.config.eos_token_ids if stop_ids is None else stop_ids)
        cache = self.new_cache(1, len(prompt_ids) + max_new_tokens)
        ids = torch.tensor([prompt_ids], device=self.device)
        out: list[int] = []
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                nxt = int(self.module(ids, cache, last_only=True)[0, -1].argmax())
                out.append(nxt)
                if nxt in stop:
                    break
                ids = torch.tensor([[nxt]], device=self.device)
        return out


def _model_type(path: Path) -> str:
    import json

    return str(json.loads((path / "config.json").read_text()).get("model_type", "jamba"))


def _load_family(path: Path, device: Any, dtype: Any) -> LocalModel:
    """A Mamba-2 hybrid checkpoint (`local_model.families`), loaded like `load` loads Jamba."""
    import torch

    from .families import load_model as load_family_model
    from .weights import Tokenizer

    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    module = load_family_model(path, device=device, dtype=dtype)
    tokenizer = Tokenizer.from_dir(path, extra_eos_ids=module.config.eos_token_ids)
    return LocalModel(module, tokenizer, path)  # type: ignore[arg-type]


def load(path: str | Path, device: Any = "cpu", dtype: Any = None) -> LocalModel:
    """Load a Hugging Face-layout checkpoint directory: Jamba, or a Mamba-2 hybrid family picked by its
    ``model_type`` (bamba, granitemoehybrid, nemotron_h, falcon_h1, zamba2; see `local_model.families`).

    ``dtype``: a torch dtype or its name ("bfloat16"); defaults to torch.float32. ``device``: anything
    torch accepts ("cpu", "cuda:0", torch.device). The tokenizer is attached when the directory has one.
    """
    import torch

    from .weights import Tokenizer, load_model

    if _model_type(Path(path)) != "jamba":
        return _load_family(Path(path), device, dtype)
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    from .kernels import bundle_for

    path = Path(path)
    module = load_model(path, device=device, dtype=dtype)
    module.set_kernels(bundle_for(device))  # Triton kernels on CUDA, the PyTorch references on CPU
    tokenizer = Tokenizer.from_dir(path, extra_eos_ids=module.config.eos_token_ids)
    return LocalModel(module, tokenizer, path)
