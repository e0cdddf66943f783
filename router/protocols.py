"""The seams where learned components plug into routing: a scorer and a bandit (the decision), and a
verifier (a cascade's judgement of a finished answer).

The router owns only these protocols; the learning code (classifier training, bandit algorithms)
lives elsewhere and is injected via `Plugins`, so `decide` stays pure and testable with stubs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    """Predicts, per model (or deployment) name, the probability that it answers this prompt well."""

    def predict(self, prompt_text: str, metadata: Mapping[str, Any]) -> Mapping[str, float]: ...


@runtime_checkable
class Bandit(Protocol):
    """Chooses an arm and says how likely that choice was (needed for off-policy evaluation).

    ``context`` is `router.decide.bandit_context(...)`: request features as plain values.
    ``update`` is called by the gateway once a reward is known (feedback, success/cost); the
    router never calls it.
    """

    def choose(self, arms: Sequence[str], context: Mapping[str, Any], rng: random.Random) -> tuple[str, float]: ...

    def update(self, arm: str, reward: float, context: Mapping[str, Any], propensity: float) -> None: ...


@runtime_checkable
class SharedBandit(Bandit, Protocol):
    """A bandit whose statistics are sums, so every gateway process can share them.

    ``increments`` says what one reward adds (statistic name -> amount); a store adds those up
    atomically across processes, and ``load_totals`` rebuilds the bandit from the sums per arm.
    """

    def increments(self, arm: str, reward: float, context: Mapping[str, Any]) -> dict[str, float]: ...

    def load_totals(self, totals: Mapping[str, Mapping[str, float]]) -> None: ...


@runtime_checkable
class Verifier(Protocol):
    """Judges a finished answer: the probability that ``answer`` to ``prompt`` is acceptable. A cascade's
    confidence when the provider returns no log-probabilities (`router.verifier.AnswerVerifier`)."""

    def p_ok(self, prompt: str, answer: str) -> float: ...


@dataclass(slots=True)
class Plugins:
    """Named scorers and bandits a policy's selector may refer to (``scorer: default``)."""

    scorers: Mapping[str, Scorer] = field(default_factory=dict)
    bandits: Mapping[str, Bandit] = field(default_factory=dict)
    verifiers: Mapping[str, Verifier] = field(default_factory=dict)


NO_PLUGINS = Plugins()
