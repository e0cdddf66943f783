"""Initial schema: request log, feedback, API keys, policies, router artifacts.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01 00:00:00

Hand-written snapshot of ``requestlog/tables.py`` at this revision (a migration must not import
the live table definitions, which will move on). Plain CREATE TABLE / CREATE INDEX only, so it
runs unchanged on PostgreSQL and SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, nullable: bool = True, **kw) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable, **kw)


def upgrade() -> None:
    op.create_table(
        "requests",
        _str("id", nullable=False),
        _ts("created_at", nullable=False),
        _str("endpoint", nullable=False),
        _str("api_key_id"),
        _str("user"),
        _str("team"),
        _str("requested_model"),
        _str("served_model"),
        _str("provider"),
        _str("deployment"),
        _str("policy"),
        sa.Column("policy_version", sa.Integer()),
        sa.Column("route_reason", sa.Text()),
        sa.Column("propensity", sa.Float()),
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
        _str("prompt_hash"),
        sa.Column("request_body", sa.Text()),
        sa.Column("response_body", sa.Text()),
        sa.Column("prompt_text", sa.Text()),
        sa.Column("metadata", JSON),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
    )
    for col in ("created_at", "api_key_id", "served_model", "requested_model"):
        op.create_index(f"ix_requests_{col}", "requests", [col])

    op.create_table(
        "attempts",
        _str("id", nullable=False),
        _str("request_id", nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        _str("deployment", nullable=False),
        _str("provider", nullable=False),
        _str("upstream_model", nullable=False),
        _ts("started_at", nullable=False),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("ttft_ms", sa.Float()),
        _str("status", nullable=False, server_default="ok"),
        sa.Column("http_status", sa.Integer()),
        _str("error_type"),
        sa.Column("error_message", sa.Text()),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("cost_usd", sa.Float()),
        sa.PrimaryKeyConstraint("id", name="pk_attempts"),
    )
    op.create_index("ix_attempts_request_id", "attempts", ["request_id"])
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])

    op.create_table(
        "feedback",
        _str("id", nullable=False),
        _str("request_id", nullable=False),
        _str("source", nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("comment", sa.Text()),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("request_id", "source", name="uq_feedback_request_id_source"),
        sa.CheckConstraint("score >= 0 AND score <= 1", name="ck_feedback_score_range"),
    )

    op.create_table(
        "api_keys",
        _str("id", nullable=False),
        _str("name", nullable=False),
        _str("key_hash", nullable=False),
        _str("key_prefix", nullable=False),
        _ts("created_at", nullable=False),
        _ts("revoked_at"),
        sa.Column("allowed_models", JSON),
        sa.Column("budget_usd", sa.Float()),
        _str("budget_period"),
        sa.Column("rpm_limit", sa.Integer()),
        sa.Column("tpm_limit", sa.Integer()),
        sa.Column("max_concurrency", sa.Integer()),
        _str("user"),
        _str("team"),
        sa.Column("metadata", JSON),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )

    op.create_table(
        "policies",
        _str("name", nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec_yaml", sa.Text(), nullable=False),
        _ts("created_at", nullable=False),
        _str("created_by"),
        sa.Column("comment", sa.Text()),
        sa.PrimaryKeyConstraint("name", "version", name="pk_policies"),
    )

    op.create_table(
        "policy_active",
        _str("name", nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_policy_active"),
    )

    op.create_table(
        "router_artifacts",
        _str("id", nullable=False),
        _str("version", nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        _ts("created_at", nullable=False),
        sa.Column("manifest", JSON),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name="pk_router_artifacts"),
    )


def downgrade() -> None:
    for table in (
        "router_artifacts",
        "policy_active",
        "policies",
        "api_keys",
        "feedback",
        "attempts",
        "requests",
    ):
        op.drop_table(table)
