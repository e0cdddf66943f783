"""Unit tests: sampler distributions, block allocator / prefix registry, paged attention vs contiguous."""

from __future__ import annotations

import collections

import pytest
import torch

from local_model.cache import KVCache
from local_model.engine.kv_blocks import BlockAllocator, BlockTable, OutOfBlocks, block_hashes
from local_model.engine.paged import PagedKVCache, PagedStep, paged_attention
from local_model.engine.sampler import SampleRow, SamplingParams, adjust_logits, make_generator, sample
from local_model.model import attention_over_context, attention_with_kv_cache, repeat_kv


def draw(logits: torch.Tensor, params: SamplingParams, n: int, seed: int = 0) -> collections.Counter[int]:
    """``n`` independent draws: one batch of ``n`` rows with the same logits, sharing one generator."""
    g = make_generator(seed)
    tokens, _ = sample(logits[None].expand(n, -1), [SampleRow(params, g)] * n)
    return collections.Counter(tokens)


def test_top_p_and_top_k_sample_the_renormalised_set() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    c = draw(logits, SamplingParams(temperature=1.0, top_p=0.7), 4000)
    assert set(c) == {0, 1}  # mass before token 2 is 0.8 >= 0.7
    assert abs(c[0] / 4000 - 0.5 / 0.8) < 0.03
    c = draw(logits, SamplingParams(temperature=1.0, top_k=3), 4000, seed=1)
    assert set(c) == {0, 1, 2} and abs(c[2] / 4000 - 0.15 / 0.95) < 0.03
    c = draw(logits, SamplingParams(temperature=1.0), 4000, seed=2)
    assert abs(c[3] / 4000 - 0.05) < 0.015
    c = draw(logits, SamplingParams(temperature=1.0, top_k=3, top_p=0.6), 2000, seed=3)
    assert set(c) == {0, 1}  # top-p on the top-3-renormalised distribution: 0.5/0.95 < 0.6


def test_flat_nucleus_by_rejection_is_exact() -> None:
    vocab = 1000
    logits = torch.linspace(0, 1, vocab)  # flat: the 0.5-nucleus needs far more than 256 tokens
    probs = torch.softmax(logits, -1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    nucleus = set(order[before < 0.5].tolist())
    assert len(nucleus) > 256
    c = draw(logits, SamplingParams(temperature=1.0, top_p=0.5), 3000, seed=4)
    assert set(c) <= nucleus
    top_half = sum(v for t, v in c.items() if t >= 750)
    expect = probs[750:].sum() / probs[sorted(nucleus)].sum()
    assert abs(top_half / 3000 - expect.item()) < 0.04


def test_seeded_rows_are_independent_of_the_batch() -> None:
    logits = torch.randn(6, 50)
    p = SamplingParams(temperature=0.8, top_p=0.9, seed=11)
    alone = [sample(logits[2:3], [SampleRow(p, make_generator(11))])[0][0] for _ in range(1)]
    batch_rows = [SampleRow(SamplingParams(temperature=1.0), make_generator(i)) for i in range(6)]
    batch_rows[2] = SampleRow(p, make_generator(11))
    together = sample(logits, batch_rows)[0][2]
    assert alone[0] == together


def test_bias_and_penalties_change_the_pick_not_the_reported_logprobs() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 3)
    rows = [
        SampleRow(SamplingParams(temperature=0.0, logprobs=True, logit_bias={3: 10.0}), None),
        # generated [0, 0, 1]: token 0 -> 2 - 1.5 - 2 * 0.5 = -0.5, token 1 -> 1 - 1.5 - 0.5 = -1, token 2 stays 0
        SampleRow(SamplingParams(temperature=0.0, logprobs=True, presence_penalty=1.5, frequency_penalty=0.5),
                  None, [0, 0, 1]),
        SampleRow(SamplingParams(temperature=0.0, logprobs=True), None, [0, 0]),
    ]
    tokens, lps = sample(logits, rows)
    assert tokens == [3, 2, 0]
    raw = torch.log_softmax(logits[0], -1)
    assert [lp.logprob for lp in lps if lp is not None] == pytest.approx([raw[3].item(), raw[2].item(), raw[0].item()])
    adjusted = adjust_logits(logits, rows)
    assert adjusted[1].tolist() == pytest.approx([-0.5, -1.0, 0.0, -1.0])
    assert torch.equal(adjusted[2], logits[2]) and torch.equal(logits[0], torch.tensor([2.0, 1.0, 0.0, -1.0]))


