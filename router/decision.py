"""Output of `router.decide`: a Decision (plain values). Its input, `RequestFeatures`, lives in
`common.types` with the other shared value types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.types import DeploymentConfig, RetrySettings


@dataclass(slots=True, frozen=True)
class TraceStep:
    """One step of the pipeline, for `simulate` and debugging: what happened and who was left."""

    step: str  # "filter", "breakers", "budget", "rule", "selector", "fallbacks", "escalation"
    detail: str
    remaining: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "detail": self.detail, "remaining": list(self.remaining)}


@dataclass(slots=True)
class EscalationPlan:
    """Send to ``first``; if the confidence score (computed by the gateway as ``score``) is below
    ``threshold``, send the same request to ``to`` (in order, first available)."""

    first: DeploymentConfig
    to: list[DeploymentConfig]
    threshold: float
    score: str
    stream_buffer_chars: int = 2000  # a streamed first answer: how much is held back and judged

    def as_dict(self) -> dict[str, Any]:
        return {
            "first": self.first.name,
            "to": [d.name for d in self.to],
            "threshold": self.threshold,
            "score": self.score,
            "stream_buffer_chars": self.stream_buffer_chars,
        }


@dataclass(slots=True)
class Decision:
    """Where a request goes and why.

    ``candidates``: primary first, then fallbacks, open breakers already skipped; empty when
    ``error`` is set. ``propensity``: probability that the selector chose the primary given
    the candidate pool (1.0 for deterministic choices), logged for off-policy evaluation.
    """

    policy: str
    candidates: list[DeploymentConfig]
    reason: str
    propensity: float
    trace: list[TraceStep]
    retry: RetrySettings
    fallback_triggers: frozenset[str]
    escalation: EscalationPlan | None = None
    error: str | None = None  # "unsupported" | "no_candidates" | "budget_exceeded"
    selector: str = ""
    tier: str | None = None
    arm: str | None = None  # bandit arm, for the later bandit.update
    bandit: str | None = None  # which bandit plugin chose ``arm`` (a rule may switch selectors)
    scores: dict[str, float] | None = None  # classifier P(ok) per model, when one was asked
    # On a "no_candidates" error: the deployments left out because their breaker is open (the service
    # tells the client to come back when the first of them goes half-open).
    open_breakers: tuple[str, ...] = ()

    @property
    def primary(self) -> DeploymentConfig | None:
        return self.candidates[0] if self.candidates else None

    def next_after(self, failed: str, kind: str, tried: frozenset[str] | set[str] = frozenset()) -> DeploymentConfig | None:
        """The candidate to fall back to after ``failed`` failed with error ``kind``.

        A ``context_window`` failure only moves to a deployment with a strictly larger window,
        since any other would fail the same way. ``tried`` names deployments already attempted.
        """
        names = [d.name for d in self.candidates]
        start = names.index(failed) + 1 if failed in names else 0
        window = next((d.context_window for d in self.candidates if d.name == failed), 0)
        for d in self.candidates[start:]:
            if d.name in tried or d.name == failed:
                continue
            if kind == "context_window" and d.context_window <= window:
                continue
            return d
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the `simulate` endpoint's answer)."""
        return {
            "policy": self.policy,
            "candidates": [d.name for d in self.candidates],
            "models": [d.model for d in self.candidates],
            "reason": self.reason,
            "propensity": self.propensity,
            "error": self.error,
            "selector": self.selector,
            "tier": self.tier,
            "arm": self.arm,
            "scores": self.scores,
            "fallback_triggers": sorted(self.fallback_triggers),
            "retry": self.retry.model_dump(),
            "escalation": self.escalation.as_dict() if self.escalation else None,
            "trace": [t.as_dict() for t in self.trace],
        }
