"""Bandit simulation on labeled multi-model data (RouterBench): requests arrive one by one.

At each step a prompt is drawn uniformly at random (with replacement) from the data, the policy picks a
model, and it observes that model's real 0/1 label for the prompt; reward = quality − λ·cost with the
prompt's real USD cost. Because the arrival distribution is the data itself, the *true* value of any
policy is computable exactly, which is what lets the tests check both convergence and off-policy
estimates against ground truth.

Regret is the pseudo-regret against the best fixed arm: ``Σ_t Σ_k π_t(k)·(μ* − μ_k)`` where ``μ_k`` is
arm k's mean reward over the data and ``π_t`` the policy's action distribution at step t.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router.bandits import UCB1, BanditState, LinUCB, LinUCBState, ThompsonSampling

__all__ = ["BanditEnv", "SimLog", "simulate", "policy_value"]


@dataclass
class BanditEnv:
    """Rows with every label known; ``rewards[i, k] = labels[i, k] − λ·costs[i, k]``."""

    arms: list[str]
    labels: np.ndarray
    costs: np.ndarray
    lam: float
    contexts: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        arms: Sequence[str],
        labels: np.ndarray,
        costs: np.ndarray,
        lam: float,
        contexts: np.ndarray | None = None,
    ) -> BanditEnv:
        keep = ~np.isnan(labels).any(axis=1) & ~np.isnan(costs).any(axis=1)
        return cls(list(arms), labels[keep], costs[keep], lam, None if contexts is None else contexts[keep])

    @property
    def rewards(self) -> np.ndarray:
        return self.labels - self.lam * self.costs

    @property
    def arm_means(self) -> np.ndarray:
        return self.rewards.mean(axis=0)

    @property
    def best_arm(self) -> int:
        return int(np.argmax(self.arm_means))


@dataclass
class SimLog:
    """What a gateway would log, plus the simulator's ground truth for analysis."""

    rows: np.ndarray
    actions: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    pseudo_regret: np.ndarray  # cumulative

    @property
    def cumulative_regret(self) -> np.ndarray:
        return self.pseudo_regret


def policy_value(env: BanditEnv, probs_fn: Callable[[int], np.ndarray]) -> float:
    """Exact mean reward of a (possibly stochastic, contextual) policy under uniform arrivals."""
    r = env.rewards
    return float(np.mean([probs_fn(i) @ r[i] for i in range(len(r))]))


def simulate(
    env: BanditEnv,
    policy: ThompsonSampling | UCB1 | LinUCB,
    horizon: int,
    rng: np.random.Generator,
) -> SimLog:
    """Run ``policy`` for ``horizon`` arrivals; returns the log and the cumulative pseudo-regret."""
    n, k = env.labels.shape
    means = env.arm_means
    gaps = means.max() - means
    rows = rng.integers(0, n, horizon)
    actions = np.zeros(horizon, dtype=int)
    props = np.zeros(horizon)
    rewards = np.zeros(horizon)
    inst = np.zeros(horizon)
    arm_index = {a: j for j, a in enumerate(env.arms)}
    if isinstance(policy, LinUCB):
        if env.contexts is None:
            raise ValueError("LinUCB needs contexts")
        lstate = LinUCBState.new(env.arms, env.contexts.shape[1])
    else:
        bstate = BanditState.new(env.arms)
    for t in range(horizon):
        i = int(rows[t])
        costs = dict(zip(env.arms, env.costs[i].tolist(), strict=True))
        if isinstance(policy, LinUCB):
            x = env.contexts[i]  # type: ignore[index]
            ch = policy.choose(lstate, x, rng, costs)
        else:
            ch = policy.choose(bstate, rng, costs)
        j = arm_index[ch.arm]
        q = float(env.labels[i, j])
        if isinstance(policy, LinUCB):
            lstate.update(ch.arm, x, q)
        else:
            bstate.update(ch.arm, q)
        actions[t] = j
        props[t] = ch.propensity
        rewards[t] = q - env.lam * env.costs[i, j]
        inst[t] = float(np.array([ch.probs[a] for a in env.arms]) @ gaps)
    return SimLog(rows, actions, props, rewards, np.cumsum(inst))
