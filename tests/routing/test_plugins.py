"""The bandit adapters learn from rewards and report exact propensities."""

from __future__ import annotations

import random

from router.plugins import LinUCBBandit, ThompsonBandit


def _learns(bandit: object, reward_of: dict[str, float], ctx_of: object) -> float:
    rng = random.Random(0)
    picks = []
    for t in range(600):
        ctx = ctx_of(t)
        arm, p = bandit.choose(["a", "b"], ctx, rng)  # type: ignore[attr-defined]
        assert 0 < p <= 1
        bandit.update(arm, reward_of(arm, ctx), ctx, p)  # type: ignore[attr-defined, operator]
        picks.append(arm)
    return picks[-200:].count("a") / 200


def test_thompson_converges_to_the_better_arm() -> None:
    share = _learns(ThompsonBandit(), lambda arm, ctx: 1.0 if arm == "a" else 0.2, lambda t: {})  # type: ignore[arg-type]
    assert share > 0.8


def test_linucb_learns_which_arm_suits_which_prompt_length() -> None:
    # long prompts do well on a, short ones on b: a contextual bandit must split by length
    def reward(arm: str, ctx: dict) -> float:
        long = ctx["prompt_tokens"] > 100
        return 1.0 if (arm == "a") == long else 0.0

    bandit = LinUCBBandit()
    rng = random.Random(1)
    _learns(bandit, reward, lambda t: {"prompt_tokens": 1000 if t % 2 else 5})  # type: ignore[arg-type]
    long_pick = [bandit.choose(["a", "b"], {"prompt_tokens": 1000}, rng)[0] for _ in range(50)]
    short_pick = [bandit.choose(["a", "b"], {"prompt_tokens": 5}, rng)[0] for _ in range(50)]
    assert long_pick.count("a") > 40 and short_pick.count("b") > 40