def test_block_allocator_refcounts_cache_and_evicts_lru() -> None:
    a = BlockAllocator(4, block_size=2)
    toks = [5, 6, 7, 8, 9]
    hashes = block_hashes(toks, 2)
    assert len(hashes) == 2 and hashes != block_hashes([5, 6, 7, 9], 2)
    t = BlockTable()
    t.ensure(a, 5)
    assert len(t) == 3 and a.num_free == 1
    a.register(t.blocks[0], hashes[0], 0, toks[:2])
    a.register(t.blocks[1], hashes[1], hashes[0], toks[2:4])
    assert a.lookup(hashes[0], 0, [5, 6]) == t.blocks[0]
    assert a.lookup(hashes[0], 0, [5, 7]) is None  # content is verified, not just the hash
    cached0, cached1, plain = t.blocks
    t.free(a)
    assert a.num_free == 4 and a.num_cached == 2 and a.refcount(cached0) == 0
    other = BlockTable()
    other.append_shared(a, cached0)  # a prefix hit revives an evictable block
    assert a.refcount(cached0) == 1 and a.num_free == 3
    got = a.allocate_many(3)  # free blocks first, then the LRU cached one (cached1), never a referenced one
    assert plain in got and cached1 in got and cached0 not in got
    assert a.lookup(hashes[1], hashes[0], [7, 8]) is None and a.num_cached == 1
    with pytest.raises(OutOfBlocks):
        a.allocate()


@pytest.mark.parametrize("row_wise", [False, True])
@pytest.mark.parametrize("width", [1, 5])
def test_paged_attention_equals_contiguous(
    width: int, row_wise: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both prefill paths (dense mask; row by row without a mask, taken above `PagedStep.MASK_LIMIT`)."""
    if row_wise:
        monkeypatch.setattr(PagedStep, "MASK_LIMIT", 0)
    torch.manual_seed(0)
    heads, kv_heads, hd, bs = 4, 2, 8, 4
    lengths, seq_lens = [3, 9, 0], [width, max(1, width - 2), width]
    batch = len(lengths)
    contiguous = KVCache(torch.zeros(batch, kv_heads, 32, hd), torch.zeros(batch, kv_heads, 32, hd))
    pool_k, pool_v = torch.zeros(40 * bs, kv_heads, hd), torch.zeros(40 * bs, kv_heads, hd)
    tables = [[7, 3, 12, 5], [1, 30, 2, 9], [22, 11, 4, 8]]
    # Fill the past positions identically in both layouts.
    for b, n in enumerate(lengths):
        for pos in range(n):
            kk, vv = torch.randn(kv_heads, hd), torch.randn(kv_heads, hd)
            contiguous.k[b, :, pos], contiguous.v[b, :, pos] = kk, vv
            row = tables[b][pos // bs] * bs + pos % bs
            pool_k[row], pool_v[row] = kk, vv
    q = torch.randn(batch, heads, width, hd)
    k, v = torch.randn(batch, kv_heads, width, hd), torch.randn(batch, kv_heads, width, hd)
    lt, st = torch.tensor(lengths), torch.tensor(seq_lens)
    ref = attention_with_kv_cache(q, k, v, contiguous, lt, st, None, hd**-0.5)
    step = PagedStep.build(tables, lengths, seq_lens, bs, width)
    assert (step.row_spans is not None) == (row_wise and width > 1) and (step.mask is None) == (
        step.row_spans is not None
    )
    out = paged_attention(q, k, v, PagedKVCache(pool_k, pool_v, step), hd**-0.5)
    for b in range(batch):
        torch.testing.assert_close(out[b, :, : seq_lens[b]], ref[b, :, : seq_lens[b]])
        n = lengths[b] + seq_lens[b]
        rows = [tables[b][p // bs] * bs + p % bs for p in range(n)]
        torch.testing.assert_close(pool_k[rows], contiguous.k[b, :, :n].transpose(0, 1))


@pytest.mark.parametrize(("t", "s", "heads", "kv_heads"), [(7, 20, 4, 2), (6, 6, 4, 4), (1, 9, 8, 2)])
def test_attention_over_context_equals_the_dense_mask(t: int, s: int, heads: int, kv_heads: int) -> None:
    """New queries over cached + own keys, lower-right causal, GQA: as SDPA with the explicit mask."""
    g = torch.Generator().manual_seed(t * s)
    q = torch.randn(2, heads, t, 8, generator=g)
    k, v = torch.randn(2, kv_heads, s, 8, generator=g), torch.randn(2, kv_heads, s, 8, generator=g)
    mask = torch.arange(s)[None, :] <= (s - t + torch.arange(t))[:, None]
    rep = heads // kv_heads
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, repeat_kv(k, rep), repeat_kv(v, rep), attn_mask=mask, scale=0.3
    )
    torch.testing.assert_close(attention_over_context(q, k, v, 0.3), ref)


@pytest.mark.parametrize("temperature", [0.0, 5e-324, 1e-45, 1e-38, 1e-6])
def test_a_vanishing_temperature_samples_the_argmax(temperature: float) -> None:
    """logits / 1e-38 overflows the softmax to NaN; below `GREEDY_BELOW_TEMPERATURE` the row is greedy."""
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(5)) * 8
    rows = [SampleRow(SamplingParams(temperature=temperature), make_generator(i)) for i in range(3)]
    tokens, _ = sample(logits, rows)
    assert tokens == logits.argmax(-1).tolist()
