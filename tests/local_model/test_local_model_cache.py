"""Cache semantics the serving engine relies on, and the reference kernels against each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from local_model.cache import (
    HybridCache,
    KVCache,
    MambaState,
    kv_bytes_per_token,
    mamba_state_bytes_per_sequence,
)
from local_model.config import JambaConfig
from local_model.model import (
    JambaForCausalLM,
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update_ref,
)
from tests.support.jamba import assert_close_logits


@pytest.fixture(scope="module")
def tiny() -> JambaForCausalLM:
    return JambaForCausalLM(JambaConfig.preset("tiny"), seed=3).eval()


def ids_for(model: JambaForCausalLM, batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(
        3, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def test_mamba_state_size_does_not_grow_with_sequence_length(tiny: JambaForCausalLM) -> None:
    cfg = tiny.config
    short = tiny.allocate_cache(1, capacity=100)
    long = tiny.allocate_cache(1, capacity=10_000)
    assert short.mamba_nbytes == long.mamba_nbytes == mamba_state_bytes_per_sequence(cfg)
    shapes_before = [(s.conv.shape, s.ssm.shape) for s in short.mamba_states()]
    with torch.inference_mode():
        tiny(ids_for(tiny, 1, 100, seed=0), short)
        tiny(ids_for(tiny, 1, 1, seed=1), long)
    assert [(s.conv.shape, s.ssm.shape) for s in short.mamba_states()] == shapes_before
    assert [(s.conv.shape, s.ssm.shape) for s in long.mamba_states()] == shapes_before
    for s in short.mamba_states():
        assert s.conv.shape == (1, cfg.mamba_d_inner, cfg.mamba_d_conv - 1)
        assert s.ssm.shape == (1, cfg.mamba_d_inner, cfg.mamba_d_state)
        assert s.ssm.dtype == torch.float32


def test_kv_bytes_proportional_to_attention_layers_only() -> None:
    for offset_period in [(2, 4), (0, 1), (1, 2)]:
        offset, period = offset_period
        cfg = JambaConfig.preset(
            "tiny", num_hidden_layers=6, attn_layer_offset=offset, attn_layer_period=period
        )
        n_attn = len(cfg.attention_layer_ids)
        cache = HybridCache.allocate(cfg, batch_size=3, capacity=50)
        assert len(cache.kv_caches()) == n_attn
        assert len(cache.mamba_states()) == cfg.num_hidden_layers - n_attn
        per_token = 2 * cfg.num_key_value_heads * cfg.attn_head_dim * 4
        assert cache.kv_nbytes == n_attn * per_token * 50 * 3 == kv_bytes_per_token(cfg) * 50 * 3
        assert cache.mamba_nbytes == mamba_state_bytes_per_sequence(cfg) * 3
        for i, layer in enumerate(cache.layers):
            assert isinstance(layer, KVCache) == cfg.layer_is_attention(i)
            assert isinstance(layer, MambaState) == (not cfg.layer_is_attention(i))


def test_slot_pool_matches_contiguous_batch(tiny: JambaForCausalLM) -> None:
    """Sequences living in arbitrary slots of a larger pool give the same logits; other slots untouched."""
    ids = ids_for(tiny, 2, 12, seed=4)
    ref_cache = tiny.allocate_cache(2, 16)
    pool = tiny.allocate_cache(2, 16, num_slots=5)
    with torch.inference_mode():
        ref = [tiny(ids[:, :8], ref_cache)] + [tiny(ids[:, t : t + 1], ref_cache) for t in range(8, 12)]
        view = pool.view(slots=[3, 1], lengths=[0, 0])
        got = [tiny(ids[:, :8], view)] + [tiny(ids[:, t : t + 1], view) for t in range(8, 12)]
    assert_close_logits(torch.cat(got, 1), torch.cat(ref, 1))
    assert view.lengths.tolist() == [12, 12]
    for layer in pool.layers:
        tensors = [layer.conv, layer.ssm] if isinstance(layer, MambaState) else [layer.k, layer.v]
        for t in tensors:
            assert t[[0, 2, 4]].abs().sum() == 0
            assert t[[1, 3]].abs().sum() > 0


def test_reused_slot_starts_fresh(tiny: JambaForCausalLM) -> None:
    """A row whose length is 0 ignores whatever state its slot held before."""
    a, b = ids_for(tiny, 1, 10, seed=5), ids_for(tiny, 1, 6, seed=6)
    pool = tiny.allocate_cache(1, 16, num_slots=2)
    with torch.inference_mode():
        tiny(a, pool.view([1], [0]))
        again = tiny(b, pool.view([1], [0]))
        fresh = tiny(b)
    assert_close_logits(again, fresh)


def test_kv_capacity_overflow_raises(tiny: JambaForCausalLM) -> None:
    cache = tiny.allocate_cache(1, 8)
    with torch.inference_mode(), pytest.raises(ValueError, match="capacity"):
        tiny(ids_for(tiny, 1, 9, seed=7), cache)


def test_long_prefill_uses_constant_state(tiny: JambaForCausalLM) -> None:
    """A 2,000-token chunked prefill then decode: cached logits equal the full forward at the end."""
    ids = ids_for(tiny, 1, 2001, seed=8)
    cache = tiny.allocate_cache(1, 2048)
    with torch.inference_mode():
        tiny(ids[:, :1000], cache)
        tiny(ids[:, 1000:2000], cache)
        last = tiny(ids[:, 2000:], cache)
        full = tiny(ids, last_only=True)
    assert_close_logits(last, full)
    assert cache.mamba_nbytes == mamba_state_bytes_per_sequence(tiny.config)


# ---------------------------------------------------------------------------- kernels


def _scan_inputs(
    seed: int, batch: int = 3, dim: int = 6, n: int = 5, seqlen: int = 37
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, seqlen, generator=g),
        delta=torch.randn(batch, dim, seqlen, generator=g),
        A=-torch.rand(dim, n, generator=g) * 5,
        B=torch.randn(batch, n, seqlen, generator=g),
        C=torch.randn(batch, n, seqlen, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, seqlen, generator=g),
        delta_bias=torch.randn(dim, generator=g),
    )


def test_chunked_scan_equals_sequential_scan_with_state_and_padding() -> None:
    x = _scan_inputs(0)
    h0 = torch.randn(5, 6, 5, generator=torch.Generator().manual_seed(1))
    slots = torch.tensor([4, 0, 2])
    seq_lens = torch.tensor([37, 20, 1])
    s_ref, s_chk = h0.clone(), h0.clone()
    y_ref = selective_scan_ref(
        **x, delta_softplus=True, ssm_state=s_ref, state_indices=slots, seq_lens=seq_lens
    )
    y_chk = selective_scan_chunked(
        **x, delta_softplus=True, ssm_state=s_chk, state_indices=slots, seq_lens=seq_lens, chunk_size=8
    )
    torch.testing.assert_close(y_chk, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_chk, s_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_ref[[1, 3]], h0[[1, 3]], rtol=0, atol=0)  # untouched slots
    # padding steps leave the state as it was after the last valid step
    s_short = h0.clone()
    short = {k: (v[:, :, :20] if v.ndim == 3 else v) for k, v in x.items()}
    selective_scan_ref(**short, delta_softplus=True, ssm_state=s_short, state_indices=slots)
    torch.testing.assert_close(s_ref[0], s_short[0], rtol=1e-6, atol=1e-6)


def test_scan_in_two_chunks_equals_one_and_state_update_equals_scan_step() -> None:
    x = _scan_inputs(2)
    whole = selective_scan_ref(**x, delta_softplus=True)
    state = torch.zeros(3, 6, 5)
    first = {k: (v[:, :, :30] if v.ndim == 3 else v) for k, v in x.items()}
    second = {k: (v[:, :, 30:] if v.ndim == 3 else v) for k, v in x.items()}
    y1 = selective_scan_chunked(**first, delta_softplus=True, ssm_state=state)
    s_scan = state.clone()
    y2 = selective_scan_chunked(**second, delta_softplus=True, ssm_state=s_scan)
    torch.testing.assert_close(torch.cat([y1, y2], -1), whole, rtol=1e-5, atol=1e-5)
    # the first step of `second` through the single-step update
    s_step = state.clone()
    y_step = selective_state_update_ref(
        s_step,
        second["u"][..., 0],
        second["delta"][..., 0],
        x["A"],
        second["B"][..., 0],
        second["C"][..., 0],
        x["D"],
        second["z"][..., 0],
        x["delta_bias"],
        True,
    )
    torch.testing.assert_close(y_step, y2[..., 0], rtol=1e-5, atol=1e-5)


def test_causal_conv_with_state_and_update_equal_full_conv() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 15, generator=g)
    w, b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    full = F.silu(F.conv1d(x, w[:, None], b, padding=3, groups=6)[..., :15])
    torch.testing.assert_close(causal_conv1d_ref(x, w, b, "silu"), full)
    state = torch.zeros(2, 6, 3)
    y1 = causal_conv1d_ref(x[..., :9], w, b, "silu", conv_state=state)
    torch.testing.assert_close(state, x[..., 6:9])
    y2 = [causal_conv1d_update_ref(x[..., t], state, w, b, "silu") for t in range(9, 15)]
    torch.testing.assert_close(torch.cat([y1, torch.stack(y2, -1)], -1), full, rtol=1e-5, atol=1e-5)
    # right padding: the stored context ends at each row's last valid input
    state = torch.zeros(4, 6, 3)
    causal_conv1d_ref(
        x, w, b, None, conv_state=state, state_indices=torch.tensor([2, 0]), seq_lens=torch.tensor([5, 2])
    )
    torch.testing.assert_close(state[2], x[0, :, 2:5])
    torch.testing.assert_close(state[0], torch.cat([torch.zeros(6, 1), x[1, :, :2]], -1))


def test_attention_goes_through_kvcache_attend(tiny: JambaForCausalLM) -> None:
    """A serving engine's paged cache subclasses KVCache and overrides `attend`; the model must use it."""
    calls: list[int] = []

    class CountingKV(KVCache):
        def attend(self, q, k, v, lengths, seq_lens, slots, scale):  # type: ignore[no-untyped-def]
            calls.append(q.shape[2])
            return super().attend(q, k, v, lengths, seq_lens, slots, scale)

    cache = tiny.allocate_cache(1, 8)
    cache.layers = [CountingKV(c.k, c.v) if isinstance(c, KVCache) else c for c in cache.layers]
    with torch.inference_mode():
        tiny(ids_for(tiny, 1, 5, seed=9), cache)
        tiny(ids_for(tiny, 1, 1, seed=10), cache)
    assert calls == [5, 1] and len(tiny.config.attention_layer_ids) == 1
