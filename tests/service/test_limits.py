"""Which budgets apply to a request: a key's bound user and team always, the body's user on top."""

from __future__ import annotations

from datetime import UTC, datetime

from common.types import RequestFeatures
from gateway.keys import ApiKey
from router.budget import BudgetLimit
from service.routing import limits_for

BUDGETS = {s: BudgetLimit(s, 1.0, "day") for s in ("user:alice", "user:mallory", "team:ml")}


def _key(**kw: object) -> ApiKey:
    return ApiKey(id="k1", name="k", key_prefix="hg-", created_at=datetime.now(UTC), **kw)  # type: ignore[arg-type]


def test_a_bound_user_and_team_apply_whatever_the_body_says() -> None:
    key = _key(user="alice", team="ml", budget_usd=2.0)
    features = RequestFeatures(prompt_tokens=1, user="alice", team="ml", end_user="mallory")
    budgets, _ = limits_for(key, features, BUDGETS)
    assert {b.scope for b in budgets} == {"user:alice", "team:ml", "user:mallory", "key:k1"}


def test_the_body_user_alone_applies_when_the_key_is_not_bound() -> None:
    features = RequestFeatures(prompt_tokens=1, user="mallory", end_user="mallory")
    budgets, _ = limits_for(_key(), features, BUDGETS)
    assert [b.scope for b in budgets] == ["user:mallory"]
