"""Retry/fallback decisions and backoff schedule."""

from __future__ import annotations

import random

import pytest

from common.types import RetrySettings
from router.retry import attempt_timeout, backoff_delay, on_error

S = RetrySettings(max_attempts=4, max_attempts_per_deployment=2, backoff_base_s=0.25, backoff_max_s=1.0,
                  jitter="none", max_retry_after_s=5, deadline_s=30)  # fmt: skip
TRIG = frozenset({"server_error", "timeout", "rate_limit", "connection", "context_window"})


def act(kind: str, **kw):
    args = dict(settings=S, triggers=TRIG, first_token_sent=False, attempts_total=1, attempts_here=1,
                has_next=True, elapsed_s=0.0, rng=random.Random(0))  # fmt: skip
    args.update(kw)
    return on_error(kind, **args)


def test_backoff_schedule_and_jitter() -> None:
    assert [backoff_delay(n, S, random.Random(0)) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    full = S.model_copy(update={"jitter": "full"})
    rng = random.Random(1)
    assert all(0 <= backoff_delay(3, full, rng) <= 1.0 for _ in range(200))
    equal = S.model_copy(update={"jitter": "equal"})
    assert all(0.5 <= backoff_delay(3, equal, rng) <= 1.0 for _ in range(200))


def test_stream_started_always_fails() -> None:
    for kind in ("server_error", "stream_cut", "timeout"):
        a = act(kind, first_token_sent=True)
        assert a.outcome == "fail" and a.reason == "stream already started"


def test_stream_cut_before_first_token_is_retried_invisibly() -> None:
    assert act("stream_cut").outcome == "retry_same"


def test_transient_retries_same_then_falls() -> None:
    a = act("server_error")
    assert a.outcome == "retry_same" and a.delay_s == 0.25
    assert act("server_error", attempts_here=2).outcome == "fall_to_next"
    assert act("server_error", attempts_here=2, has_next=False).outcome == "fail"


def test_rate_limit_prefers_fallback_and_honours_retry_after() -> None:
    assert act("rate_limit").outcome == "fall_to_next"
    a = act("rate_limit", has_next=False, retry_after_s=3.0)
    assert a.outcome == "retry_same" and a.delay_s == 3.0
    assert act("rate_limit", has_next=False, retry_after_s=60.0).outcome == "fail"
    # 503 with a long Retry-After and a fallback: go there
    assert act("server_error", retry_after_s=60.0).outcome == "fall_to_next"
    no_honour = S.model_copy(update={"honor_retry_after": False})
    assert act("rate_limit", has_next=False, retry_after_s=3.0, settings=no_honour).delay_s == 0.25


def test_a_full_local_queue_falls_back_where_a_429_would_and_else_waits_its_retry_after() -> None:
    """A policy that falls back on 429 (every shipped one names it) falls back on a local engine's full
    queue too: both mean busy now, try elsewhere."""
    from policies.schema import trigger_kinds

    triggers = trigger_kinds(["server_error", "rate_limit"])
    assert triggers == {"server_error", "rate_limit", "overloaded"}
    a = act("overloaded", triggers=triggers)
    assert a.outcome == "fall_to_next" and a.reason == "overloaded"
    a = act("overloaded", triggers=triggers, has_next=False, retry_after_s=1.0)
    assert a.outcome == "retry_same" and a.delay_s == 1.0
    assert act("overloaded", triggers=trigger_kinds(["overloaded"])).outcome == "fall_to_next"
    assert trigger_kinds(["server_error"]) == {"server_error"}  # not named, not implied: retried here first
    assert act("overloaded", triggers=frozenset({"server_error"})).outcome == "retry_same"


def test_non_transient_kinds() -> None:
    assert act("context_window").outcome == "fall_to_next"
    assert act("context_window", has_next=False).outcome == "fail"
    assert act("content_policy").outcome == "fail"  # not a trigger here
    assert act("content_policy", triggers=TRIG | {"content_policy"}).outcome == "fall_to_next"
    a = act("bad_request")
    assert a.outcome == "fail" and "not retryable" in a.reason


def test_limits_and_deadline() -> None:
    assert act("timeout", attempts_total=4).outcome == "fail"
    assert act("timeout", elapsed_s=30.0).outcome == "fail"
    # backoff longer than what is left of the deadline: do not wait, fall back
    assert act("timeout", elapsed_s=29.9, has_next=True).outcome == "fall_to_next"
    assert attempt_timeout(S, 25.0, 60.0) == pytest.approx(5.0)
    assert attempt_timeout(S.model_copy(update={"attempt_timeout_s": 2.0}), 0.0, 60.0) == 2.0
