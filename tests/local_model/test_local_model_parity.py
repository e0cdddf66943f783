"""Parity of local_model against transformers' Jamba (its pure-PyTorch slow path on CPU), fp32."""

from __future__ import annotations

import torch

from local_model.model import DEFAULT_KERNELS, REFERENCE_KERNELS, JambaForCausalLM
from tests.support.jamba import Case, assert_close_logits, random_ids


def full_logits(model: JambaForCausalLM, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([tokens]))[0]


def test_prefill_logits_match_transformers(case: Case) -> None:
    ids = random_ids(2, 24, seed=11)
    with torch.inference_mode():
        ref = case.hf(ids).logits
    assert_close_logits(case.lm.logits(ids), ref)


def test_sequential_reference_scan_matches_transformers(case: Case) -> None:
    """The literal (sequential) kernels agree too, not only the default chunked scan."""
    ids = random_ids(1, 20, seed=12)
    with torch.inference_mode():
        ref = case.hf(ids).logits
    model = case.lm.module
    try:
        model.set_kernels(REFERENCE_KERNELS)
        assert_close_logits(case.lm.logits(ids), ref)
    finally:
        model.set_kernels(DEFAULT_KERNELS)


def test_cached_decode_matches_full_forward(case: Case) -> None:
    """Prefill into a cache, then a multi-token chunk, then one token at a time == one full forward."""
    model = case.lm.module
    ids = random_ids(2, 24, seed=13)
    full = case.lm.logits(ids)
    cache = model.allocate_cache(2, 32)
    parts = []
    with torch.inference_mode():
        parts.append(model(ids[:, :9], cache))
        parts.append(model(ids[:, 9:13], cache))
        for t in range(13, 24):
            parts.append(model(ids[:, t : t + 1], cache))
    assert cache.lengths.tolist() == [24, 24]
    assert_close_logits(torch.cat(parts, dim=1), full)


def test_ragged_batch_decodes_like_each_sequence_alone(case: Case) -> None:
    """Two sequences of different lengths share every forward (right-padded prefill, a step where they
    take different numbers of tokens, then one token each per step) and match their solo forwards."""
    model = case.lm.module
    a = random_ids(1, 20, seed=14)[0].tolist()
    b = random_ids(1, 12, seed=15)[0].tolist()
    cache = model.allocate_cache(2, 32)
    got: list[list[torch.Tensor]] = [[], []]
    with torch.inference_mode():
        # prefill 9 vs 4 tokens, right-padded with pad id 0
        ids = torch.tensor([a[:9], b[:4] + [0] * 5])
        out = model(ids, cache, seq_lens=torch.tensor([9, 4]))
        got[0].append(out[0, :9])
        got[1].append(out[1, :4])
        # 3 tokens for a, 1 for b in one call
        ids = torch.tensor([a[9:12], b[4:5] + [0, 0]])
        out = model(ids, cache, seq_lens=torch.tensor([3, 1]))
        got[0].append(out[0, :3])
        got[1].append(out[1, :1])
        assert cache.lengths.tolist() == [12, 5]
        # a step where b is idle (0 new tokens): its state must not move
        ids = torch.tensor([a[12:14], [0, 0]])
        out = model(ids, cache, seq_lens=torch.tensor([2, 0]))
        got[0].append(out[0, :2])
        assert cache.lengths.tolist() == [14, 5]
        # then single-token steps for both at different positions
        for s in range(5):
            ids = torch.tensor([[a[14 + s]], [b[5 + s]]])
            out = model(ids, cache)
            got[0].append(out[0])
            got[1].append(out[1])
    assert_close_logits(torch.cat(got[0]), full_logits(model, a[:19]))
    assert_close_logits(torch.cat(got[1]), full_logits(model, b[:10]))


def test_last_only_picks_each_rows_last_valid_token(case: Case) -> None:
    model = case.lm.module
    ids = random_ids(2, 10, seed=16)
    with torch.inference_mode():
        full = model(ids)
        last = model(ids, model.allocate_cache(2, 16), seq_lens=torch.tensor([10, 6]), last_only=True)
    assert last.shape == (2, 1, full.shape[-1])
    assert_close_logits(last[0, 0], full[0, 9])
    assert_close_logits(last[1, 0], full[1, 5])


def test_greedy_32_tokens_match_transformers_generate(case: Case) -> None:
    prompt = random_ids(1, 8, seed=17)
    with torch.inference_mode():
        ref = case.hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=32,
            do_sample=False,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=0,
        )
    ref_new = ref[0, prompt.shape[1] :].tolist()
    assert len(ref_new) == 32
    ours = case.lm.greedy(prompt[0].tolist(), max_new_tokens=32, stop_ids=[])
    assert ours == ref_new
