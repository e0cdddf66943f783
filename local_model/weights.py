"""Checkpoint I/O in the Hugging Face layout, and the tokenizer wrapper.

Loading (`load_model`) accepts what transformers writes for Jamba:

* one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``;
* MoE experts either per expert (``...feed_forward.experts.E.{gate,up,down}_proj.weight``: the "original"
  format that transformers' ``save_pretrained`` writes by default and 4.x keeps in memory) or fused
  (``...feed_forward.experts.gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``: what transformers >= 5
  writes with ``save_original_format=False``; gate rows first, then up rows);
* tied embeddings with no ``lm_head.weight`` key.

The model is built on the meta device and checkpoint tensors are read straight onto the target device,
cast, and assigned (``load_state_dict(assign=True)``), so memory peaks at one model plus one tensor.
Per-expert tensors are copied into one preallocated fused tensor per layer.

`save_checkpoint` writes ``config.json`` + ``model.safetensors`` (optionally sharded) in the original
per-expert layout, which both transformers 4.x and 5.x load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import JambaConfig
from .model import JambaForCausalLM

_PER_EXPERT = re.compile(r"^(.*\.feed_forward\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or index-listed shards)."""
    path = Path(path)
    index = path / SAFETENSORS_INDEX
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    single = path / SAFETENSORS_SINGLE
    if single.exists():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no safetensors checkpoint in {path}")
    return found


def iter_checkpoint_tensors(
    path: str | Path, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) for every tensor of the checkpoint, one at a time, read onto ``device``."""
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                yield key, f.get_tensor(key)


def load_state_dict_into(
    model: JambaForCausalLM,
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
    strict: bool = True,
) -> None:
    """Assign the checkpoint's tensors to ``model`` (which may live on the meta device)."""
    config = model.config
    state: dict[str, torch.Tensor] = {}
    expected = dict(model.state_dict(keep_vars=True))
    unexpected: list[str] = []

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device=device)

    filled: dict[str, set[tuple[int, str]]] = {}  # fused key -> (expert, proj) slices copied so far
    for key, tensor in iter_checkpoint_tensors(path, device=device):
        m = _PER_EXPERT.match(key)
        if m is not None:
            prefix, e, proj = m.group(1), int(m.group(2)), m.group(3)
            target_key = f"{prefix}.down_proj" if proj == "down_proj" else f"{prefix}.gate_up_proj"
            if target_key not in expected:
                unexpected.append(key)
                continue
            if target_key not in state:
                ref = expected[target_key]
                state[target_key] = torch.empty(ref.shape, device=device, dtype=dtype or tensor.dtype)
            inter = config.intermediate_size
            dst = state[target_key][e]
            if proj == "gate_proj":
                dst = dst[:inter]
            elif proj == "up_proj":
                dst = dst[inter:]
            if tuple(dst.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{key}: checkpoint shape {tuple(tensor.shape)} != expected {tuple(dst.shape)}"
                )
            dst.copy_(tensor)
            filled.setdefault(target_key, set()).add((e, proj))
            continue
        if key not in expected:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{key}: checkpoint shape {tuple(tensor.shape)} != model {tuple(expected[key].shape)}"
            )
        state[key] = cast(tensor)

    for target_key, parts in filled.items():
        projs = ("down_proj",) if target_key.endswith("down_proj") else ("gate_proj", "up_proj")
        want = {(e, p) for e in range(config.num_experts) for p in projs}
        if parts != want:
            raise KeyError(f"{target_key}: missing per-expert tensors {sorted(want - parts)[:6]}")
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    if strict and (missing or unexpected):
        raise KeyError(f"checkpoint mismatch: missing={missing[:10]} unexpected={unexpected[:10]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()


def load_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
    strict: bool = True,
) -> JambaForCausalLM:
    """Build a `JambaForCausalLM` from a checkpoint directory (config.json + safetensors).

    ``dtype=None`` keeps the stored dtype. The model is returned in eval mode.
    """
    config = JambaConfig.from_json(Path(path) / "config.json")
    with torch.device("meta"):
        model = JambaForCausalLM(config)
    load_state_dict_into(model, path, device=device, dtype=dtype, strict=strict)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise KeyError(f"parameters not loaded: {leftover[:10]}")
    return model.eval()


def hf_state_dict(model: JambaForCausalLM, *, per_expert: bool = True) -> dict[str, torch.Tensor]:
    """State dict with transformers' key names; fused experts split per expert unless ``per_expert=False``."""
    out: dict[str, torch.Tensor] = {}
    inter = model.config.intermediate_size
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if per_expert and key.endswith(".feed_forward.experts.gate_up_proj"):
            prefix = key[: -len(".gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"] = t[e, :inter]
                out[f"{prefix}.{e}.up_proj.weight"] = t[e, inter:]
        elif per_expert and key.endswith(".feed_forward.experts.down_proj"):
            prefix = key[: -len(".down_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.down_proj.weight"] = t[e]
        else:
            out[key] = t
    return out


def save_checkpoint(
    model: JambaForCausalLM,
    out_dir: str | Path,
    *,
    max_shard_bytes: int | None = None,
    per_expert: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write config.json, generation_config.json and model.safetensors (sharded past ``max_shard_bytes``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if dtype is not None else v).detach().to("cpu").contiguous()
        for k, v in hf_state_dict(model, per_expert=per_expert).items()
    }
    stored = next(iter(tensors.values())).dtype
    config = model.config.replace(dtype=str(stored).removeprefix("torch."))
    config.to_json(out / "config.json")
    gen = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / SAFETENSORS_SINGLE), metadata={"format": "pt"})
        return out
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out


# ============================================================================ tokenizer


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """`tokenizers.Tokenizer` from tokenizer.json plus the chat template, all from local files.

    The chat template is rendered with jinja2 the way transformers does (sandboxed, trim_blocks,
    lstrip_blocks, ``raise_exception`` available), so prompts match ``apply_chat_template``.
    """

    def __init__(
        self,
        tokenizer: Any,
        tokenizer_config: dict[str, Any],
        chat_template: str | None,
        extra_eos_ids: list[int] | None = None,
    ) -> None:
        self.backend = tokenizer
        self.tokenizer_config = tokenizer_config
        self.chat_template = chat_template
        self.bos_token = _token_text(tokenizer_config.get("bos_token"))
        self.eos_token = _token_text(tokenizer_config.get("eos_token"))
        self.pad_token = _token_text(tokenizer_config.get("pad_token"))
        ids = [self.token_to_id(self.eos_token)] + list(extra_eos_ids or [])
        self.eos_token_ids: list[int] = sorted({i for i in ids if i is not None})

    @classmethod
    def from_dir(cls, path: str | Path, extra_eos_ids: list[int] | None = None) -> Tokenizer | None:
        """Load from a checkpoint directory; None if it has no tokenizer.json."""
        from tokenizers import Tokenizer as _HFTokenizer

        path = Path(path)
        if not (path / "tokenizer.json").exists():
            return None
        backend = _HFTokenizer.from_file(str(path / "tokenizer.json"))
        cfg_path = path / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default", next(iter(named.values()), None))
        jinja_file = path / "chat_template.jinja"  # transformers >= 4.49 writes the template here
        if jinja_file.exists():
            template = jinja_file.read_text()
        return cls(backend, cfg, template, extra_eos_ids)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render the conversation; with ``tokenize=True`` return ids (no extra special tokens added,
        as transformers does, since the template already writes them)."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        text = _compile_template(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            pad_token=self.pad_token or "",
            **kwargs,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _compile_template(source: str) -> Any:
    from datetime import datetime

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
