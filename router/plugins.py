"""Adapters from the learning code to the router's plugin protocols (`router.protocols`).

`decide` only knows `Scorer.predict(prompt_text, metadata)` and `Bandit.choose/update`; the
classifier and the bandit algorithms have their own, richer APIs. These adapters are the seam,
pure like the rest of router/: state lives in the objects and is exported as plain dicts so the
gateway can persist or share it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from router.bandits import ArmStats, BanditState, LinUCB, LinUCBState, ThompsonSampling, unit_reward
from router.classifier import QualityClassifier


class DerivedGenerator:
    """A numpy ``Generator`` whose state is drawn from the decision's injected ``random.Random`` on every
    call, so the same ``rng`` gives the same choice (decisions stay reproducible and simulable).

    Why not ``np.random.default_rng(rng.getrandbits(64))``: that hashes the seed through a SeedSequence
    and builds two objects, ~16 µs a decision on the 2-core box; setting a kept PCG64's 128-bit state
    and odd increment directly takes ~2.5 µs.
    """

    def __init__(self) -> None:
        self._bits = np.random.PCG64(0)
        self._gen = np.random.Generator(self._bits)

    def __call__(self, rng: random.Random) -> np.random.Generator:
        self._bits.state = {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                            "state": {"state": rng.getrandbits(128), "inc": rng.getrandbits(128) | 1}}
        return self._gen


class ClassifierScorer:
    """P(acceptable) per model from a trained `QualityClassifier`.

    ``aliases`` renames the classifier's models (the names in its training data) to the names the
    gateway's deployments use, e.g. ``{"gpt-4-1106-preview": "gpt-4o"}``.
    """

    def __init__(self, classifier: QualityClassifier, aliases: Mapping[str, str] | None = None) -> None:
        self.classifier = classifier
        self.aliases = dict(aliases or {})

    def predict(self, prompt_text: str, metadata: Mapping[str, Any]) -> dict[str, float]:
        probs = self.classifier.predict(prompt_text)
        return {self.aliases.get(m, m): p for m, p in probs.items()}


class ThompsonBandit:
    """Thompson sampling over whichever arms a decision offers (arms are added as they appear).

    Rewards arrive later through `update` (feedback scores in [0, 1]); the propensity returned by
    `choose` is the probability of the chosen arm under the sampled policy, for off-policy eval.
    """

    def __init__(self, algo: ThompsonSampling | None = None, state: BanditState | None = None) -> None:
        self.algo = algo or ThompsonSampling(kind="gaussian")
        self.state = state or BanditState(arms={})
        self._np_rng = DerivedGenerator()

    def choose(self, arms: Sequence[str], context: Mapping[str, Any], rng: random.Random) -> tuple[str, float]:
        for a in arms:
            if a not in self.state.arms:
                self.state.arms[a] = BanditState.new([a]).arms[a]
        sub = BanditState(arms={a: self.state.arms[a] for a in arms}, t=self.state.t)
        choice = self.algo.choose(sub, self._np_rng(rng), costs=context.get("costs"))
        return choice.arm, float(choice.propensity)

    def update(self, arm: str, reward: float, context: Mapping[str, Any], propensity: float) -> None:
        if arm not in self.state.arms:
            self.state.arms[arm] = BanditState.new([arm]).arms[arm]
        self.state.update(arm, reward)

    def to_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def increments(self, arm: str, reward: float, context: Mapping[str, Any]) -> dict[str, float]:
        """What one reward adds to the shared totals: Beta pseudo-counts, count and moments. Sums,
        so any number of processes can add them atomically without reading first."""
        q = unit_reward(reward)
        return {"alpha": q, "beta": 1.0 - q, "n": 1.0, "sum": q, "sumsq": q * q}

    def load_totals(self, totals: Mapping[str, Mapping[str, float]]) -> None:
        """Replace the statistics with shared additive totals (see `state.bandits`): the prior
        pseudo-counts (1, 1) plus every process's observed rewards."""
        arms = dict(self.state.arms)
        t = 0
        for arm, tot in totals.items():
            n = int(round(tot.get("n", 0.0)))
            s, ss = tot.get("sum", 0.0), tot.get("sumsq", 0.0)
            mean = s / n if n else 0.0
            arms[arm] = ArmStats(alpha=1.0 + tot.get("alpha", 0.0), beta=1.0 + tot.get("beta", 0.0), n=n,
                                 mean=mean, m2=max(0.0, ss - n * mean * mean))
            t += n
        self.state = BanditState(arms=arms, t=t)


def request_context_vector(context: Mapping[str, Any]) -> np.ndarray:
    """A small, scaled context for contextual bandits from `router.decide.bandit_context`: bias,
    log prompt length, requested output length, needed capabilities, endpoint. Scaled to about [0, 1]
    so LinUCB's ridge prior treats every feature alike."""
    caps = set(context.get("capabilities") or ())
    return np.array([
        1.0,
        math.log1p(float(context.get("prompt_tokens") or 0)) / 10.0,
        min(float(context.get("max_tokens") or 0), 4096.0) / 4096.0,
        1.0 if "tools" in caps else 0.0,
        1.0 if "json_mode" in caps else 0.0,
        1.0 if "vision" in caps else 0.0,
        1.0 if context.get("endpoint") == "completion" else 0.0,
    ])


