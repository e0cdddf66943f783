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

from router.bandits import BanditState, ThompsonSampling
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
