"""Bandit and off-policy properties on a reduced, seeded RouterBench simulation + unit checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.bandits import UCB1, BanditState, LinUCB, LinUCBState, ThompsonSampling, classifier_context
from router.offline.datasets import read_many
from router.offline.simulate import BanditEnv, policy_value, simulate
from router.ope import doubly_robust, ips, snips, tabular_reward_model


def _slope(cum: np.ndarray) -> float:
    t = np.arange(1, len(cum) + 1)
    h = len(cum) // 2
    return float(np.polyfit(np.log(t[h:]), np.log(np.maximum(cum[h:], 1e-9)), 1)[0])


@pytest.fixture(scope="module")
def env(data_dir: Path) -> BanditEnv:
    ds = read_many(sorted((data_dir / "routerbench").glob("*_train.csv")))
    # four arms with clear gaps keep the run short and the assertions robust
    keep = [
        ds.models.index(m)
        for m in (
            "zero-one-ai/Yi-34B-Chat",
            "mistralai/mistral-7b-chat",
            "claude-v2",
            "meta/llama-2-70b-chat",
        )
    ]
    return BanditEnv.from_arrays(
        [ds.models[j] for j in keep], ds.labels[:, keep], ds.costs[:, keep], lam=30.0
    )  # type: ignore[index]


def test_thompson_regret_sublinear_and_converges(env: BanditEnv) -> None:
    log = simulate(
        env,
        ThompsonSampling(kind="beta", lam=env.lam, n_mc=64, epsilon=0.02, epsilon_decay=100),
        4000,
        np.random.default_rng(0),
    )
    r = log.pseudo_regret
    assert r[-1] < 2.0 * r[999]  # 4x the time, well under 4x the regret
    assert _slope(r) < 0.7
    assert np.mean(log.actions[-400:] == env.best_arm) > 0.9
    assert abs(np.mean(log.rewards[-1000:]) - env.arm_means[env.best_arm]) < 0.05


def test_gaussian_thompson_and_ucb_sublinear(env: BanditEnv) -> None:
    for pol in (
        ThompsonSampling(kind="gaussian", lam=env.lam, n_mc=64, epsilon_decay=100),
        UCB1(lam=env.lam, scale=0.5, epsilon_decay=100),
    ):
        log = simulate(env, pol, 4000, np.random.default_rng(1))
        assert log.pseudo_regret[-1] < 2.6 * log.pseudo_regret[999], type(pol).__name__
        assert np.mean(log.actions[-400:] == env.best_arm) > 0.8, type(pol).__name__


def test_ope_of_second_policy_covers_truth(env: BanditEnv) -> None:
    log = simulate(
        env, ThompsonSampling(kind="beta", lam=env.lam, n_mc=64, epsilon=0.1), 4000, np.random.default_rng(2)
    )
    k = len(env.arms)
    second = int(np.argsort(env.arm_means)[-2])
    mix = np.full(k, 0.1 / k)
    mix[second] += 0.9
    truth = policy_value(env, lambda i: mix)
    tp = np.tile(mix, (len(log.rows), 1))
    qhat = tabular_reward_model(log.actions, log.rewards, k)
    for est in (
        ips(log.actions, log.propensities, log.rewards, tp),
        snips(log.actions, log.propensities, log.rewards, tp),
        doubly_robust(log.actions, log.propensities, log.rewards, tp, qhat),
        snips(
            log.actions,
            log.propensities,
            log.rewards,
            tp,
            ci="bootstrap",
            rng=np.random.default_rng(3),
            n_boot=200,
        ),
    ):
        assert est.contains(truth), (est, truth)
        assert est.hi - est.lo < 0.3  # informative, not just covering


def test_propensities_exact_and_positive() -> None:
    st = BanditState.new(["a", "b", "c"])
    for _ in range(30):
        st.update("a", 1.0)
        st.update("b", 0.0)
    rng = np.random.default_rng(0)
    ts = ThompsonSampling(epsilon=0.03, n_mc=200)
    ch = ts.choose(st, rng)
    assert sum(ch.probs.values()) == pytest.approx(1.0)
    assert ch.propensity == pytest.approx(ch.probs[ch.arm])
    assert min(ch.probs.values()) >= 0.01 - 1e-12
    ucb = UCB1(epsilon=0.03)
    probs = ucb.action_probs(st)
    assert probs[max(probs, key=probs.get)] == pytest.approx(0.98)
    # cost changes the decision without changing the state
    costly = ThompsonSampling(lam=10.0, epsilon=0.0).action_probs(st, rng, {"a": 1.0, "b": 0.0, "c": 0.0})
    assert costly["a"] < 0.05


def test_state_serialisation_roundtrip() -> None:
    st = BanditState.new(["x", "y"]).update("x", 0.7).update("y", 1.0)
    again = BanditState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert again == st
    ls = LinUCBState.new(["x", "y"], dim=3)
    ctx = classifier_context({"x": 0.2, "y": 0.9})
    ls.update("y", ctx, 1.0)
    back = LinUCBState.from_dict(json.loads(json.dumps(ls.to_dict())))
    assert np.allclose(back.a_inv["y"], ls.a_inv["y"]) and back.n == ls.n
    pol = LinUCB(alpha=0.1, epsilon=0.0)
    assert pol.choose(back, ctx, np.random.default_rng(0)).arm == "y"


def test_linucb_learns_context() -> None:
    rng = np.random.default_rng(0)
    st = LinUCBState.new(["a", "b"], dim=2)
    pol = LinUCB(alpha=0.3, epsilon=0.05)
    hits = 0
    for t in range(3000):
        ctx_kind = int(rng.integers(0, 2))
        x = np.array([1.0, float(ctx_kind)])
        ch = pol.choose(st, x, rng)
        best = "b" if ctx_kind else "a"
        q = float(rng.random() < (0.9 if ch.arm == best else 0.3))
        st.update(ch.arm, x, q)
        if t >= 2000:
            hits += ch.arm == best
    assert hits / 1000 > 0.85
