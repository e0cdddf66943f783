"""Routing decisions: pure functions of request features, a policy and a signals snapshot.

Nothing on the decision path does I/O or reads the clock; see `router.decide.decide`. Files are read
only by `router.artifacts` (loading a trained artifact, which the request service does off the request
path when a slot changes) and by the offline tools in `router.offline` (data, training, writing
artifacts), which the serving path never imports.
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
