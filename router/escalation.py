"""Confidence of an answer, for cascades: serve from a cheap model, escalate when it is unsure.

Pure functions over the OpenAI-shaped response body (and, for a trained verifier, the prompt); the
gateway decides when to call them and what to do with the number (`policies.schema.Escalation`:
threshold, score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from router.protocols import Verifier


def _mean_logprob(values: Sequence[float]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def logprob_confidence(body: Mapping[str, Any]) -> float | None:
    """exp(mean token log-probability) of the first choice: the geometric-mean probability the
    model gave its own tokens. None when the answer carries no logprobs (then nobody escalates
    on a guess)."""
    choices = body.get("choices") or []
    if not choices:
        return None
    lp = choices[0].get("logprobs") or {}
    if isinstance(lp.get("content"), list):  # chat
        mean = _mean_logprob([t.get("logprob") for t in lp["content"] if isinstance(t, Mapping)])
    elif isinstance(lp.get("token_logprobs"), list):  # completions
        mean = _mean_logprob(lp["token_logprobs"])
    else:
        return None
    return math.exp(mean) if mean is not None else None


def answer_text(body: Mapping[str, Any]) -> str | None:
    """The first choice's text (chat message content or completion text), None when there is none."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return None
    c = choices[0]
    msg = c.get("message")
    text = msg.get("content") if isinstance(msg, Mapping) else c.get("text")
    return text if isinstance(text, str) else None


def verifier_name(score: str) -> str | None:
    """``verifier`` → "default", ``verifier:<name>`` → name; None for other scores."""
    if score == "verifier":
        return "default"
    if score.startswith("verifier:") and len(score) > len("verifier:"):
        return score[len("verifier:") :]
    return None


def confidence(
    score: str, body: Mapping[str, Any], prompt: str = "", verifiers: Mapping[str, Verifier] | None = None
) -> float | None:
    """The named confidence score of an answer; None for an unknown score or missing data.

    ``logprobs``: the answer's own token probabilities. ``verifier[:name]``: a trained verifier's
    p(acceptable | prompt, answer), for providers that return no log-probabilities.
    """
    if score == "logprobs":
        return logprob_confidence(body)
    name = verifier_name(score)
    if name is None or not verifiers or name not in verifiers:
        return None
    text = answer_text(body)
    return None if text is None else float(verifiers[name].p_ok(prompt, text))
