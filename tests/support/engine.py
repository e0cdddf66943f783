"""Fixtures for the engine/server tests: a tiny random hybrid checkpoint with a real tokenizer on disk.

The model is the "tiny" preset (3 Mamba + 1 attention layer, MoE, GQA) with a 320-token vocabulary and
weights redrawn at O(1) scale, so logits are far from ties and greedy outputs are a sharp test. The
tokenizer is a byte-level BPE trained in the fixture on a few sentences (any text encodes, multi-byte
characters exercise incremental detokenization) with a chat template in tokenizer_config.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

import local_model
from local_model.config import JambaConfig
from local_model.model import JambaForCausalLM
from local_model.weights import save_checkpoint

VOCAB = 320


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A hybrid model mixes Mamba layers with attention layers and experts.",
    "Continuous batching lets requests join and leave between steps.",
    "Prefix caching reuses the state of a long system prompt.",
    "Héllo wörld, ça va? Naïve café — 日本語 テキスト.",
    "<|system|> <|user|> <|assistant|> You are a helpful assistant.",
] * 4


def tiny_config(**overrides: Any) -> JambaConfig:
    base: dict[str, Any] = dict(vocab_size=VOCAB, max_position_embeddings=16384, pad_token_id=0, bos_token_id=1,
                                tie_word_embeddings=False,
                                eos_token_id=2)
    return JambaConfig.preset("tiny", **{**base, **overrides})


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """O(1)-scale weights: every part of the network matters and top logits are well separated."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            new = torch.log(torch.empty(p.shape).uniform_(0.5, 6.0, generator=g))
        elif name.endswith(".D"):
            new = 1.0 + 0.5 * torch.randn(p.shape, generator=g)
        elif "layernorm" in name or name.endswith("norm.weight"):
            new = 1.0 + 0.3 * torch.randn(p.shape, generator=g)
        elif name.endswith("dt_proj.bias"):
            new = torch.empty(p.shape).uniform_(-4.0, 0.0, generator=g)
        elif p.ndim == 1:
            new = 0.3 * torch.randn(p.shape, generator=g)
        elif name.endswith("embed_tokens.weight"):
            new = torch.randn(p.shape, generator=g)
        else:
            new = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])
        p.copy_(new)


def write_tokenizer(path: Path, corpus: list[str] = CORPUS) -> None:
    """A byte-level BPE of VOCAB ids trained on ``corpus``, and a tokenizer_config.json with CHAT_TEMPLATE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() <= VOCAB
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE,
    }))


def build_checkpoint(path: Path, seed: int = 0, **overrides: Any) -> Path:
    model = JambaForCausalLM(tiny_config(**overrides), seed=seed)
    randomize_(model, seed + 1)
    save_checkpoint(model, path)
    write_tokenizer(path)
    return path


def reference_greedy(lm: local_model.LocalModel, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy continuation computed alone, with the model's own contiguous cache (no engine code)."""
    return lm.greedy(prompt, max_tokens, stop_ids=lm.config.eos_token_ids)


def reference_adjusted_greedy(
    lm: local_model.LocalModel,
    prompt: list[int],
    max_tokens: int,
    *,
    presence: float = 0.0,
    frequency: float = 0.0,
    bias: dict[int, float] | None = None,
    count_prompt: bool = False,
) -> list[int]:
    """Greedy continuation under OpenAI's presence/frequency penalties and ``logit_bias``, computed with one
    full forward per token (no engine code). Penalties count the generated tokens only (OpenAI, vLLM);
    ``count_prompt`` counts the prompt too, to show that a test tells the two readings apart."""
    out: list[int] = []
    for _ in range(max_tokens):
        logits = lm.logits(torch.tensor([prompt + out]))[0, -1].float()
        counted = (prompt + out) if count_prompt else out
        counts = torch.bincount(torch.tensor(counted, dtype=torch.long), minlength=logits.shape[-1]).float()
        logits = logits - frequency * counts - presence * (counts > 0).float()
        for token, b in (bias or {}).items():
            logits[token] += b
        out.append(int(logits.argmax()))
    return out


def greedy_stop_token(lm: local_model.LocalModel, after: int, max_seed: int = 50) -> tuple[list[int], list[int]]:
    """A prompt and its greedy continuation whose token at index ``after`` appears there for the first time
    (and is no special token): made the EOS of a checkpoint with the same weights, generation stops on it
    after ``after`` visible tokens."""
    for seed in range(max_seed):
        prompt = random_prompt(10, seed)
        cont = lm.greedy(prompt, after + 1, stop_ids=[])
        if cont[after] not in cont[:after] and cont[after] > 2:
            return prompt, cont
    raise AssertionError("no prompt whose greedy continuation has a fresh token there")


def random_prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
