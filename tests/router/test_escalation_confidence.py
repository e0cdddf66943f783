"""Cascade confidence from token logprobs (pure)."""

from __future__ import annotations

import math
from typing import Any

from router.escalation import Echo, confidence, logprob_confidence, without_echo


def test_chat_logprobs_give_the_geometric_mean_probability() -> None:
    body = {"choices": [{"logprobs": {"content": [{"logprob": math.log(0.5)}, {"logprob": math.log(0.8)}]}}]}
    assert logprob_confidence(body) == pytest_approx(math.sqrt(0.4))


def test_completion_logprobs_and_missing_data() -> None:
    body = {"choices": [{"logprobs": {"token_logprobs": [math.log(0.9), None, math.log(0.9)]}}]}
    assert abs(logprob_confidence(body) - 0.9) < 1e-9  # type: ignore[operator]
    assert logprob_confidence({"choices": [{"logprobs": None}]}) is None
    assert logprob_confidence({"choices": []}) is None
    assert confidence("verifier", body) is None  # unknown scores never trigger an escalation


def pytest_approx(x: float) -> object:
    import pytest

    return pytest.approx(x)


def _legacy(text: str, tokens: list[str], values: list[float | None], offsets: list[int] | None) -> dict[str, Any]:
    lp: dict[str, Any] = {"tokens": tokens, "token_logprobs": values}
    if offsets is not None:
        lp["text_offset"] = offsets
    return {"choices": [{"index": 0, "text": text, "logprobs": lp}]}


def test_an_echoed_prompt_and_its_logprobs_are_left_out_of_what_is_judged() -> None:
    low, high = math.log(0.01), math.log(0.9)
    # OpenAI / vLLM / the local engine: the prompt's tokens first (the first null), offsets from 0
    scored = _legacy("Hi there! Yes.", ["Hi", " there", "!", " Yes", "."], [None, low, low, high, high],
                     [0, 2, 8, 9, 13])
    for body, echo in ((scored, Echo(text="Hi there!")), (scored, Echo(tokens=3))):
        out = without_echo(body, echo)["choices"][0]
        assert out["text"] == " Yes." and out["logprobs"] == {"token_logprobs": [high, high]}
        assert abs(logprob_confidence(without_echo(body, echo)) - 0.9) < 1e-9  # type: ignore[operator]
    assert scored["choices"][0]["text"] == "Hi there! Yes."  # the client's body is not changed

    # an upstream that echoes the text but scores only the completion; one that offers tokens, no offsets
    plain = _legacy("Hi there! Yes.", [" Yes", "."], [high, high], [9, 13])
    no_offsets = _legacy("Hi there! Yes.", ["Hi", " there", "!", " Yes", "."], [None, low, low, high, high], None)
    for body, echo in ((plain, Echo(text="Hi there!")), (plain, Echo(tokens=3)), (no_offsets, Echo(text="Hi there!"))):
        out = without_echo(body, echo)["choices"][0]
        assert out["text"] == " Yes." and out["logprobs"] == {"token_logprobs": [high, high]}, (body, echo)

    # an upstream that did not echo at all: everything is the completion
    unechoed = without_echo(_legacy(" Yes.", [" Yes", "."], [high, high], [0, 4]), Echo(text="Hi there!"))
    assert unechoed["choices"][0]["text"] == " Yes."
    # a token-id prompt echoed without logprobs: its text's length is unknown, nothing is judged
    blind = without_echo({"choices": [{"text": "Hi there! Yes.", "logprobs": None}]}, Echo(tokens=3))
    assert blind["choices"][0]["text"] is None and logprob_confidence(blind) is None
    assert confidence("logprobs", blind) is None

