"""Prometheus metrics, one registry per app (no module-level state, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hybridgate_requests_total", "Client requests", ["endpoint", "model", "provider", "status"], registry=r
        )
        self.latency = Histogram(
            "hybridgate_request_latency_seconds", "End-to-end request latency", ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "hybridgate_ttft_seconds", "Time to first streamed token", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("hybridgate_tokens_total", "Tokens", ["model", "provider", "kind"], registry=r)
        self.cost = Counter("hybridgate_cost_usd_total", "Upstream cost in USD", ["model", "provider"], registry=r)
        self.errors = Counter("hybridgate_errors_total", "Errors returned to clients", ["type", "provider"], registry=r)
        self.attempts = Counter(
            "hybridgate_upstream_attempts_total", "Upstream attempts", ["deployment", "provider", "outcome"], registry=r
        )
        self.breaker_open = Gauge(
            "hybridgate_breaker_open", "1 when the deployment's circuit breaker is open", ["deployment"], registry=r
        )
        # Routing: the mix each policy produces, what a decision costs in this process (the pure
        # `decide()` call, no store I/O: acceptance-style overhead measured on live traffic), and
        # what cascades did with their first answers.
        self.decisions = Counter(
            "hybridgate_route_decisions_total", "Policy decisions by first choice", ["policy", "model"], registry=r
        )
        self.decision_time = Histogram(
            "hybridgate_decision_seconds", "Time of one routing decision (decide(), no I/O)", ["policy"],
            buckets=_DECISION_BUCKETS, registry=r,
        )
        self.escalations = Counter(
            "hybridgate_escalations_total", "Cascade outcomes", ["policy", "score", "outcome"], registry=r
        )
        self.log_queue = Gauge("hybridgate_log_queue_rows", "Log rows waiting to be written", registry=r)
        self.log_spooled = Gauge("hybridgate_log_spooled_rows", "Log rows in the disk spool", registry=r)
        self.db_up = Gauge("hybridgate_db_up", "1 when the log database answers", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
