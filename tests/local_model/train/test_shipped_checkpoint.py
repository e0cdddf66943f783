"""The checkpoint committed in local_model/checkpoints/hybridgate-tiny/ loads, is small, and talks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import local_model
from local_model.engine import openai_api as oa
from local_model.train import CHAT_TEMPLATE, SPECIAL_TOKENS

SHIPPED = Path(__file__).resolve().parents[3] / "local_model" / "checkpoints" / "hybridgate-tiny"
MAX_BYTES = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def lm() -> local_model.LocalModel:
    return local_model.load(SHIPPED)


def test_files_and_size() -> None:
    names = {p.name for p in SHIPPED.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= names
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"checkpoint is {total / 2**20:.1f} MiB"
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["model_type"] == "jamba" and config["dtype"] in ("bfloat16", "float16")


def test_architecture_is_a_small_hybrid(lm: local_model.LocalModel) -> None:
    cfg = lm.config
    assert 0 < cfg.layer_types.count("attention") < cfg.num_hidden_layers  # Mamba + attention
    assert cfg.num_experts > 1 and any(cfg.layer_is_moe(i) for i in range(cfg.num_hidden_layers))
    assert cfg.tie_word_embeddings
    n = sum(p.numel() for p in lm.module.parameters())
    assert 5_000_000 < n < 25_000_000


def test_tokenizer_round_trips_and_has_chat_tokens(lm: local_model.LocalModel) -> None:
    tok = lm.tokenizer
    assert tok is not None
    for text in ["Alice was beginning to get very tired.", "Ünïcödé, emoji 🙂 and\ttabs\n  spaces!", ""]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    end = tok.token_to_id("<|end|>")
    assert end in lm.config.eos_token_ids and end in tok.eos_token_ids


def test_chat_template(lm: local_model.LocalModel) -> None:
    tok = lm.tokenizer
    assert tok is not None and tok.chat_template == CHAT_TEMPLATE
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert text == "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    assert isinstance(ids, list) and ids[0] == tok.bos_token_id
    assert ids[1] == tok.token_to_id("<|system|>")
    # OpenAI-style content parts render as their text.
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert tok.apply_chat_template(parts, add_generation_prompt=False) == "<|bos|><|user|>\nHi<|end|>\n"


def test_developer_role_is_the_system_role(lm: local_model.LocalModel) -> None:
    """OpenAI's newer name for the system role renders as the system turn the model was trained on."""
    tok = lm.tokenizer
    assert tok is not None
    user = {"role": "user", "content": "Hi"}
    system = [{"role": "system", "content": "Be brief."}, user]
    developer = [{"role": "developer", "content": "Be brief."}, user]
    assert tok.apply_chat_template(developer) == tok.apply_chat_template(system)
    body = {"model": "m", "max_tokens": 4}
    assert (oa.parse("chat", {**body, "messages": developer}, tok, 2048).prompts
            == oa.parse("chat", {**body, "messages": system}, tok, 2048).prompts)


def test_greedy_generation_is_decodable_text(lm: local_model.LocalModel) -> None:
    tok = lm.tokenizer
    assert tok is not None
    torch.set_num_threads(1)
    for prompt_ids in (
        tok.encode("Alice was beginning to", add_special_tokens=False),
        tok.apply_chat_template([{"role": "user", "content": "Hello!"}], tokenize=True),
    ):
        assert isinstance(prompt_ids, list)
        out = lm.greedy(prompt_ids, 12)
        text = tok.decode(out)
        assert out and text.strip(), (prompt_ids, out)
        assert all(0 <= i < lm.config.vocab_size for i in out)


def test_transformers_reads_it_with_the_same_logits_and_prompt(lm: local_model.LocalModel) -> None:
    """The brief's promise: the HF layout, config and tokenizer files work with transformers as well."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.JambaForCausalLM.from_pretrained(SHIPPED, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(SHIPPED)
    tok = lm.tokenizer
    assert tok is not None
    msgs = [{"role": "user", "content": "Tell me a story."}]
    prompt = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt == tok.apply_chat_template(msgs, add_generation_prompt=True)
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    assert hf_tok(prompt, add_special_tokens=False).input_ids == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, lm.logits(ids), rtol=1e-4, atol=1e-4)
