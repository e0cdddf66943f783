"""Prometheus metrics, one registry per app (no module-level state, so tests can build many apps).

Label values come only from names the gateway knows. A model label is a configured model or an
existing policy, a deployment label a configured deployment, a provider one of theirs; anything
else (what a client typed as `model`, say) is counted under one ``other`` label. Labels filled
from the gateway's own constants (endpoint, status, error type, ...) are capped at
``MAX_VALUES_PER_LABEL`` distinct values as a backstop. So no request can add a time series, and
`/metrics` stays the same size however many names clients invent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

_DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

OTHER = "other"
MAX_VALUES_PER_LABEL = 64


def _anything(name: str) -> bool:
    return True


@dataclass(slots=True)
class LabelNames:
    """Which names may become label values, by label (set by the app factory from its config)."""

    models: Callable[[str], bool] = _anything
    policies: Callable[[str], bool] = _anything
    deployments: Callable[[str], bool] = _anything
    providers: Callable[[str], bool] = _anything

    def check(self, label: str) -> Callable[[str], bool] | None:
        return {
            "model": self.models,
            "policy": self.policies,
            "deployment": self.deployments,
            "provider": self.providers,
        }.get(label)


M = TypeVar("M", Counter, Gauge, Histogram)


@dataclass(slots=True)
class Guarded(Generic[M]):
    """A labelled metric whose ``labels(...)`` admits only known names (see the module docstring)."""

    metric: M
    label_names: Sequence[str]
    names: LabelNames
    seen: list[set[str]] = field(default_factory=list)

    def labels(self, *values: Any) -> M:
        if not self.seen:
            self.seen = [set() for _ in self.label_names]
        out = []
        for label, value, seen in zip(self.label_names, values, self.seen, strict=True):
            v = str(value)
            check = self.names.check(label)
            if check is not None:
                if v and v != "none" and not check(v):
                    v = OTHER
            elif v not in seen:
                if len(seen) >= MAX_VALUES_PER_LABEL:
                    v = OTHER
                else:
                    seen.add(v)
            out.append(v)
        return self.metric.labels(*out)


class Totals:
    """Counters whose totals another part of the process keeps (the request log's): ``set`` copies them in,
    and a scrape exports them as counters (``<name>_total``). A ``Counter`` can only be increased, and the
    total here is already counted."""

    def __init__(self, registry: CollectorRegistry, metrics: dict[str, tuple[str, str]]) -> None:
        self.metrics = metrics  # key in the source's totals -> (metric name, help)
        self.values = dict.fromkeys(metrics, 0.0)
        registry.register(self)

    def set(self, totals: Mapping[str, Any]) -> None:
        for key in self.metrics:
            self.values[key] = float(totals.get(key) or 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        for key, (name, doc) in self.metrics.items():
            yield CounterMetricFamily(name, doc, value=self.values[key])

    def describe(self) -> Iterator[CounterMetricFamily]:
        return self.collect()


class Metrics:
    def __init__(self, names: LabelNames | None = None) -> None:
        self.names = names or LabelNames()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def counter(name: str, doc: str, labels: list[str]) -> Guarded[Counter]:
            return Guarded(Counter(name, doc, labels, registry=r), labels, self.names)

        def histogram(name: str, doc: str, labels: list[str], buckets: Sequence[float]) -> Guarded[Histogram]:
            return Guarded(Histogram(name, doc, labels, buckets=buckets, registry=r), labels, self.names)

        self.requests = counter(
            "hybridgate_requests_total", "Client requests", ["endpoint", "model", "provider", "status"]
        )
        self.latency = histogram(
            "hybridgate_request_latency_seconds",
            "End-to-end request latency",
            ["endpoint", "model"],
            _LATENCY_BUCKETS,
        )
        self.ttft = histogram(
            "hybridgate_ttft_seconds", "Time to first streamed token", ["model"], _LATENCY_BUCKETS
        )
        self.tokens = counter("hybridgate_tokens_total", "Tokens", ["model", "provider", "kind"])
        self.cost = counter("hybridgate_cost_usd_total", "Upstream cost in USD", ["model", "provider"])
        self.errors = counter("hybridgate_errors_total", "Errors returned to clients", ["type", "provider"])
        self.attempts = counter(
            "hybridgate_upstream_attempts_total", "Upstream attempts", ["deployment", "provider", "outcome"]
        )
        self.breaker_open = Guarded(
            Gauge(
                "hybridgate_breaker_open",
                "1 when the deployment's circuit breaker is open",
                ["deployment"],
                registry=r,
            ),
            ["deployment"],
            self.names,
        )
        # Routing: the mix each policy produces, what a decision costs in this process (the pure
        # `decide()` call, no store I/O: the decision overhead as live traffic sees it), and
        # what cascades did with their first answers.
        self.decisions = counter(
            "hybridgate_route_decisions_total", "Policy decisions by first choice", ["policy", "model"]
        )
        self.decision_time = histogram(
            "hybridgate_decision_seconds",
            "Time of one routing decision (decide(), no I/O)",
            ["policy"],
            _DECISION_BUCKETS,
        )
        self.escalations = counter(
            "hybridgate_escalations_total", "Cascade outcomes", ["policy", "score", "outcome"]
        )
        self.log_queue = Gauge("hybridgate_log_queue_rows", "Log rows waiting to be written", registry=r)
        self.log_spooled = Gauge("hybridgate_log_spooled_rows", "Log rows in the disk spool", registry=r)
        self.db_up = Gauge("hybridgate_db_up", "1 when the log database answers", registry=r)
        # Counts the request log keeps itself (`LogSink.stats()`): exported as counters at their value.
        self.log_totals = Totals(r, {
            "dropped": ("hybridgate_log_dropped_rows", "Log rows lost: neither the database nor the spool took them"),
            "rejected": ("hybridgate_log_rejected_rows", "Log rows the database refused (kept in the spool's rejected file)"),
            "write_errors": ("hybridgate_log_write_errors", "Failed writes to the log database (rows went to the spool)"),
        })

    def set_names(self, names: LabelNames) -> None:
        """Which names are known (the app factory calls this once its catalog and registry exist)."""
        self.names.models, self.names.policies = names.models, names.policies
        self.names.deployments, self.names.providers = names.deployments, names.providers

    def render(self) -> bytes:
        return generate_latest(self.registry)
