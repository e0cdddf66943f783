"""Adapters from the learning code to the router's plugin protocols (`router.protocols`).

`decide` only knows `Scorer.predict(prompt_text, metadata)` and `Bandit.choose/update`; the
classifier and the bandit algorithms have their own, richer APIs. These adapters are the seam,
pure like the rest of router/: state lives in the objects and is exported as plain dicts so the
gateway can persist or share it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from router.bandits import ArmStats, BanditState, ThompsonSampling
from router.classifier import QualityClassifier


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

    def choose(self, arms: Sequence[str], context: Mapping[str, Any], rng: random.Random) -> tuple[str, float]:
        for a in arms:
            if a not in self.state.arms:
                self.state.arms[a] = BanditState.new([a]).arms[a]
        sub = BanditState(arms={a: self.state.arms[a] for a in arms}, t=self.state.t)
        np_rng = np.random.default_rng(rng.getrandbits(64))
        choice = self.algo.choose(sub, np_rng, costs=context.get("costs"))
        return choice.arm, float(choice.propensity)

    def update(self, arm: str, reward: float, context: Mapping[str, Any], propensity: float) -> None:
        if arm not in self.state.arms:
            self.state.arms[arm] = BanditState.new([arm]).arms[arm]
        self.state.update(arm, reward)

    def to_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

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
