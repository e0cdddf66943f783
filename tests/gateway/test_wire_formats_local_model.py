"""The Responses and Messages APIs served by the shipped local model (CPU) through the `auto` policy:
the same routing core as chat completions (policy headers, usage), translated both ways."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from anthropic import Anthropic
from openai import OpenAI

from gateway.config import Settings
from requestlog.migrate import upgrade
from tests.support.harness import GatewayThread, running_gateway
from tests.support.shipped import needs_shipped, shipped_checkpoint

pytestmark = needs_shipped


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp = tmp_path_factory.mktemp("local")
    url = f"sqlite+aiosqlite:///{tmp / 'gw.db'}"
    upgrade(url)
    settings = Settings(database_url=url, log={"spool_dir": str(tmp / "spool")})  # type: ignore[arg-type]
    with running_gateway(settings) as gw:
        yield gw


def test_responses_api_from_the_local_model_plain_and_streamed(local_gateway: GatewayThread) -> None:
    oa = OpenAI(base_url=local_gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    raw = oa.responses.with_raw_response.create(model="auto", input="Tell me a story.", max_output_tokens=16)
    resp = raw.parse()
    assert resp.output_text and resp.usage is not None and 0 < resp.usage.output_tokens <= 16
    assert raw.headers["x-hybridgate-model"] == "hybridgate-local"
    assert raw.headers["x-hybridgate-policy"].startswith("auto@") and raw.headers["x-hybridgate-propensity"]
    with oa.responses.stream(
        model="hybridgate-local", input="Hello!", max_output_tokens=16, previous_response_id=resp.id
    ) as stream:
        events = list(stream)
    # A sampled answer either ends by itself (response.completed) or at max_output_tokens
    # (response.incomplete, as OpenAI streams it; the SDK's get_final_response wants the former).
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    final = last.response
    assert final.output_text and final.status == last.type.removeprefix("response.")


def test_messages_api_from_the_local_model_streamed(local_gateway: GatewayThread) -> None:
    client = Anthropic(base_url=local_gateway.base_url, api_key="unused", max_retries=0, timeout=120)
    with client.messages.stream(
        model="hybridgate-local", max_tokens=12, messages=[{"role": "user", "content": "Hello!"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


def test_messages_api_reports_the_stop_sequence_the_local_model_stopped_on(local_gateway: GatewayThread) -> None:
    """The local engine names the stop string that ended a choice (vLLM's `stop_reason`); the Messages
    translation turns it into Anthropic's stop_reason "stop_sequence" and `stop_sequence`."""
    client = Anthropic(base_url=local_gateway.base_url, api_key="unused", max_retries=0, timeout=120)
    ask = {"model": "hybridgate-local", "max_tokens": 24, "extra_body": {"temperature": 0.0},
           "messages": [{"role": "user", "content": "Tell me a story."}]}
    free = client.messages.create(**ask)  # type: ignore[call-overload]
    text = "".join(b.text for b in free.content if b.type == "text")
    assert len(text) >= 6, text
    stop = text[3:6]
    got = client.messages.create(**ask, stop_sequences=["\u00a7never\u00a7", stop])  # type: ignore[call-overload]
    assert got.stop_reason == "stop_sequence" and got.stop_sequence == stop
    assert "".join(b.text for b in got.content if b.type == "text") == text[: text.index(stop)]
    with client.messages.stream(**ask, stop_sequences=[stop]) as stream:  # type: ignore[call-overload]
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_completions_take_a_batch_of_token_id_prompts(local_gateway: GatewayThread) -> None:
    """OpenAI's `prompt` may be an array of token-id arrays: one set of choices per prompt."""
    oa = OpenAI(base_url=local_gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    resp = oa.completions.create(model="hybridgate-local", prompt=[[1, 2, 3], [4, 5]], max_tokens=3, n=2)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert resp.usage is not None and resp.usage.prompt_tokens == 3 + 2  # each prompt once, whatever n


def test_completions_echo_the_prompt_with_its_logprobs(local_gateway: GatewayThread) -> None:
    """lm-evaluation-harness's loglikelihood request (token-id prompt, echo, logprobs 1, max_tokens 1,
    temperature 0): the echoed prompt's tokens carry logprobs, the first one null, each later one equal
    to log P(token | tokens before it) of a full forward of the same checkpoint; max_tokens 0 with echo
    scores the prompt only, and without echo is refused, naming max_tokens."""
    import openai
    import torch

    import local_model

    path = shipped_checkpoint()
    assert path is not None
    lm = local_model.load(path)
    prompt = lm.tokenizer.encode("Alice was beginning to get very tired of sitting by her sister")
    ctx = 4  # lm-eval reads token_logprobs[ctxlen:-1]: the continuation's tokens
    with torch.inference_mode():
        full = torch.log_softmax(lm.logits(torch.tensor([prompt]))[0].float(), dim=-1)
    want = [float(full[i - 1, prompt[i]]) for i in range(1, len(prompt))]

    oa = OpenAI(base_url=local_gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    resp = oa.completions.create(model="hybridgate-local", prompt=prompt, max_tokens=1, echo=True, logprobs=1,
                                 temperature=0)
    (choice,) = resp.choices
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.top_logprobs is not None and lp.text_offset is not None
    assert choice.text.startswith(lm.tokenizer.decode(prompt))
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(prompt) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    assert lp.token_logprobs[1:-1] == pytest.approx(want, abs=1e-3)
    assert sum(lp.token_logprobs[ctx:-1]) == pytest.approx(sum(want[ctx - 1 :]), abs=1e-2)
    assert all(top[tok] == value for tok, value, top in
               zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True))

    scored = oa.completions.create(model="hybridgate-local", prompt=prompt, max_tokens=0, echo=True, logprobs=1,
                                   temperature=0)
    assert scored.choices[0].text == lm.tokenizer.decode(prompt) and scored.choices[0].finish_reason == "length"
    assert scored.choices[0].logprobs is not None
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[:-1]
    assert scored.usage is not None and scored.usage.completion_tokens == 0
    with pytest.raises(openai.BadRequestError) as refused:
        oa.completions.create(model="hybridgate-local", prompt=prompt, max_tokens=0, logprobs=1)
    assert refused.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_responses_api_includes_the_local_models_logprobs(local_gateway: GatewayThread) -> None:
    """`include: ["message.output_text.logprobs"]`: the local engine's chat logprobs on the output_text part,
    one per generated token with `top_logprobs` alternatives (most likely first), plain and streamed."""
    oa = OpenAI(base_url=local_gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    ask = {"model": "hybridgate-local", "input": "Tell me a story.", "max_output_tokens": 16,
           "include": ["message.output_text.logprobs"], "top_logprobs": 3}
    resp = oa.responses.create(**ask)  # type: ignore[call-overload]
    part = resp.output[0].content[0]  # type: ignore[union-attr]
    # usage counts the stop token an answer that ended by itself ("completed") generated; its logprobs,
    # like its text, leave it out (an answer cut at max_output_tokens is "incomplete" and has none)
    stop_token = 1 if resp.status == "completed" else 0
    assert resp.usage is not None
    assert len(part.logprobs) == resp.usage.output_tokens - stop_token  # type: ignore[union-attr]
    for lp in part.logprobs:  # type: ignore[union-attr]
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0].logprob >= lp.logprob - 1e-4
        assert [t.logprob for t in lp.top_logprobs] == sorted((t.logprob for t in lp.top_logprobs), reverse=True)
    with oa.responses.stream(**ask) as stream:  # type: ignore[arg-type]
        events = list(stream)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert sum(len(e.logprobs) for e in deltas) == len(done.logprobs) > 0


def test_auto_serves_tools_the_caller_declines_from_the_local_model(local_gateway: GatewayThread) -> None:
    """`tools` with `tool_choice: "none"` asks for a text answer: it needs no deployment that supports tools,
    and the local model (which has none) answers it in text, as when the model is named directly. Tools
    the caller lets the model use are still refused by `auto`, naming `tools`."""
    import openai

    oa = OpenAI(base_url=local_gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    ask = {"messages": [{"role": "user", "content": "Hello!"}], "tools": tools, "tool_choice": "none",
           "max_tokens": 8, "temperature": 0}
    for model in ("hybridgate-local", "auto"):
        resp = oa.chat.completions.create(model=model, **ask)  # type: ignore[call-overload]
        message = resp.choices[0].message
        assert message.content and not message.tool_calls, (model, resp)
    with pytest.raises(openai.BadRequestError) as refused:
        oa.chat.completions.create(model="auto", **{**ask, "tool_choice": "auto"})  # type: ignore[call-overload]
    assert refused.value.body["param"] == "tools"  # type: ignore[index]
