"""The two kinds of log rows, as plain values.

The gateway fills these on the request path (cheap: no I/O) and hands them to the sink;
the sink owns how and when they reach the database. Field names equal column names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class AttemptRow:
    """One try against one upstream deployment."""

    id: str  # unique per attempt: f"{request_id}-{n}"
    request_id: str
    attempt_no: int  # 0-based order within the request
    deployment: str  # deployment name from config
    provider: str  # e.g. "openai", "anthropic", "local", "openai_compatible"
    upstream_model: str
    started_at: datetime
    latency_ms: float | None = None
    ttft_ms: float | None = None
    status: str = "ok"  # "ok" | "error" | "cancelled"
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RequestRow:
    """One client request, success or failure, streamed or not."""

    id: str  # request id; also x-request-id and the completion id's suffix
    created_at: datetime
    endpoint: str  # "chat" | "completion" | "embedding"
    api_key_id: str | None = None
    user: str | None = None
    team: str | None = None
    requested_model: str | None = None
    served_model: str | None = None  # the model name clients see for the deployment that answered
    provider: str | None = None
    deployment: str | None = None
    policy: str | None = None
    policy_version: int | None = None
    route_reason: str | None = None
    # The router's first choice (a policy's primary candidate, or a model's first deployment): the
    # action off-policy evaluation credits, and the one ``propensity`` is the probability of. It differs
    # from ``served_model``/``deployment`` when a fallback (or a cascade's escalation) answered.
    chosen_model: str | None = None
    chosen_deployment: str | None = None
    propensity: float | None = None  # the probability the policy had of choosing ``chosen_model``
    bandit: dict[str, Any] | None = None  # {"name", "arm", "context"}: lets any process learn from feedback
    status: str = "ok"  # "ok" | "error" | "cancelled"
    http_status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    streamed: bool = False
    attempts_count: int = 0
    prompt_hash: str | None = None
    request_body: str | None = None  # per config: full JSON text, or None
    response_body: str | None = None
    prompt_text: str | None = None  # the last user message text (full mode only); used for router training
    metadata: dict[str, Any] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
