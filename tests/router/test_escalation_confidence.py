"""Cascade confidence from token logprobs (pure)."""

from __future__ import annotations

import math

from router.escalation import confidence, logprob_confidence


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
