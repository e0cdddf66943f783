"""Routing decisions: pure functions of request features, a policy and a signals snapshot.

Nothing in this package does I/O or reads the clock; see `router.decide.decide`.
"""

from common.types import RequestFeatures
from router.decide import bandit_context, decide, unknown_targets
from router.decision import Decision, EscalationPlan, TraceStep
from router.protocols import Bandit, Plugins, Scorer
from router.signals import BudgetSnapshot, LocalLoad, Signals

__all__ = [
    "Bandit",
    "BudgetSnapshot",
    "Decision",
    "EscalationPlan",
    "LocalLoad",
    "Plugins",
    "RequestFeatures",
    "Scorer",
    "Signals",
    "TraceStep",
    "bandit_context",
    "decide",
    "unknown_targets",
]
