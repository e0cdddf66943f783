"""Cascades: judge the first (cheap) answer and say whether to keep it or ask the stronger model.

The router decides who answers first, who next, the score and the threshold (`EscalationPlan`); the
score itself is `router.escalation.confidence` (mean token log-probability, or a trained answer
verifier). Here the two meet: a `Verdict` per first answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from router.decision import EscalationPlan
from router.escalation import confidence
from router.protocols import Verifier

Outcome = Literal["kept", "escalate", "no_confidence"]


@dataclass(slots=True, frozen=True)
class Verdict:
    score: str
    confidence: float | None
    threshold: float

    @property
    def outcome(self) -> Outcome:
        if self.confidence is None:
            return "no_confidence"
        return "kept" if self.confidence >= self.threshold else "escalate"

    def reason(self) -> str:
        """The route reason's suffix for this verdict (escalation outcomes add to it)."""
        if self.confidence is None:
            return f"; no {self.score} confidence, kept"
        cmp = ">=" if self.confidence >= self.threshold else "<"
        return f"; {self.score}={self.confidence:.2f} {cmp} {self.threshold:g}"


def judge(plan: EscalationPlan, body: Mapping[str, Any], prompt: str,
          verifiers: Mapping[str, Verifier] | None) -> Verdict:
    """The verdict on a first answer (an OpenAI chat or text completion body)."""
    return Verdict(plan.score, confidence(plan.score, body, prompt, verifiers), plan.threshold)
