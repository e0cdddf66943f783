"""Prompt logprobs (``SamplingParams.prompt_logprobs``; legacy completions with ``echo`` and ``logprobs``):
equal to a full forward of the model over the prompt whatever the chunking, the prefix cache or the batch;
``max_tokens`` 0 scores the prompt only; the OpenAI shapes, plain and streamed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import local_model
from local_model.engine import Engine, GenerationResult, SamplingParams, TokenLogprob
from local_model.engine import openai_api as oa
from local_model.engine.model_runner import StepMetadata
from tests.support.engine import random_prompt

TOP = 3


def reference(lm: local_model.LocalModel, prompt: list[int]) -> list[TokenLogprob | None]:
    """log_softmax of one full causal forward (no cache, no engine code) at position i - 1, read at prompt
    token i, with the TOP best tokens there."""
    lp = torch.log_softmax(lm.logits(torch.tensor([prompt]))[0].float(), dim=-1)
    out: list[TokenLogprob | None] = [None]
    for i in range(1, len(prompt)):
        v, t = lp[i - 1].topk(TOP)
        out.append(TokenLogprob(prompt[i], float(lp[i - 1, prompt[i]]), list(zip(t.tolist(), v.tolist(), strict=True))))
    return out


def assert_close(got: list[TokenLogprob | None] | None, want: list[TokenLogprob | None]) -> None:
    assert got is not None and len(got) == len(want) and got[0] is None
    for g, w in zip(got[1:], want[1:], strict=True):
        assert g is not None and w is not None
        assert g.token_id == w.token_id and g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert [t for t, _ in g.top] == [t for t, _ in w.top]
        assert [v for _, v in g.top] == pytest.approx([v for _, v in w.top], abs=1e-4)


def generate(engine: Engine, prompt: list[int], **params: Any) -> GenerationResult:
    stream = engine.submit_sync(prompt, SamplingParams(temperature=0.0, ignore_eos=True, **params))
    engine.run_until_idle()
    return stream.result()


@pytest.mark.parametrize("chunk", [64, 8])
def test_prompt_logprobs_equal_a_full_forward_whatever_the_chunking(
    make_engine: Callable[..., Engine], tiny_lm: local_model.LocalModel, chunk: int
) -> None:
    """A 50-token prompt in chunks of at most 64 (one stop point at 32: two chunks) or 8 tokens (seven
    chunks): the same logprobs as the full forward; both choices of n=2 carry them."""
    engine = make_engine(prefill_chunk_tokens=chunk)
    prompt = random_prompt(50, 3)
    result = generate(engine, prompt, max_tokens=3, n=2, prompt_logprobs=TOP)
    want = reference(tiny_lm, prompt)
    for choice in result.choices:
        assert_close(choice.prompt_logprobs, want)
        assert len(choice.token_ids) == 3
    assert result.choices[0].prompt_logprobs == result.choices[1].prompt_logprobs
    assert engine.allocator.num_used == 0 and engine.slots.num_free == engine.slots.num_slots


def test_a_warm_prefix_cache_gives_the_same_prompt_logprobs(make_engine: Callable[..., Engine]) -> None:
    """A request asking for prompt logprobs prefills its whole prompt even when the prefix cache holds it
    (the cached positions have no logits): the result is identical to a cold engine's, and what it
    computes is still published for the requests after it."""
    prompt = random_prompt(90, 11)
    cold = generate(make_engine(), prompt, max_tokens=2, prompt_logprobs=TOP).choices[0]
    engine = make_engine()
    generate(engine, prompt, max_tokens=2)  # warms the cache
    hits = engine.scheduler.prefix.hits
    prefilled = engine.stats.prefill_tokens
    warm = generate(engine, prompt, max_tokens=2, prompt_logprobs=TOP).choices[0]
    assert engine.scheduler.prefix.hits == hits and engine.stats.prefill_tokens == prefilled + len(prompt)
    assert warm.prompt_logprobs == cold.prompt_logprobs and warm.token_ids == cold.token_ids
    generate(engine, prompt, max_tokens=2)
    assert engine.scheduler.prefix.hits == hits + 1


def test_max_tokens_zero_scores_the_prompt_and_generates_nothing(
    make_engine: Callable[..., Engine], tiny_lm: local_model.LocalModel
) -> None:
    engine = make_engine(prefill_chunk_tokens=16)
    prompt = random_prompt(40, 5)
    result = generate(engine, prompt, max_tokens=0, n=2, prompt_logprobs=1)
    assert [(c.token_ids, c.text, c.finish_reason) for c in result.choices] == [([], "", "length")] * 2
    assert result.usage.prompt_tokens == 40 and result.usage.completion_tokens == 0
    for choice in result.choices:
        assert_close(
            choice.prompt_logprobs,
            [None] + [TokenLogprob(t.token_id, t.logprob, t.top[:1]) for t in reference(tiny_lm, prompt)[1:]],
        )
    prefilled = engine.stats.prefill_tokens
    plain = generate(engine, prompt, max_tokens=0)  # nothing to compute: answered without a prefill
    assert plain.choices[0].finish_reason == "length" and plain.choices[0].prompt_logprobs is None
    assert engine.stats.prefill_tokens == prefilled
    assert engine.allocator.num_used == 0 and engine.slots.num_free == engine.slots.num_slots


def test_a_request_beside_one_scoring_its_prompt_is_unaffected(make_engine: Callable[..., Engine]) -> None:
    """Both prefill in the same steps: the plain request's rows never get logits at every position (its
    prefill groups name no prompt-logprob rows), and its answer equals its answer alone."""
    plain_prompt, scored_prompt = random_prompt(45, 21), random_prompt(38, 22)
    ask = dict(max_tokens=6, logprobs=True, top_logprobs=2)
    alone = generate(make_engine(prefill_chunk_tokens=32), plain_prompt, **ask).choices[0]

    engine = make_engine(prefill_chunk_tokens=32)
    metas: list[StepMetadata] = []
    execute_prefill = engine.runner.execute_prefill

    def spy(meta: StepMetadata) -> Any:
        metas.append(meta)
        return execute_prefill(meta)

    engine.runner.execute_prefill = spy  # type: ignore[method-assign]
    plain = engine.submit_sync(plain_prompt, SamplingParams(temperature=0.0, ignore_eos=True, **ask))
    scored = engine.submit_sync(scored_prompt, SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=6,
                                                              prompt_logprobs=2))
    engine.run_until_idle()
    mixed = plain.result().choices[0]
    assert scored.result().choices[0].prompt_logprobs is not None and mixed.prompt_logprobs is None
    assert mixed.token_ids == alone.token_ids
    assert [t.token_id for t in mixed.logprobs or []] == [t.token_id for t in alone.logprobs or []]
    assert [t.logprob for t in mixed.logprobs or []] == pytest.approx([t.logprob for t in alone.logprobs or []],
                                                                      abs=1e-5)
    assert any(m.prompt_logprobs for m in metas) and any(not m.prompt_logprobs for m in metas)
    for m in metas:  # a group scoring prompts holds only rows that do
        assert not m.prompt_logprobs or len(m.prompt_logprobs) == m.batch


# ============================================================================ OpenAI shapes


def parsed(engine: Engine, **body: Any) -> oa.ParsedRequest:
    return oa.parse("completion", {"model": "tiny", "temperature": 0, **body}, engine.tokenizer,
                    engine.plan.max_model_len)


async def test_echo_with_logprobs_returns_the_prompt_tokens_logprobs(
    make_engine: Callable[..., Engine], tiny_lm: local_model.LocalModel
) -> None:
    """What lm-evaluation-harness sends (echo, logprobs 1, max_tokens 1, temperature 0) and reads
    (token_logprobs[ctxlen:-1]); max_tokens 0 with echo; top_logprobs holds the token itself (logprobs 0)."""
    engine = make_engine().start()
    tok = engine.tokenizer
    prompt = tok.encode("The quick brown fox jumps over the lazy dog. A hybrid model mixes Mamba layers.")
    want = reference(tiny_lm, prompt)
    body = await oa.complete(engine, parsed(engine, prompt=prompt, max_tokens=1, echo=True, logprobs=1), "tiny")
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    assert choice["text"].startswith(tok.decode(prompt))
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(prompt) + 1
    assert lp["tokens"][:-1] == [tok.decode([t], skip_special_tokens=False) for t in prompt]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:-1] == pytest.approx([w.logprob for w in want[1:] if w], abs=1e-4)
    for top, w in zip(lp["top_logprobs"][1:-1], want[1:], strict=True):
        assert w is not None
        best = tok.decode([w.top[0][0]], skip_special_tokens=False)
        token = tok.decode([w.token_id], skip_special_tokens=False)
        assert top[token] == pytest.approx(w.logprob, abs=1e-4)
        if best != token or w.top[0][0] == w.token_id:  # distinct tokens may decode alike (partial bytes)
            assert set(top) == {token, best} and top[best] == pytest.approx(w.top[0][1], abs=1e-4)
    assert lp["text_offset"][0] == 0 and lp["text_offset"][-1] == len(tok.decode(prompt))
    assert body["usage"]["completion_tokens"] == 1

    only = await oa.complete(engine, parsed(engine, prompt=prompt, max_tokens=0, echo=True, logprobs=0), "tiny")
    (choice,) = only["choices"]
    assert choice["text"] == tok.decode(prompt) and choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"] == lp["token_logprobs"][:-1]
    assert choice["logprobs"]["top_logprobs"][1:] == [{t: v} for t, v in zip(lp["tokens"][1:-1],
                                                                              lp["token_logprobs"][1:-1],
                                                                              strict=True)]
    assert only["usage"]["completion_tokens"] == 0 and only["usage"]["prompt_tokens"] == len(prompt)
    with pytest.raises(oa.BadParam) as refused:
        parsed(engine, prompt=prompt, max_tokens=0, logprobs=1)
    assert refused.value.param == "max_tokens"


async def test_streamed_echo_sends_the_prompt_logprobs_in_each_choices_first_chunk(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine().start()
    prompt = random_prompt(20, 4)
    ask = dict(prompt=prompt, max_tokens=4, echo=True, logprobs=2, n=2, ignore_eos=True)
    plain = await oa.complete(engine, parsed(engine, **ask), "tiny")
    chunks = [c async for c in oa.stream(engine, parsed(engine, **ask, stream=True), "tiny")]
    seen: dict[int, dict[str, list[Any]]] = {}
    texts: dict[int, str] = {}
    for c in chunks:
        (ch,) = c["choices"]
        if ch["index"] not in texts:  # a choice's first chunk: the echoed prompt and its logprobs
            assert ch["text"].startswith(engine.tokenizer.decode(prompt))
            assert ch["logprobs"]["token_logprobs"][0] is None
            assert len(ch["logprobs"]["tokens"]) >= len(prompt)
        texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
        for key, values in (ch["logprobs"] or {}).items():
            seen.setdefault(ch["index"], {}).setdefault(key, []).extend(values)
    for choice in plain["choices"]:
        assert texts[choice["index"]] == choice["text"]
        got, want = seen[choice["index"]], choice["logprobs"]
        for key in ("tokens", "token_logprobs", "top_logprobs"):
            assert got[key] == want[key]
        # (a streamed completion's offsets follow the text sent, which holds back partial characters)
        assert got["text_offset"][: len(prompt)] == want["text_offset"][: len(prompt)]


@pytest.mark.parametrize("family", ["falcon_mup_gqa", "zamba2_shared_lora_rope"])
def test_mamba2_families_score_prompts_like_a_full_forward(family: str, tmp_path: Any) -> None:
    """The Mamba-2 families' forward (Falcon-H1's logit multiplier, Zamba2's shared blocks) keeps every
    position's logits the same way, chunked over a stop point."""
    from local_model.engine import EngineConfig
    from tests.support.mamba2 import ENGINE_CASES, save_case

    save_case(family, tmp_path, seed=ENGINE_CASES.index(family))
    lm = local_model.load(tmp_path)
    engine = Engine(lm.module, lm.tokenizer, EngineConfig(memory_budget_mb=8, max_num_seqs=4, block_size=8,
                                                          prefill_chunk_tokens=16, snapshot_interval=16))
    try:
        prompt = torch.randint(3, lm.config.vocab_size, (37,), generator=torch.Generator().manual_seed(8)).tolist()
        assert_close(generate(engine, prompt, max_tokens=1, prompt_logprobs=TOP).choices[0].prompt_logprobs,
                     reference(lm, prompt))
    finally:
        engine.shutdown()