class LinUCBBandit:
    """Contextual bandit (LinUCB, disjoint linear models) over `request_context_vector`.

    Learns per request shape which model earns the most reward, e.g. that long prompts do better on
    one model and short ones on another. Arms are added as decisions offer them; propensities are
    exact (ε-mixed greedy), for off-policy evaluation.
    """

    def __init__(self, algo: LinUCB | None = None) -> None:
        self.algo = algo or LinUCB(alpha=0.5, epsilon=0.05)
        self.dim = len(request_context_vector({}))
        self.state = LinUCBState.new([], self.dim)
        self._np_rng = DerivedGenerator()

    def _ensure(self, arm: str) -> None:
        if arm not in self.state.a_inv:
            self.state.arms.append(arm)
            self.state.a_inv[arm] = np.eye(self.dim)
            self.state.b[arm] = np.zeros(self.dim)
            self.state.n[arm] = 0

    def choose(self, arms: Sequence[str], context: Mapping[str, Any], rng: random.Random) -> tuple[str, float]:
        for a in arms:
            self._ensure(a)
        s = self.state
        sub = LinUCBState(arms=list(arms), dim=self.dim, a_inv={a: s.a_inv[a] for a in arms},
                          b={a: s.b[a] for a in arms}, n={a: s.n[a] for a in arms})
        choice = self.algo.choose(sub, self._contexts(context, arms), self._np_rng(rng), costs=context.get("costs"))
        return choice.arm, float(choice.propensity)

    def _contexts(self, context: Mapping[str, Any], arms: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
        """What ``choose`` scores the arms with: one context for every arm here."""
        return request_context_vector(context)

    def _vector(self, context: Mapping[str, Any], arm: str) -> np.ndarray:
        """The context ``arm`` is updated with (the one ``_contexts`` scored it with)."""
        return request_context_vector(context)

    def update(self, arm: str, reward: float, context: Mapping[str, Any], propensity: float) -> None:
        self._ensure(arm)
        self.state.update(arm, self._vector(context, arm), unit_reward(reward))

    def to_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def increments(self, arm: str, reward: float, context: Mapping[str, Any]) -> dict[str, float]:
        """What one reward adds to the shared totals: ``x xᵀ`` (upper triangle), ``r·x`` and a count.

        LinUCB's state is ``A = I + Σ x xᵀ`` and ``b = Σ r x``, both sums, so processes share it the
        way Thompson shares its counts; each rebuilds ``A⁻¹`` from the totals (`load_totals`).
        """
        x = self._vector(context, arm)
        r = unit_reward(reward)
        out = {"n": 1.0}
        for i in range(self.dim):
            out[f"b.{i}"] = r * float(x[i])
            for j in range(i, self.dim):
                out[f"A.{i}.{j}"] = float(x[i] * x[j])
        return out

    def load_totals(self, totals: Mapping[str, Mapping[str, float]]) -> None:
        """Replace every arm's model with the shared totals (ridge prior ``I`` plus every process's
        observations); arms the store has not seen yet keep their local state."""
        s = self.state
        for arm, tot in totals.items():
            a = np.eye(self.dim)
            b = np.zeros(self.dim)
            for i in range(self.dim):
                b[i] = tot.get(f"b.{i}", 0.0)
                for j in range(i, self.dim):
                    a[i, j] += tot.get(f"A.{i}.{j}", 0.0)
                    a[j, i] = a[i, j]
            if arm not in s.a_inv:
                s.arms.append(arm)
            s.a_inv[arm] = np.linalg.inv(a)
            s.b[arm] = b
            s.n[arm] = int(round(tot.get("n", 0.0)))


def scored_context_vector(
    context: Mapping[str, Any], arm: str, shape: np.ndarray | None = None
) -> np.ndarray:
    """One arm's context for :class:`ScoredLinUCBBandit`: the request's shape
    (:func:`request_context_vector`, or ``shape`` when the caller has it already), the classifier's
    P(ok) for this arm and whether it gave one (0.5 and 0 when the policy's scorer was missing or
    silent about the arm)."""
    p = (context.get("scores") or {}).get(arm)
    scored = p is not None
    base = request_context_vector(context) if shape is None else shape
    return np.concatenate([base, [float(p) if scored else 0.5, float(scored)]])


class ScoredLinUCBBandit(LinUCBBandit):
    """Contextual bandit (LinUCB, disjoint) over the request's shape *and* the learned classifier's
    P(ok) for each arm (policy: ``{type: bandit, bandit: linucb_scored, context_scorer: default}``).

    Why: the classifier is trained offline on labelled data; live traffic drifts from it and its
    probabilities are not equally good for every model. Each arm's ridge regression learns from
    feedback how much that arm's score predicts its reward, so the bandit follows the classifier
    where it is right and overrides it where it is not. The scores travel in the logged context, so
    feedback handled by any process updates with the same vector the decision used.
    """

    def __init__(self, algo: LinUCB | None = None) -> None:
        super().__init__(algo)
        self.dim = len(scored_context_vector({}, ""))
        self.state = LinUCBState.new([], self.dim)

    def _contexts(self, context: Mapping[str, Any], arms: Sequence[str]) -> dict[str, np.ndarray]:
        shape = request_context_vector(context)  # once, shared by every arm's vector
        return {a: scored_context_vector(context, a, shape) for a in arms}

    def _vector(self, context: Mapping[str, Any], arm: str) -> np.ndarray:
        return scored_context_vector(context, arm)
