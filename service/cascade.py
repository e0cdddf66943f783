"""Cascades: judge the first (cheap) answer and say whether to keep it or ask the stronger model.

The router decides who answers first, who next, the score and the threshold (`EscalationPlan`); the
score itself is `router.escalation.confidence` (mean token log-probability, or a trained answer
verifier). Here the two meet: a `Verdict` per first answer. For streamed requests, `StreamedAnswer`
collects the first answer's chunks into the body the score reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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


def judge(
    plan: EscalationPlan, body: Mapping[str, Any], prompt: str, verifiers: Mapping[str, Verifier] | None
) -> Verdict:
    """The verdict on a first answer (an OpenAI chat or text completion body)."""
    return Verdict(plan.score, confidence(plan.score, body, prompt, verifiers), plan.threshold)


@dataclass(slots=True)
class StreamedAnswer:
    """The first choice of a streamed answer, as far as it has arrived: its text, its token
    log-probabilities (when the upstream sent them) and whether it has finished."""

    chat: bool = True
    text: list[str] = field(default_factory=list)
    chars: int = 0
    logprobs: list[Any] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        for c in chunk.get("choices") or ():
            if c.get("index", 0) != 0:
                continue
            if "delta" in c:
                piece = (c.get("delta") or {}).get("content")
            else:
                self.chat = False
                piece = c.get("text")
            if piece:
                self.text.append(piece)
                self.chars += len(piece)
            lp = c.get("logprobs") or {}
            if isinstance(lp.get("content"), list):
                self.logprobs.extend(lp["content"])
            elif isinstance(lp.get("token_logprobs"), list):
                self.token_logprobs.extend(lp["token_logprobs"])
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]

    def body(self) -> dict[str, Any]:
        """The answer so far as a completion body, the shape `router.escalation` reads."""
        text = "".join(self.text)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": self.logprobs} if self.logprobs else None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": {"token_logprobs": self.token_logprobs} if self.token_logprobs else None,
            }
        choice["finish_reason"] = self.finish_reason
        return {"choices": [choice]}