def test_prompt_logprobs_survive_preemption_mid_prefill(tiny_lm: local_model.LocalModel) -> None:
    """30 KV blocks of 8 tokens: three decoding sequences grow while a 90-token prompt is scored 8 tokens
    per step, until a decode needs a block and the newest sequence, the one scoring its prompt, is
    preempted before it is done; re-admitted, it scores its prompt again from the start (no prefix hit)
    and ends with its full forward's prompt logprobs."""
    from local_model.engine import EngineConfig

    probe = Engine(tiny_lm.module, tiny_lm.tokenizer, EngineConfig(memory_budget_mb=1, max_num_seqs=8,
                                                                   block_size=8, max_model_len=128))
    budget = (16 * probe.plan.ssm_bytes_per_seq + 30 * probe.plan.kv_bytes_per_block) / 2**20
    engine = Engine(tiny_lm.module, tiny_lm.tokenizer, EngineConfig(
        memory_budget_mb=budget, max_num_seqs=8, block_size=8, max_model_len=128, prefill_chunk_tokens=8))
    preempt = engine.scheduler._preempt
    unscored: list[int] = []

    def spy(seq: Any, plan: Any) -> None:
        if seq.request.scores_prompt:
            unscored.append(seq.seq_id)
        preempt(seq, plan)

    engine.scheduler._preempt = spy  # type: ignore[method-assign]
    for i in range(3):
        engine.submit_sync(random_prompt(30, i), SamplingParams(max_tokens=60, ignore_eos=True, temperature=0.0))
    with torch.inference_mode():
        for _ in range(16):
            engine.step()
    prompt = random_prompt(90, 9)
    scored = engine.submit_sync(prompt, SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0,
                                                       prompt_logprobs=TOP))
    engine.run_until_idle()
    assert unscored, "the scoring sequence was not preempted mid-prefill: the test needs other sizes"
    assert_close(scored.result().choices[0].prompt_logprobs, reference(tiny_lm, prompt))
    assert engine.allocator.num_used == 0
