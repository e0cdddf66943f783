"""Confidence of an answer, for cascades: serve from a cheap model, escalate when it is unsure.

Pure functions over the OpenAI-shaped response body; the gateway decides when to call them and
what to do with the number (`policies.schema.Escalation`: threshold, score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


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


def confidence(score: str, body: Mapping[str, Any]) -> float | None:
    """The named confidence score of an answer; None for an unknown score or missing data."""
    if score == "logprobs":
        return logprob_confidence(body)
    return None
