"""The bandit adapters learn from rewards and report exact propensities."""

from __future__ import annotations

import random

from router.plugins import LinUCBBandit, ScoredLinUCBBandit, ThompsonBandit


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


def _right_arm_share(bandit: object, score_of: object, steps: int = 800) -> float:
    """Each request has one right arm (reward 1, the other 0), drawn at random; the context carries a
    classifier's scores for both arms (``score_of(right, rng)``). The share of right picks at the end."""
    rng = random.Random(2)
    hits = []
    for _ in range(steps):
        right = rng.choice(["a", "b"])
        ctx = {"prompt_tokens": 50, "scores": score_of(right, rng)}  # type: ignore[operator]
        arm, p = bandit.choose(["a", "b"], ctx, rng)  # type: ignore[attr-defined]
        bandit.update(arm, 1.0 if arm == right else 0.0, ctx, p)  # type: ignore[attr-defined]
        hits.append(arm == right)
    return sum(hits[-200:]) / 200


def test_scored_linucb_follows_an_informative_classifier_that_plain_linucb_cannot_see() -> None:
    def informative(right: str, rng: random.Random) -> dict[str, float]:
        return {arm: (0.75 if arm == right else 0.35) + rng.uniform(-0.1, 0.1) for arm in ("a", "b")}

    assert _right_arm_share(ScoredLinUCBBandit(), informative) > 0.85
    assert _right_arm_share(LinUCBBandit(), informative) < 0.65  # same requests, scores ignored


def test_scored_linucb_learns_to_overrule_a_classifier_that_is_wrong_about_an_arm() -> None:
    # the classifier always rates b above a, but a is right whenever its own score is high
    def misleading(right: str, rng: random.Random) -> dict[str, float]:
        return {"a": 0.4 if right == "a" else 0.1, "b": 0.9}

    assert _right_arm_share(ScoredLinUCBBandit(), misleading) > 0.85


def test_scored_linucb_updates_with_the_vector_it_decided_with() -> None:
    import numpy as np

    from router.plugins import scored_context_vector

    bandit = ScoredLinUCBBandit()
    ctx = {"prompt_tokens": 10, "scores": {"a": 0.8}}
    bandit.choose(["a", "b"], ctx, random.Random(0))
    inc = bandit.increments("a", 1.0, ctx)
    x = scored_context_vector(ctx, "a")
    assert x[-2:].tolist() == [0.8, 1.0] and scored_context_vector(ctx, "b")[-2:].tolist() == [0.5, 0.0]
    assert np.isclose(inc[f"b.{len(x) - 2}"], 0.8) and inc["n"] == 1.0
    bandit.update("a", 1.0, ctx, 0.5)
    assert np.allclose(bandit.state.b["a"], x)


def test_a_bandit_choice_is_reproducible_from_the_injected_rng() -> None:
    for make in (ThompsonBandit, LinUCBBandit, ScoredLinUCBBandit):
        bandit = make()
        for arm in ("a", "b", "c"):
            bandit.update(arm, 0.5, {"prompt_tokens": 10}, 1.0)
        first = [bandit.choose(["a", "b", "c"], {"prompt_tokens": 10}, random.Random(s)) for s in range(300)]
        again = [bandit.choose(["a", "b", "c"], {"prompt_tokens": 10}, random.Random(s)) for s in range(300)]
        assert first == again
        assert len({arm for arm, _ in first}) == 3  # different seeds explore differently


def test_derived_generators_differ_by_seed_and_look_uniform() -> None:
    import numpy as np

    from router.plugins import DerivedGenerator

    derive = DerivedGenerator()
    a = derive(random.Random(1)).random(5).tolist()
    assert derive(random.Random(1)).random(5).tolist() == a and derive(random.Random(2)).random(5).tolist() != a
    draws = np.concatenate([derive(random.Random(s)).random(8) for s in range(2000)])
    assert abs(draws.mean() - 0.5) < 0.01 and abs(np.histogram(draws, 10, (0, 1))[0] / len(draws) - 0.1).max() < 0.01
