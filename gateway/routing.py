"""From a requested model name to an ordered list of targets, with the reason and propensity.

This is the gateway's thin adapter around the pure router: it gathers the signals snapshot,
calls the decision function, and maps the chosen deployment names to live backends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from backends.base import Backend
from backends.deployment import DeploymentConfig
from backends.executor import RetrySettings, Target


@dataclass(slots=True)
class Route:
    targets: list[Target]
    public_model: str  # the name clients asked for
    policy: str | None = None
    policy_version: int | None = None
    reason: str = "direct"
    propensity: float = 1.0
    retry: RetrySettings = field(default_factory=RetrySettings)


class Catalog:
    """Deployments and their backends, indexed by public model name (config order = fallback order)."""

    def __init__(self, deployments: list[DeploymentConfig], backends: dict[str, Backend]) -> None:
        self.deployments = deployments
        self.backends = backends
        self.by_model: dict[str, list[DeploymentConfig]] = {}
        for d in deployments:
            self.by_model.setdefault(d.model, []).append(d)

    def models(self) -> list[str]:
        return list(self.by_model)

    def targets_for(self, model: str, capability: str) -> list[Target]:
        return [
            Target(d, self.backends[d.name])
            for d in self.by_model.get(model, ())
            if capability in d.capabilities
        ]


class GatewayRouter:
    """Resolves requests to routes. Direct model names map to their deployments in config order;
    policy names (virtual models) go through the policy pipeline once it is wired in."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._created = 1_700_000_000
        self._recent: OrderedDict[str, Route] = OrderedDict()
        self._recent_max = 50_000

    def route(self, req, capability: str, key, prompt_tokens: int) -> Route | None:  # noqa: ANN001
        targets = self.catalog.targets_for(req.model, capability)
        if not targets:
            return None
        return Route(targets=targets, public_model=req.model, reason="direct")

    def observe(self, route: Route | None, row) -> None:  # noqa: ANN001
        """Remember the decision (for feedback) and feed the outcome back."""
        if route is None:
            return
        self._recent[row.id] = route
        if len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)

    def recent_decision(self, request_id: str) -> Route | None:
        return self._recent.get(request_id)

    def feedback(self, request_id: str, score: float) -> None:
        """A quality signal arrived for a request; bandit policies learn from it."""
        return None

    def model_cards(self) -> list[dict]:
        return [
            {"id": m, "object": "model", "created": self._created, "owned_by": ds[0].provider}
            for m, ds in self.catalog.by_model.items()
        ]
