"""The engine's answers follow OpenAI's (and vLLM's) semantics: presence/frequency penalties and logit_bias,
the EOS token outside text and logprobs, independent per-choice seeds, the developer role, stop_reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import local_model
from local_model.engine import Engine, EngineConfig, InvalidRequest, SamplingParams
from local_model.engine import openai_api as oa
from tests.support.engine import build_checkpoint, greedy_stop_token, random_prompt, reference_adjusted_greedy

GREEDY = dict(temperature=0.0, ignore_eos=True)


def parsed(engine: Engine, kind: oa.Kind, **body: Any) -> oa.ParsedRequest:
    return oa.parse(kind, {"model": "tiny", **body}, engine.tokenizer, engine.plan.max_model_len)


def run(engine: Engine, prompt: list[int], params: SamplingParams) -> list[int]:
    stream = engine.submit_sync(prompt, params)
    engine.run_until_idle()
    return stream.result().choices[0].token_ids


# ============================================================================ penalties and logit_bias


def test_logit_bias_forces_and_bans_tokens_even_when_greedy(make_engine: Callable[..., Engine],
                                                            tiny_lm: local_model.LocalModel) -> None:
    engine = make_engine()
    prompt = random_prompt(12, 5)
    plain = tiny_lm.greedy(prompt, 6, stop_ids=[])
    forced = next(t for t in range(3, 320) if t not in plain)
    req = parsed(engine, "completion", prompt=prompt, max_tokens=6, logit_bias={str(forced): 100}, **GREEDY)
    assert run(engine, prompt, req.params) == [forced] * 6
    banned = parsed(engine, "completion", prompt=prompt, max_tokens=1, logit_bias={str(plain[0]): -100},
                    **GREEDY)
    (first,) = run(engine, prompt, banned.params)
    assert first != plain[0]
    assert [first] == reference_adjusted_greedy(tiny_lm, prompt, 1, bias={plain[0]: -100.0})


def test_penalties_count_each_choices_generated_tokens_in_a_batch(make_engine: Callable[..., Engine],
                                                                  tiny_lm: local_model.LocalModel) -> None:
    """Rows with different penalties and biases (and one with neither) share decode steps; each matches its own
    reference, which counts generated tokens only."""
    engine = make_engine()
    base = random_prompt(9, 21)
    prompt = base + tiny_lm.greedy(base, 8, stop_ids=[])  # the prompt holds tokens the model likes to repeat
    cases: list[dict[str, Any]] = [
        {"frequency": 2.0, "bias": {7: 10.0}},
        {"presence": 2.0, "bias": {7: 4.0}},
        {"presence": 1.0, "frequency": 1.0, "bias": {7: 5.0}},
        {"presence": -2.0},
        {"frequency": -1.5},
        {"bias": {7: 4.0}},
        {},
    ]
    streams = []
    for case in cases:
        body = {"presence_penalty": case.get("presence"), "frequency_penalty": case.get("frequency"),
                "logit_bias": {str(t): b for t, b in case.get("bias", {}).items()} or None}
        req = parsed(engine, "completion", prompt=prompt, max_tokens=10, **GREEDY, **body)
        streams.append(engine.submit_sync(prompt, req.params))
    engine.run_until_idle()
    outs = [s.result().choices[0].token_ids for s in streams]
    refs = [reference_adjusted_greedy(tiny_lm, prompt, 10, **case) for case in cases]
    assert outs == refs
    assert outs[-1] == tiny_lm.greedy(prompt, 10, stop_ids=[])
    # each penalty changed its answer: the comparison is not vacuous
    assert refs[0] != [7] * 10 and refs[1] != refs[5] and refs[3] != outs[-1] and refs[4] != outs[-1]
    # and a reading that also counted the prompt would have answered differently
    assert refs[3] != reference_adjusted_greedy(tiny_lm, prompt, 10, presence=-2.0, count_prompt=True)


@pytest.mark.parametrize(("field", "value"), [
    ("presence_penalty", 2.5),
    ("presence_penalty", "1"),
    ("frequency_penalty", -2.01),
    ("logit_bias", {"5": 100.5}),
    ("logit_bias", {"5": -101}),
    ("logit_bias", {"five": 1}),
    ("logit_bias", {"5": "1"}),
    ("logit_bias", {"5": True}),
    ("logit_bias", [5]),
    ("logit_bias", {str(i): 1 for i in range(301)}),
])
def test_out_of_range_penalty_or_bias_is_refused_naming_the_field(tiny_lm: local_model.LocalModel,
                                                                  field: str, value: Any) -> None:
    for kind, body in (("chat", {"messages": [{"role": "user", "content": "hi"}]}), ("completion", {"prompt": "hi"})):
        with pytest.raises(InvalidRequest) as e:
            oa.parse(kind, {**body, field: value}, tiny_lm.tokenizer, 4096)  # type: ignore[arg-type]
        assert getattr(e.value, "param", None) == field and field in str(e.value)


@pytest.mark.parametrize("token", [320, 10_000, -1])
def test_logit_bias_outside_the_vocabulary_is_refused_naming_the_field(make_engine: Callable[..., Engine],
                                                                       token: int) -> None:
    engine = make_engine()
    req = parsed(engine, "completion", prompt="hi", max_tokens=2, logit_bias={str(token): 5})
    with pytest.raises(InvalidRequest) as e:
        engine.submit_sync(req.prompts[0], req.params)
    assert getattr(e.value, "param", None) == "logit_bias" and str(token) in str(e.value)
    with pytest.raises(InvalidRequest) as e:
        engine.submit_sync([5, 6], SamplingParams(max_tokens=2, presence_penalty=3.0))
    assert getattr(e.value, "param", None) == "presence_penalty"


# ============================================================================ the EOS token


@pytest.fixture(scope="module")
def eos_engine(tmp_path_factory: pytest.TempPathFactory,
               tiny_lm: local_model.LocalModel) -> Any:
    """An engine over the tiny model's weights whose EOS is the greedy continuation's third token."""
    prompt, cont = greedy_stop_token(tiny_lm, after=2)
    path = build_checkpoint(tmp_path_factory.mktemp("eos_ckpt"), eos_token_id=cont[2])
    lm = local_model.load(path)
    engine = Engine(lm.module, lm.tokenizer, EngineConfig(memory_budget_mb=8, max_num_seqs=4, block_size=8),
                    model_name="tiny").start()
    yield engine, prompt, cont
    engine.shutdown()


async def test_eos_stop_keeps_eos_out_of_text_and_logprobs_but_counts_it(eos_engine: Any) -> None:
    engine, prompt, cont = eos_engine
    tok = engine.tokenizer
    result = await engine.submit(prompt, SamplingParams(max_tokens=8, temperature=0.0, logprobs=True,
                                                        top_logprobs=2)).result()
    (choice,) = result.choices
    assert choice.finish_reason == "stop" and choice.token_ids == cont[:3]
    assert [lp.token_id for lp in choice.logprobs] == cont[:2]
    assert choice.text == tok.decode(cont[:2])
    assert result.usage.completion_tokens == 3  # EOS is generated, so counted (as vLLM counts it)
    shown = [tok.decode([t], skip_special_tokens=False) for t in cont[:2]]  # the tokens' strings, EOS's not

    chat = await oa.complete(engine, oa.ParsedRequest("chat", "tiny", [prompt], SamplingParams(
        max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=1), False, False), "tiny")
    content = chat["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == shown
    assert chat["choices"][0]["message"]["content"] == choice.text and chat["usage"]["completion_tokens"] == 3

    comp_req = oa.ParsedRequest("completion", "tiny", [prompt], SamplingParams(
        max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=1), True, True)
    chunks = [c async for c in oa.stream(engine, comp_req, "tiny")]
    tokens = [t for c in chunks for ch in c["choices"] if ch["logprobs"] for t in ch["logprobs"]["tokens"]]
    assert tokens == shown
    assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == choice.text
    assert chunks[-1]["usage"]["completion_tokens"] == 3


# ============================================================================ seeds of n choices


def test_seeded_choices_differ_from_single_choices_of_nearby_seeds(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    prompt = random_prompt(11, 8)
    params = dict(temperature=2.0, max_tokens=16, ignore_eos=True)
    many = engine.submit_sync(prompt, SamplingParams(n=3, seed=40, **params))
    again = engine.submit_sync(prompt, SamplingParams(n=3, seed=40, **params))
    singles = [engine.submit_sync(prompt, SamplingParams(seed=40 + i, **params)) for i in range(3)]
    engine.run_until_idle()
    choices = [c.token_ids for c in many.result().choices]
    assert choices == [c.token_ids for c in again.result().choices]  # same request and seed: same answers
    alone = [s.result().choices[0].token_ids for s in singles]
    assert choices[0] == alone[0]  # choice 0 is the request's own seed
    assert choices[1] != alone[1] and choices[2] != alone[2]
    assert len({tuple(c) for c in choices}) == 3


# ============================================================================ the developer role


def test_developer_role_is_the_system_role(tiny_lm: local_model.LocalModel) -> None:
    def prompt_for(role: str) -> list[int]:
        body = {"messages": [{"role": role, "content": "Be brief."}, {"role": "user", "content": "hi"}]}
        return oa.parse("chat", body, tiny_lm.tokenizer, 4096).prompts[0]

    assert prompt_for("developer") == prompt_for("system")


# ============================================================================ output it cannot make


@pytest.mark.parametrize(("field", "extra"), [
    ("modalities", {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("functions", {"functions": [{"name": "f", "parameters": {"type": "object"}}]}),
    ("web_search_options", {"web_search_options": {}}),
])
def test_output_the_text_model_cannot_make_is_refused_naming_the_field(tiny_lm: local_model.LocalModel,
                                                                       field: str, extra: dict[str, Any]) -> None:
    """A text reply where audio, a function call or a web search was asked for would pass for success."""
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(InvalidRequest) as e:
        oa.parse("chat", body, tiny_lm.tokenizer, 4096)
    assert getattr(e.value, "param", None) == field


def test_text_only_modalities_and_declined_functions_are_served(tiny_lm: local_model.LocalModel) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "modalities": ["text"],
            "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": "none"}
    assert oa.parse("chat", body, tiny_lm.tokenizer, 4096).prompts[0]


# ============================================================================ stop_reason


async def test_stop_reason_names_the_matched_stop_string(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine().start()
    fox = engine.tokenizer.encode("The quick brown fox")
    full = (await engine.submit(fox, SamplingParams(max_tokens=30, **GREEDY)).result()).choices[0]
    text, ids = full.text, full.token_ids
    at = next(i for i in range(4, len(text) - 2) if text[i : i + 2].isascii() and text[i : i + 2].isalnum())
    stop = text[at : at + 2]

    comp = await oa.complete(engine, parsed(engine, "completion", prompt="The quick brown fox", max_tokens=30,
                                            stop=["never-there", stop], **GREEDY), "tiny")
    (c,) = comp["choices"]
    assert c["finish_reason"] == "stop" and c["stop_reason"] == stop and c["text"] == text[: text.index(stop)]
    chat_body = dict(messages=[{"role": "user", "content": "The quick brown fox"}], max_tokens=30, **GREEDY)
    chat_text = (await oa.complete(engine, parsed(engine, "chat", **chat_body), "tiny"))["choices"][0]
    assert chat_text["stop_reason"] is None and chat_text["finish_reason"] == "length"
    content = chat_text["message"]["content"]
    chat_stop = next(content[i : i + 2] for i in range(2, len(content) - 2) if content[i : i + 2].isalnum())
    chat = await oa.complete(engine, parsed(engine, "chat", stop=chat_stop, **chat_body), "tiny")
    assert chat["choices"][0]["finish_reason"] == "stop" and chat["choices"][0]["stop_reason"] == chat_stop

    chunks = [ch async for ch in oa.stream(engine, parsed(engine, "chat", stop=chat_stop, stream=True,
                                                          **chat_body), "tiny")]
    final = [ch["choices"][0] for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0]["stop_reason"] == chat_stop
    comp_chunks = [ch async for ch in oa.stream(engine, parsed(engine, "completion", prompt="The quick brown fox",
                                                               max_tokens=30, stop=[stop], stream=True,
                                                               **GREEDY), "tiny")]
    assert comp_chunks[-1]["choices"][0]["stop_reason"] == stop

    # a stop token reports its id (vLLM's convention); running out of tokens reports none
    result = await engine.submit(fox, SamplingParams(max_tokens=30, stop_token_ids=[ids[3]], **GREEDY)).result()
    assert result.choices[0].finish_reason == "stop" and result.choices[0].stop_reason == ids[3]
    short = await oa.complete(engine, parsed(engine, "completion", prompt="The", max_tokens=2, **GREEDY), "tiny")
    assert short["choices"][0]["finish_reason"] == "length" and short["choices"][0]["stop_reason"] is None
