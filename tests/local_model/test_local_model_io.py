"""Config round trips, checkpoint layouts (single / sharded / fused experts), save_checkpoint, tokenizer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import local_model
from local_model.config import PRESETS, JambaConfig
from local_model.model import JambaForCausalLM
from local_model.weights import Tokenizer, save_checkpoint
from tests.support.jamba import CASES, Case, assert_close_logits, hf_config, random_ids, randomize_


def test_import_is_cheap() -> None:
    code = "import sys, local_model; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(CASES))
def test_config_matches_transformers_semantics(name: str, tmp_path: Path) -> None:
    from transformers import JambaConfig as HFJambaConfig

    hf = hf_config(name)
    hf.save_pretrained(tmp_path)
    cfg = JambaConfig.from_json(tmp_path / "config.json")
    assert cfg.layer_types == hf.layers_block_type
    assert [cfg.layer_is_moe(i) for i in range(cfg.num_hidden_layers)] == [
        n > 1 for n in hf.layers_num_experts
    ]
    assert cfg.mamba_dt_rank == hf.mamba_dt_rank
    back = HFJambaConfig(**cfg.to_hf_dict())
    for key in (
        "hidden_size",
        "num_key_value_heads",
        "attn_layer_offset",
        "expert_layer_period",
        "mamba_dt_rank",
        "mamba_conv_bias",
        "mamba_proj_bias",
        "tie_word_embeddings",
        "hidden_act",
        "eos_token_id",
    ):
        assert getattr(back, key) == getattr(hf, key), key


def test_config_defaults_presets_and_validation() -> None:
    cfg = JambaConfig(hidden_size=100, num_attention_heads=4, num_key_value_heads=2)
    assert cfg.mamba_dt_rank == math.ceil(100 / 16)
    assert JambaConfig.from_dict({"model_type": "jamba", "num_local_experts": 6}).num_experts == 6
    for name in PRESETS:
        c = JambaConfig.preset(name)
        assert any(c.layer_is_attention(i) for i in range(c.num_hidden_layers))
        assert any(c.layer_is_moe(i) for i in range(c.num_hidden_layers))
    assert 15e6 < JambaConfig.preset("small-20m").num_parameters() < 25e6
    with pytest.raises(ValueError):
        JambaConfig(attn_layer_period=2, attn_layer_offset=2)
    with pytest.raises(ValueError):
        JambaConfig(num_attention_heads=4, num_key_value_heads=3, hidden_size=64)
    with pytest.raises(ValueError):
        JambaConfig.from_dict({"model_type": "mamba"})


def test_sharded_and_fused_layouts_load_identically(moe_case: Case, tmp_path: Path) -> None:
    sharded, fused = tmp_path / "sharded", tmp_path / "fused"
    moe_case.hf.save_pretrained(sharded, max_shard_size="20KB")
    moe_case.hf.save_pretrained(fused, save_original_format=False)
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    fused_keys = load_file(fused / "model.safetensors").keys()
    assert any(k.endswith("experts.gate_up_proj") for k in fused_keys)
    per_expert_keys = load_file(moe_case.path / "model.safetensors").keys()
    assert any(k.endswith("experts.0.gate_proj.weight") for k in per_expert_keys)

    base = moe_case.lm.module.state_dict()
    for path in (sharded, fused):
        other = local_model.load(path).module.state_dict()
        assert other.keys() == base.keys()
        for k in base:
            assert torch.equal(other[k], base[k]), (path.name, k)
    ids = random_ids(1, 12, seed=21)
    with torch.inference_mode():
        assert_close_logits(local_model.load(sharded).logits(ids), moe_case.hf(ids).logits)


def test_missing_tensor_is_an_error(moe_case: Case, tmp_path: Path) -> None:
    tensors = load_file(moe_case.path / "model.safetensors")
    del tensors["model.layers.0.feed_forward.experts.1.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((moe_case.path / "config.json").read_text())
    with pytest.raises(KeyError, match="up_proj"):
        local_model.load(tmp_path)


def test_load_in_bfloat16(moe_case: Case) -> None:
    lm = local_model.load(moe_case.path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in lm.module.parameters())
    ids = random_ids(1, 10, seed=22)
    ours, ref = lm.logits(ids).float(), moe_case.lm.logits(ids)
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() < 0.1 * ref.abs().max()
    # the cached path in bf16 (fp32 SSM state) agrees with the bf16 full forward
    cache = lm.new_cache(1, 16)
    assert cache.mamba_states()[0].conv.dtype == torch.bfloat16
    assert cache.mamba_states()[0].ssm.dtype == torch.float32
    with torch.inference_mode():
        steps = [lm.module(ids[:, :6], cache)] + [lm.module(ids[:, t : t + 1], cache) for t in range(6, 10)]
    stepped = torch.cat(steps, 1).float()
    assert (stepped - ours).abs().max() < 0.05 * ours.abs().max()


def test_init_is_deterministic() -> None:
    cfg = JambaConfig.preset("tiny")
    a, b, c = (JambaForCausalLM(cfg, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mamba.in_proj.weight"], c["model.layers.0.mamba.in_proj.weight"])


@pytest.mark.parametrize("per_expert, shard", [(True, None), (True, 60_000), (False, None)])
def test_save_checkpoint_loads_in_transformers_and_back(
    per_expert: bool, shard: int | None, tmp_path: Path
) -> None:
    from transformers import JambaForCausalLM as HFJamba

    ours = JambaForCausalLM(JambaConfig.preset("tiny", vocab_size=120), seed=5).eval()
    randomize_(ours, seed=6)
    save_checkpoint(ours, tmp_path, per_expert=per_expert, max_shard_bytes=shard)
    assert (tmp_path / "model.safetensors.index.json").exists() == (shard is not None)
    hf = HFJamba.from_pretrained(tmp_path).eval()
    ids = random_ids(2, 16, seed=23, vocab=120)
    with torch.inference_mode():
        ref = hf(ids).logits
        assert_close_logits(ours(ids), ref)
    back = local_model.load(tmp_path)
    assert back.module.lm_head.weight is back.module.model.embed_tokens.weight  # tied after assign
    sd, sd_back = ours.state_dict(), back.module.state_dict()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)


# ---------------------------------------------------------------------------- tokenizer

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('bad role') }}{% endif %}<|{{ m['role'] }}|> {{ m['content'] }} {{ eos_token }} "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _write_tokenizer(path: Path, template_in_jinja_file: bool) -> None:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models, pre_tokenizers, processors

    special = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    words = ["hello", "world", "how", "are", "you", "fine", "thanks", "?", "!"]
    vocab = {t: i for i, t in enumerate(special + words)}
    tok = HFTok(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(special)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if template_in_jinja_file:
        (path / "chat_template.jinja").write_text(TEMPLATE)
    else:
        cfg["chat_template"] = TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("jinja_file", [False, True])
def test_tokenizer_matches_transformers(jinja_file: bool, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    _write_tokenizer(tmp_path, jinja_file)
    ours = Tokenizer.from_dir(tmp_path, extra_eos_ids=[4])
    ref = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert ours is not None
    text = "hello world how are you ?"
    assert ours.encode(text) == ref(text)["input_ids"] == [1, 7, 8, 9, 10, 11, 14]
    assert ours.decode(ours.encode(text)) == ref.decode(ref(text)["input_ids"], skip_special_tokens=True)
    assert ours.eos_token_ids == [2, 4] and ours.bos_token_id == 1 and ours.pad_token_id == 0
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "fine thanks"},
        {"role": "user", "content": "how are you ?"},
    ]
    prompt = ours.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|assistant|>")
    ref_ids = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ref_ids = ref_ids["input_ids"] if not isinstance(ref_ids, list) else ref_ids
    assert ours.apply_chat_template(messages, tokenize=True) == list(ref_ids)
    with pytest.raises(Exception, match="bad role"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])
    # older tokenizer_config.json files store special tokens as AddedToken dicts
    legacy = Tokenizer(ours.backend, {"eos_token": {"__type": "AddedToken", "content": "</s>"}}, None)
    assert legacy.eos_token == "</s>" and legacy.eos_token_ids == [2]


def test_load_attaches_tokenizer(moe_case: Case, tmp_path: Path) -> None:
    for f in moe_case.path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    assert local_model.load(tmp_path).tokenizer is None
    _write_tokenizer(tmp_path, template_in_jinja_file=False)
    lm = local_model.load(tmp_path)
    assert lm.tokenizer is not None and lm.tokenizer.eos_token_ids == [2]
    assert lm.config.num_experts == 4 and lm.logits(random_ids(1, 3, seed=1)).shape == (1, 3, 101)
