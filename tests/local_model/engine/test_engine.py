"""Engine behaviour driven by hand (`run_until_idle`, no thread): batching, chunking, caches, sampling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import local_model
from local_model.engine import Engine, EngineConfig, EngineOverloaded, PromptTooLong, SamplingParams
from local_model.engine.sequence import Status
from tests.support.engine import build_checkpoint, random_prompt, reference_greedy

GREEDY = dict(temperature=0.0)


def test_batched_greedy_equals_each_alone(make_engine: Callable[..., Engine], tiny_lm: local_model.LocalModel) -> None:
    engine = make_engine(prefill_chunk_tokens=48)
    prompts = [random_prompt(n, seed=i) for i, n in enumerate([1, 5, 17, 40, 63, 90, 8, 130, 3, 33, 64, 71])]
    streams = [engine.submit_sync(p, SamplingParams(max_tokens=10, **GREEDY)) for p in prompts]
    engine.run_until_idle()
    for p, s in zip(prompts, streams, strict=True):
        assert s.result().choices[0].token_ids == reference_greedy(tiny_lm, p, 10)
    assert engine.allocator.num_used == 0 and engine.slots.num_free == engine.slots.num_slots


def test_chunked_prefill_never_stalls_a_running_decode(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(prefill_chunk_tokens=32)
    decoding = engine.submit_sync(random_prompt(5, 1), SamplingParams(max_tokens=30, ignore_eos=True, **GREEDY))
    with torch.inference_mode():
        for _ in range(3):
            engine.step()
        long = engine.submit_sync(random_prompt(300, 2), SamplingParams(max_tokens=2, ignore_eos=True, **GREEDY))
        seq = engine.scheduler.running[0]
        for _ in range(12):  # 300 prompt tokens at <= 32 per step: the long prefill spans ~10 steps
            before = seq.num_generated
            engine.step()
            assert seq.num_generated == before + 1, "the decode must advance every step"
            assert engine.stats.prefill_tokens <= 5 + 32 * engine.stats.steps
    engine.run_until_idle()
    assert decoding.result().choices[0].finish_reason == "length"
    assert long.result().usage.completion_tokens == 2


def test_prefix_cache_hit_is_identical_and_skips_prefill(make_engine: Callable[..., Engine],
                                                         tiny_lm: local_model.LocalModel) -> None:
    engine = make_engine()
    system = random_prompt(150, 7)  # a long shared "system prompt"
    first = system + random_prompt(9, 8)
    cold = engine.submit_sync(first, SamplingParams(max_tokens=12, **GREEDY))
    engine.run_until_idle()
    prefill_cold = engine.stats.prefill_tokens
    assert prefill_cold == len(first)
    warm = engine.submit_sync(first, SamplingParams(max_tokens=12, **GREEDY))
    engine.run_until_idle()
    cold_ids, warm_ids = cold.result().choices[0].token_ids, warm.result().choices[0].token_ids
    assert cold_ids == warm_ids == reference_greedy(tiny_lm, first, 12)
    hit = (len(first) - 1) // 8 * 8  # last block boundary before the final prompt token
    assert warm.usage is not None and warm.usage.cached_tokens == hit
    assert engine.stats.prefill_tokens - prefill_cold == len(first) - hit
    # Same system prompt, different question: reuses the snapshot at the last interval boundary (128).
    other = system + random_prompt(20, 9)
    s = engine.submit_sync(other, SamplingParams(max_tokens=12, **GREEDY))
    engine.run_until_idle()
    other_ids = s.result().choices[0].token_ids
    assert s.usage is not None and s.usage.cached_tokens == 128
    assert other_ids == reference_greedy(tiny_lm, other, 12)
    assert engine.scheduler.prefix.hit_tokens == hit + 128
    # With the cache off the outputs are the same.
    off = make_engine(prefix_caching=False)
    s_off = off.submit_sync(other, SamplingParams(max_tokens=12, **GREEDY))
    off.run_until_idle()
    assert s_off.result().choices[0].token_ids == other_ids
    assert off.scheduler.prefix.hit_tokens == 0


def test_preemption_under_memory_pressure_keeps_outputs(tiny_ckpt: Path, tiny_lm: local_model.LocalModel) -> None:
    # 24 blocks of 8 tokens for 6 sequences that each need ~6-7 blocks: decodes must preempt.
    plan_probe = Engine(tiny_lm.module, tiny_lm.tokenizer, EngineConfig(memory_budget_mb=1, max_num_seqs=8,
                                                                        block_size=8, max_model_len=128))
    per_block = plan_probe.plan.kv_bytes_per_block
    ssm = plan_probe.plan.ssm_bytes_per_seq
    budget = (16 * ssm + 24 * per_block) / 2**20
    engine = Engine(tiny_lm.module, tiny_lm.tokenizer, EngineConfig(
        memory_budget_mb=budget, max_num_seqs=8, block_size=8, max_model_len=128, prefill_chunk_tokens=64))
    assert engine.plan.num_blocks == 24
    prompts = [random_prompt(20 + 3 * i, 100 + i) for i in range(6)]
    streams = [engine.submit_sync(p, SamplingParams(max_tokens=30, ignore_eos=True, **GREEDY)) for p in prompts]
    engine.run_until_idle()
    assert engine.scheduler.num_preemptions > 0
    for p, s in zip(prompts, streams, strict=True):
        expected = tiny_lm.greedy(p, 30, stop_ids=[])
        assert s.result().choices[0].token_ids == expected
    assert engine.allocator.num_used == 0


def test_mamba_memory_is_constant_and_kv_scales_with_attention_layers(
        make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    engine = make_engine(max_model_len=12000, memory_budget_mb=64, prefill_chunk_tokens=2048, snapshot_interval=2048)
    seen: dict[int, tuple[int, int]] = {}
    for n in (100, 10_000):
        s = engine.submit_sync(random_prompt(n, n), SamplingParams(max_tokens=2, ignore_eos=True, **GREEDY))
        with torch.inference_mode():
            while not engine.running_sequences() or engine.running_sequences()[0].num_generated < 1:
                engine.step()
        seq = engine.running_sequences()[0]
        seen[n] = engine.sequence_memory_bytes(seq)
        assert len(seq.table) == -(-n // 8)
        engine.run_until_idle()
        assert s.result().usage.prompt_tokens == n
    cfg = engine.model.config
    slot_bytes = sum(s.conv[0].nbytes + s.ssm[0].nbytes for s in engine.slots.states)
    assert seen[100][0] == seen[10_000][0] == slot_bytes == engine.ssm_bytes_per_sequence()
    per_token = engine.kv_bytes_per_token()
    assert per_token == 2 * len(cfg.attention_layer_ids) * cfg.num_key_value_heads * cfg.attn_head_dim * 4
    assert seen[100][1] == -(-100 // 8) * 8 * per_token
    assert seen[10_000][1] == -(-10_000 // 8) * 8 * per_token
    # KV per token follows the number of attention layers, not of Mamba layers.
    one_attn = JambaConfigs.per_token(num_hidden_layers=4, attn_layer_period=4)
    two_attn = JambaConfigs.per_token(num_hidden_layers=4, attn_layer_period=2)
    more_mamba = JambaConfigs.per_token(num_hidden_layers=8, attn_layer_period=8, attn_layer_offset=2)
    assert two_attn == 2 * one_attn and more_mamba == one_attn


class JambaConfigs:
    @staticmethod
    def per_token(**kw: int) -> int:
        from local_model.engine.config import plan_memory
        from tests.support.engine import tiny_config

        kw.setdefault("attn_layer_offset", 1)
        return plan_memory(tiny_config(**kw), EngineConfig(), torch.float32).kv_bytes_per_block // 16


def test_seeded_sampling_is_reproducible_across_batches(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    prompt = random_prompt(12, 3)
    params = dict(temperature=0.9, top_p=0.9, top_k=50, max_tokens=16, ignore_eos=True)
    alone = engine.submit_sync(prompt, SamplingParams(seed=1234, **params))
    engine.run_until_idle()
    crowd = [engine.submit_sync(random_prompt(7 + i, 50 + i), SamplingParams(seed=i, **params)) for i in range(5)]
    again = engine.submit_sync(prompt, SamplingParams(seed=1234, **params))
    other = engine.submit_sync(prompt, SamplingParams(seed=99, **params))
    engine.run_until_idle()
    a, b = alone.result().choices[0].token_ids, again.result().choices[0].token_ids
    assert a == b
    assert other.result().choices[0].token_ids != a
    assert all(c.result().usage.completion_tokens == 16 for c in crowd)


def test_n_choices_share_the_prompt_and_differ(make_engine: Callable[..., Engine],
                                               tiny_lm: local_model.LocalModel) -> None:
    engine = make_engine()
    prompt = random_prompt(70, 11)
    s = engine.submit_sync(prompt, SamplingParams(n=4, temperature=1.0, seed=5, max_tokens=8, ignore_eos=True))
    engine.run_until_idle()
    res = s.result()
    assert [c.index for c in res.choices] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 8 and c.finish_reason == "length" for c in res.choices)
    assert len({tuple(c.token_ids) for c in res.choices}) > 1
    assert res.usage.completion_tokens == 32 and res.usage.prompt_tokens == 70
    # choices 1..3 reused choice 0's prompt prefix: only the last partial block was prefilled again.
    assert engine.stats.prefill_tokens == 70 + 3 * (70 - 64)
    greedy = engine.submit_sync(prompt, SamplingParams(n=3, temperature=0.0, max_tokens=8, ignore_eos=True))
    engine.run_until_idle()
    expected = tiny_lm.greedy(prompt, 8, stop_ids=[])
    assert all(c.token_ids == expected for c in greedy.result().choices)


def test_stop_strings_and_stop_tokens(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    prompt = engine.tokenizer.encode("The quick brown fox")
    base = dict(max_tokens=40, ignore_eos=True, temperature=1.0, seed=3)
    full = engine.submit_sync(prompt, SamplingParams(**base))
    engine.run_until_idle()
    text, ids = full.result().choices[0].text, full.result().choices[0].token_ids
    at = next(i for i in range(4, len(text) - 2) if text[i : i + 2].isascii() and text[i : i + 2].isalnum())
    stop = text[at : at + 2]
    cut = text.index(stop)
    s = engine.submit_sync(prompt, SamplingParams(stop=[stop, "never-there"], **base))
    engine.run_until_idle()
    r = s.result().choices[0]
    assert r.finish_reason == "stop" and r.text == text[:cut]
    assert r.token_ids == ids[: len(r.token_ids)] and len(r.token_ids) < 40
    again = engine.submit_sync(prompt, SamplingParams(stop=[stop], **base))
    engine.run_until_idle()
    pieces = [d.text for d in again]
    assert "".join(pieces) == r.text and len(pieces) > 1  # streamed deltas add up to the same text
    inc = engine.submit_sync(prompt, SamplingParams(stop=[stop], include_stop_str_in_output=True, **base))
    engine.run_until_idle()
    assert inc.result().choices[0].text == text[: cut + len(stop)]
    tok = engine.submit_sync(prompt, SamplingParams(stop_token_ids=[ids[4]], **base))
    engine.run_until_idle()
    r = tok.result().choices[0]
    assert r.finish_reason == "stop" and r.token_ids == ids[: ids.index(ids[4]) + 1]


def test_logprobs_are_the_models_distribution(make_engine: Callable[..., Engine],
                                              tiny_lm: local_model.LocalModel) -> None:
    engine = make_engine()
    prompt = random_prompt(9, 31)
    s = engine.submit_sync(prompt, SamplingParams(max_tokens=3, logprobs=True, top_logprobs=3, **GREEDY))
    engine.run_until_idle()
    c = s.result().choices[0]
    assert c.logprobs is not None and len(c.logprobs) == 3
    ref = torch.log_softmax(tiny_lm.logits(torch.tensor([prompt]))[0, -1].float(), -1)
    first = c.logprobs[0]
    assert first.token_id == c.token_ids[0] == first.top[0][0]
    assert abs(first.logprob - ref.max().item()) < 1e-4
    assert [t for t, _ in first.top] == ref.topk(3).indices.tolist()


def test_cancel_frees_memory_and_backpressure(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_queue=3)
    a = engine.submit_sync(random_prompt(40, 1), SamplingParams(max_tokens=50, ignore_eos=True, **GREEDY))
    with torch.inference_mode():
        engine.step()
        engine.step()
    assert engine.allocator.num_used > 0 and engine.slots.num_free == engine.slots.num_slots - 1
    a.cancel()
    with torch.inference_mode():
        engine.step()
    assert engine.allocator.num_used == 0 and engine.slots.num_free == engine.slots.num_slots
    with pytest.raises(Exception, match="cancelled"):
        a.result()
    queued = [engine.submit_sync(random_prompt(5, i), SamplingParams(max_tokens=2)) for i in range(3)]
    with pytest.raises(EngineOverloaded) as err:
        engine.submit_sync(random_prompt(5, 9), SamplingParams(max_tokens=2))
    assert err.value.retry_after_s > 0
    engine.run_until_idle()
    assert all(q.result().usage.completion_tokens >= 1 for q in queued)
    engine.submit_sync(random_prompt(5, 9), SamplingParams(max_tokens=2))  # room again
    with pytest.raises(PromptTooLong):
        engine.submit_sync([5] * 20_000, SamplingParams(max_tokens=2))
    engine.run_until_idle()


def test_threaded_generate_and_shutdown(make_engine: Callable[..., Engine], tiny_lm: local_model.LocalModel) -> None:
    engine = make_engine().start()
    prompt = random_prompt(25, 41)
    res = engine.generate(prompt, SamplingParams(max_tokens=6, **GREEDY))
    assert res.choices[0].token_ids == reference_greedy(tiny_lm, prompt, 6)
    engine.shutdown()
    assert not engine.running
    assert all(s.status is not Status.RUNNING for s in engine.running_sequences())


def test_engine_from_checkpoint(tmp_path: Path) -> None:
    path = build_checkpoint(tmp_path / "ck", seed=3)
    engine = Engine.from_checkpoint(path, EngineConfig(memory_budget_mb=8, max_num_seqs=4))
    assert engine.tokenizer is not None and engine.model_name == "ck"
    ids = engine.tokenizer.encode("The quick brown fox")
    res = engine.generate(ids, SamplingParams(max_tokens=4, **GREEDY))
    engine.shutdown()
    assert res.usage.prompt_tokens == len(ids) and 1 <= res.usage.completion_tokens <= 4
