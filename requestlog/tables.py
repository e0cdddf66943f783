"""Schema of the request log and of the gateway's small control tables (SQLAlchemy Core).

This module is the single source of truth that Alembic autogenerate compares against; the
migrations in ``migrations/versions`` are hand-reviewed snapshots of it. Everything here must
work on PostgreSQL (production) and SQLite (embedded default), hence:

* JSON columns use :data:`JSON_TYPE` (``JSONB`` on Postgres, ``JSON`` text elsewhere), with
  Python ``None`` stored as SQL ``NULL`` rather than the JSON literal ``null``.
* Timestamps use :class:`UtcDateTime`: always stored in UTC and always returned timezone-aware,
  because SQLite has no timezone-aware type and would otherwise hand back naive datetimes.
* Identifiers and labels are unbounded strings: a too-long value must never make a log row
  unwritable (a rejected row would block the spool).
* ``attempts.request_id`` deliberately has no foreign key: batches insert requests and attempts
  independently, in either order, and replays may interleave.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint names, so migrations can refer to them on every backend."""

JSON_TYPE = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    Naive datetimes written by callers are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite stores the text form; drop the offset so values sort lexically in UTC.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _str(name: str, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(), **kw)


requests = sa.Table(
    "requests",
    metadata,
    _str("id", primary_key=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    _str("endpoint", nullable=False),
    # who
    _str("api_key_id"),
    _str("user"),
    _str("team"),
    # what was asked and who answered
    _str("requested_model"),
    _str("served_model"),
    _str("provider"),
    _str("deployment"),
    # why it went there (router training reads these)
    _str("policy"),
    sa.Column("policy_version", sa.Integer()),
    sa.Column("route_reason", sa.Text()),
    _str("chosen_model"),  # the router's first choice: NULL on rows logged before it was recorded
    _str("chosen_deployment"),
    sa.Column("propensity", sa.Float()),  # of choosing ``chosen_model``
    sa.Column("bandit", JSON_TYPE),  # {"name", "arm", "context"} when a bandit chose: feedback teaches it
    # outcome
    _str("status", nullable=False, server_default="ok"),
    sa.Column("http_status", sa.Integer(), nullable=False, server_default=sa.text("200")),
    _str("error_type"),
    sa.Column("error_message", sa.Text()),
    sa.Column("prompt_tokens", sa.Integer()),
    sa.Column("completion_tokens", sa.Integer()),
    sa.Column("cost_usd", sa.Float()),
    sa.Column("latency_ms", sa.Float()),
    sa.Column("ttft_ms", sa.Float()),
    sa.Column("streamed", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("attempts_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
    # content (optional, per config)
    _str("prompt_hash"),
    sa.Column("request_body", sa.Text()),
    sa.Column("response_body", sa.Text()),
    sa.Column("prompt_text", sa.Text()),
    sa.Column("metadata", JSON_TYPE),
    sa.Index(None, "created_at"),
    sa.Index(None, "api_key_id"),
    sa.Index(None, "served_model"),
    sa.Index(None, "requested_model"),
    sa.Index(None, "user", "created_at"),  # budget spend sums (requestlog/spend.py)
    sa.Index(None, "team", "created_at"),
    # the admin request-log page: each filter over a time range, newest first
    sa.Index("ix_requests_api_key_id_created_at", "api_key_id", "created_at"),
    sa.Index("ix_requests_served_model_created_at", "served_model", "created_at"),
    sa.Index("ix_requests_policy_created_at", "policy", "created_at"),
    sa.Index("ix_requests_status_created_at", "status", "created_at"),
)
"""One row per client request (see :class:`requestlog.rows.RequestRow`)."""

attempts = sa.Table(
    "attempts",
    metadata,
    _str("id", primary_key=True),
    _str("request_id", nullable=False),  # no FK on purpose: see module docstring
    sa.Column("attempt_no", sa.Integer(), nullable=False),
    _str("deployment", nullable=False),
    _str("provider", nullable=False),
    _str("upstream_model", nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("latency_ms", sa.Float()),
    sa.Column("ttft_ms", sa.Float()),
    _str("status", nullable=False, server_default="ok"),
    sa.Column("http_status", sa.Integer()),
    _str("error_type"),
    sa.Column("error_message", sa.Text()),
    sa.Column("prompt_tokens", sa.Integer()),
    sa.Column("completion_tokens", sa.Integer()),
    sa.Column("cost_usd", sa.Float()),
    sa.Index(None, "request_id"),
    sa.Index(None, "started_at"),
)
"""One row per upstream try (see :class:`requestlog.rows.AttemptRow`)."""

feedback = sa.Table(
    "feedback",
    metadata,
    _str("id", primary_key=True),
    _str("request_id", nullable=False),
    _str("source", nullable=False),  # who judged: "user", "thumbs", "judge:<model>", ...
    sa.Column("score", sa.Float(), nullable=False),
    sa.Column("comment", sa.Text()),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("score >= 0 AND score <= 1", name="score_range"),
    # one judgement per source and request: re-sent feedback is idempotent
    sa.UniqueConstraint("request_id", "source"),
)
"""Quality signals about a logged request, in [0, 1]."""

api_keys = sa.Table(
    "api_keys",
    metadata,
    _str("id", primary_key=True),
    _str("name", nullable=False),
    _str("key_hash", nullable=False, unique=True),
    _str("key_prefix", nullable=False),  # first characters of the key, for display only
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime()),
    sa.Column("allowed_models", JSON_TYPE),  # list of model names; NULL means all
    sa.Column("budget_usd", sa.Float()),
    _str("budget_period"),  # "day", "month", ...
    sa.Column("rpm_limit", sa.Integer()),
    sa.Column("tpm_limit", sa.Integer()),
    sa.Column("max_concurrency", sa.Integer()),
    _str("user"),
    _str("team"),
    sa.Column("metadata", JSON_TYPE),
    sa.Column("expires_at", UtcDateTime()),  # NULL: never expires
)
"""Client keys (only the hash is stored) with their limits and expiry."""

policies = sa.Table(
    "policies",
    metadata,
    _str("name", primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("spec_yaml", sa.Text(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    _str("created_by"),
    sa.Column("comment", sa.Text()),
)
"""Every version of every routing policy, immutable once written."""

policy_active = sa.Table(
    "policy_active",
    metadata,
    _str("name", primary_key=True),
    sa.Column("version", sa.Integer(), nullable=False),
)
"""Which version of each policy is live (one row per policy name; none while it is retired)."""

policy_retirements = sa.Table(
    "policy_retirements",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    _str("name", nullable=False, index=True),
    sa.Column("version", sa.Integer()),  # the version that was live
    sa.Column("retired_at", UtcDateTime(), nullable=False),
    _str("retired_by"),
)
"""Every retirement of a policy (who, when, which version was live): history that outlives it."""

router_artifacts = sa.Table(
    "router_artifacts",
    metadata,
    _str("id", primary_key=True),
    _str("slot", nullable=False, server_default="scorer:default"),  # scorer:<name> | verifier:<name>
    _str("version", nullable=False),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("manifest", JSON_TYPE),
    sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.false()),
)
"""Trained router artifacts on disk and which one each slot uses (service/artifact_slots.py)."""

bandit_totals = sa.Table(
    "bandit_totals",
    metadata,
    _str("bandit", primary_key=True),
    _str("arm", primary_key=True),
    _str("stat", primary_key=True),
    sa.Column("value", sa.Float(), nullable=False),
)
"""Bandit statistics as additive totals, shared by every gateway process (`state.bandits`)."""

scope_budgets = sa.Table(
    "scope_budgets",
    metadata,
    _str("scope", primary_key=True),  # "user:<name>" or "team:<name>"
    sa.Column("limit_usd", sa.Float(), nullable=False),
    _str("period", nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)
"""User and team spending caps set through the admin API (config-file caps are not stored here)."""


def _rollup_requests(name: str) -> sa.Table:
    """Request totals per time bucket and (key, user, team, policy, model); '' stands for none."""

    def total(col: str, type_: Any = sa.Float()) -> sa.Column[Any]:
        return sa.Column(col, type_, nullable=False, server_default=sa.text("0"))

    return sa.Table(
        name,
        metadata,
        sa.Column("bucket", UtcDateTime(), primary_key=True),
        _str("api_key_id", primary_key=True),
        _str("user", primary_key=True),
        _str("team", primary_key=True),
        _str("policy", primary_key=True),
        _str("model", primary_key=True),
        total("requests", sa.BigInteger()),
        total("errors", sa.BigInteger()),
        total("cost_usd"),
        total("prompt_tokens", sa.BigInteger()),
        total("completion_tokens", sa.BigInteger()),
        total("latency_ms_sum"),
        total("latency_n", sa.BigInteger()),
        total("fb_n", sa.BigInteger()),
        total("fb_sum"),
        total("fb_sumsq"),
    )


def _rollup_attempts(name: str) -> sa.Table:
    """Upstream tries per time bucket, deployment, kind (first/retry/fallback/escalation) and status."""
    return sa.Table(
        name,
        metadata,
        sa.Column("bucket", UtcDateTime(), primary_key=True),
        _str("deployment", primary_key=True),
        _str("kind", primary_key=True),
        _str("status", primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False, server_default=sa.text("0")),
    )


def _rollup_latency(name: str) -> sa.Table:
    """Log-spaced histograms of successful tries' latency and TTFT per time bucket and deployment."""
    return sa.Table(
        name,
        metadata,
        sa.Column("bucket", UtcDateTime(), primary_key=True),
        _str("deployment", primary_key=True),
        _str("metric", primary_key=True),
        sa.Column("bin", sa.Integer(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )


# Kept current by database triggers as rows are inserted (requestlog/rollups.py); the admin
# dashboards read these, and the raw tables only for the partial hours at either end of a range.
rollup_requests_hour = _rollup_requests("rollup_requests_hour")
rollup_requests_day = _rollup_requests("rollup_requests_day")
rollup_attempts_hour = _rollup_attempts("rollup_attempts_hour")
rollup_attempts_day = _rollup_attempts("rollup_attempts_day")
rollup_latency_hour = _rollup_latency("rollup_latency_hour")
rollup_latency_day = _rollup_latency("rollup_latency_day")

breaker_events = sa.Table(
    "breaker_events",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    _str("deployment", nullable=False),
    _str("state", nullable=False),  # closed | open | half_open
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Index(None, "at"),
)
"""Circuit breaker transitions as each gateway process saw them (for "breaker state over time")."""

stored_responses = sa.Table(
    "stored_responses",
    metadata,
    _str("id", primary_key=True),  # resp_<hex>
    sa.Column("created_at", UtcDateTime(), nullable=False),
    _str("api_key_id"),  # the key that created it; only that key may read, continue or delete it
    _str("model"),
    sa.Column("response", JSON_TYPE, nullable=False),  # the Responses object as returned
    sa.Column("input_items", JSON_TYPE, nullable=False),  # this turn's input items, with ids
    sa.Column("history", JSON_TYPE, nullable=False),  # the conversation so far as chat messages
)
"""Responses kept for `previous_response_id` and GET/DELETE /v1/responses/{id} (gateway/responses_api.py)."""

gateway_instances = sa.Table(
    "gateway_instances",
    metadata,
    _str("id", primary_key=True),  # random per process start
    _str("host", nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("shared_state", sa.Boolean(), nullable=False),  # runs with Redis
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("last_seen", UtcDateTime(), nullable=False),
)
"""One heartbeat row per running gateway process: tells a process it is not alone (state/instances.py)."""

console_revocations = sa.Table(
    "console_revocations",
    metadata,
    _str("sid", primary_key=True),  # the signed-out session's id (alone it opens nothing: the cookie is signed)
    sa.Column("expires_at", UtcDateTime(), nullable=False),  # the session's own end: the row is pointless after it
    sa.Column("revoked_at", UtcDateTime(), nullable=False),
)
"""Console sessions ended by signing out, until they would have expired anyway (state/console_sessions.py)."""
