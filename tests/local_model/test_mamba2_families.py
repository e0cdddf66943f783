"""Parity of the Mamba-2 hybrid families (Bamba, Granite 4.0-H, Nemotron-H, Falcon-H1, Zamba2) with
transformers' pure-PyTorch implementations, fp32 on CPU, from checkpoints that transformers saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import local_model
from local_model.mamba2 import ssd_chunk_scan_ref, ssd_state_update_ref
from tests.support.jamba import assert_close_logits
from tests.support.mamba2 import CASES, SHARDED, FamilyCase, random_ids, save_case


@pytest.fixture(scope="module", params=sorted(CASES))
def fam(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FamilyCase:
    name = request.param
    path = tmp_path_factory.mktemp(name)
    hf = save_case(name, path, seed=sorted(CASES).index(name))
    return FamilyCase(name=name, hf=hf, path=path, lm=local_model.load(path))


def test_prefill_logits_match_transformers(fam: FamilyCase) -> None:
    ids = random_ids(2, 21, seed=11)  # 21 tokens: several SSD chunks of 4 or 8 plus a partial one
    with torch.inference_mode():
        ref = fam.hf(ids).logits
    assert_close_logits(fam.lm.logits(ids), ref)
    if fam.name in SHARDED:
        index = json.loads((fam.path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1


def test_cached_decode_matches_full_forward(fam: FamilyCase) -> None:
    """A prefill, a multi-token chunk, then one token at a time == one full forward."""
    model = fam.lm.module
    ids = random_ids(2, 21, seed=13)
    full = fam.lm.logits(ids)
    cache = model.allocate_cache(2, 32)
    with torch.inference_mode():
        parts = [model(ids[:, :7], cache), model(ids[:, 7:12], cache)]
        parts += [model(ids[:, t : t + 1], cache) for t in range(12, 21)]
    assert cache.lengths.tolist() == [21, 21]
    assert_close_logits(torch.cat(parts, dim=1), full)


def test_32_greedy_tokens_equal_transformers_generate(fam: FamilyCase) -> None:
    prompt = random_ids(1, 9, seed=14)
    with torch.inference_mode():
        ref = fam.hf.generate(prompt, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = ref[0, prompt.shape[1] :].tolist()
    assert len(expected) == 32
    assert fam.lm.greedy(prompt[0].tolist(), 32, stop_ids=[]) == expected


def test_ragged_batch_matches_each_sequence_alone(fam: FamilyCase) -> None:
    """Rows of different lengths share every forward (right-padded chunks, an idle row, then decode
    steps at different positions) and match their solo forwards."""
    model = fam.lm.module
    a = random_ids(1, 18, seed=15)[0].tolist()
    b = random_ids(1, 11, seed=16)[0].tolist()
    cache = model.allocate_cache(2, 32)
    got: list[list[torch.Tensor]] = [[], []]
    with torch.inference_mode():
        out = model(torch.tensor([a[:9], b[:4] + [0] * 5]), cache, seq_lens=torch.tensor([9, 4]))
        got[0].append(out[0, :9])
        got[1].append(out[1, :4])
        out = model(torch.tensor([a[9:12], b[4:5] + [0, 0]]), cache, seq_lens=torch.tensor([3, 1]))
        got[0].append(out[0, :3])
        got[1].append(out[1, :1])
        out = model(torch.tensor([a[12:14], [0, 0]]), cache, seq_lens=torch.tensor([2, 0]))
        got[0].append(out[0, :2])
        for s in range(4):
            out = model(torch.tensor([[a[14 + s]], [b[5 + s]]]), cache)
            got[0].append(out[0])
            got[1].append(out[1])
    assert cache.lengths.tolist() == [18, 9]
    assert_close_logits(torch.cat(got[0]), fam.lm.logits(torch.tensor([a]))[0])
    assert_close_logits(torch.cat(got[1]), fam.lm.logits(torch.tensor([b[:9]]))[0])


def test_chunked_ssd_scan_equals_token_by_token_updates() -> None:
    """The chunked scan (any chunk size, continuing a pooled state) == the single-token recurrence."""
    g = torch.Generator().manual_seed(0)
    b, t, h, p, n, groups = 2, 13, 4, 3, 5, 2
    x, z = torch.randn(b, t, h, p, generator=g), torch.randn(b, t, h, p, generator=g)
    dt = torch.randn(b, t, h, generator=g)
    A = -torch.rand(h, generator=g) * 3
    B, C = torch.randn(b, t, groups, n, generator=g), torch.randn(b, t, groups, n, generator=g)
    D, dt_bias = torch.randn(h, generator=g), torch.randn(h, generator=g)
    start = torch.randn(5, h, p, n, generator=g)
    slots = torch.tensor([3, 1])
    step_state = start.clone()
    ys = [
        ssd_state_update_ref(
            step_state, x[:, i], dt[:, i], A, B[:, i], C[:, i], D, z[:, i], dt_bias, True, slots
        )
        for i in range(t)
    ]
    for chunk in (1, 4, 13, 32):
        state = start.clone()
        y = ssd_chunk_scan_ref(x, dt, A, B, C, chunk, D, z, dt_bias, True, None, state, slots)
        torch.testing.assert_close(y, torch.stack(ys, dim=1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state, step_state, atol=1e-5, rtol=1e-5)


def test_unknown_model_type_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba9000"}))
    with pytest.raises(ValueError, match="unsupported model_type 'mamba9000'.*bamba"):
        local_model.load(tmp_path)


BAMBA_MIN = dict(
    model_type="bamba",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    mamba_n_heads=4,
    mamba_d_state=8,
)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_type 'yarn'"),
        (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
        (dict(mamba_n_groups=3), "multiple of the Mamba groups"),
        (dict(model_type="nemotron_h"), "layers_block_type or hybrid_override_pattern"),
        (dict(model_type="zamba2", layers_block_type=["mamba", "transformer"]), "unknown zamba2 layer type"),
    ],
)
def test_bad_configs_are_clear_errors(change: dict[str, object], match: str) -> None:
    from local_model.families import config_from_dict

    with pytest.raises(ValueError, match=match):
        config_from_dict({**BAMBA_MIN, **change})
