"""Retry and fallback decisions after an upstream error (pure: rng and elapsed time are passed in).

The gateway's attempt loop asks `on_error` what to do; the answer is one of

* ``retry_same`` after ``delay_s`` (transient error, this deployment still has attempts left),
* ``fall_to_next`` (a configured fallback trigger, or retries here are used up),
* ``fail`` (the client gets the error).

The one rule that is not negotiable: once a stream has sent its first token to the client, a
failure is final. Splicing a second model's answer onto the first would hand the client text
that no model wrote, so the client gets an error event instead. Before the first token, falling
back is invisible to the client.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from common.types import RetrySettings

# Kinds worth repeating on the same deployment: transient by nature.
TRANSIENT = frozenset({"timeout", "rate_limit", "overloaded", "server_error", "connection", "stream_cut", "malformed"})
# Kinds that say "busy now": another deployment, if the policy falls back on them, beats waiting here.
BUSY = frozenset({"rate_limit", "overloaded"})

Outcome = Literal["retry_same", "fall_to_next", "fail"]


@dataclass(frozen=True, slots=True)
class RetryAction:
    outcome: Outcome
    delay_s: float = 0.0
    reason: str = ""


def backoff_delay(retry_no: int, settings: RetrySettings, rng: random.Random) -> float:
    """Delay before the ``retry_no``-th retry (1-based): base·2^(n−1) capped at max, jittered.

    ``full`` jitter (uniform 0..d) spreads a thundering herd best; ``equal`` (d/2 + uniform 0..d/2)
    keeps a floor; ``none`` is for tests and for deterministic replays.
    """
    d = min(settings.backoff_max_s, settings.backoff_base_s * (2 ** max(0, retry_no - 1)))
    if settings.jitter == "full":
        return rng.uniform(0.0, d)
    if settings.jitter == "equal":
        return d / 2 + rng.uniform(0.0, d / 2)
    return d


def attempt_timeout(settings: RetrySettings, elapsed_s: float, deployment_timeout_s: float) -> float:
    """Timeout for the next attempt: the per-attempt bound, but never past the total deadline."""
    per_attempt = settings.attempt_timeout_s or deployment_timeout_s
    return max(0.0, min(per_attempt, settings.deadline_s - elapsed_s))


def on_error(
    kind: str,
    *,
    settings: RetrySettings,
    triggers: frozenset[str],
    first_token_sent: bool,
    attempts_total: int,
    attempts_here: int,
    has_next: bool,
    elapsed_s: float,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> RetryAction:
    """What to do after an attempt failed with an UpstreamError of ``kind``.

    ``attempts_total``/``attempts_here``: attempts made so far, including the failed one, for the
    whole request / on this deployment. ``has_next``: a fallback candidate exists (for
    ``context_window`` pass whether one with a larger window exists: `Decision.next_after`).
    """
    if first_token_sent:
        return RetryAction("fail", reason="stream already started")
    remaining = settings.deadline_s - elapsed_s
    if remaining <= 0:
        return RetryAction("fail", reason="deadline exceeded")
    if attempts_total >= settings.max_attempts:
        return RetryAction("fail", reason=f"max attempts ({settings.max_attempts})")

    can_fall = kind in triggers and has_next
    if kind in BUSY and can_fall:
        return RetryAction("fall_to_next", reason="rate limited" if kind == "rate_limit" else "overloaded")
    if kind in TRANSIENT and attempts_here < settings.max_attempts_per_deployment:
        delay = backoff_delay(attempts_here, settings, rng)
        if retry_after_s is not None and settings.honor_retry_after:
            if retry_after_s > settings.max_retry_after_s:
                if can_fall:
                    return RetryAction("fall_to_next", reason=f"retry-after {retry_after_s:g}s too long")
                return RetryAction("fail", reason=f"retry-after {retry_after_s:g}s exceeds {settings.max_retry_after_s:g}s")
            delay = max(delay, retry_after_s)
        if delay < remaining:
            return RetryAction("retry_same", delay, reason=f"{kind}, retry {attempts_here}")
    if can_fall:
        return RetryAction("fall_to_next", reason=kind)
    if kind in TRANSIENT:
        return RetryAction("fail", reason=f"{kind}, retries used up")
    return RetryAction("fail", reason=f"{kind} not retryable")
