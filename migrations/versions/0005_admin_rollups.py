"""Rollups for the admin dashboards, breaker transitions, and request-log filter indexes.

Hourly and daily aggregates of requests (with feedback), attempts and latency histograms, kept
current by triggers on the log tables (requestlog/rollups.py), and filled once from the rows
already logged (Postgres). ``breaker_events`` records circuit breaker transitions. The request-log
page filters by key, model, policy and status over a time range, newest first: each filter gets a
``(column, created_at)`` index.

Revision ID: 0005_admin_rollups
Revises: 0004_spend_indexes
Create Date: 2026-12-06 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from requestlog import rollups, tables

revision: str = "0005_admin_rollups"
down_revision: str | Sequence[str] | None = "0004_spend_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLLUPS = (
    "rollup_requests_hour",
    "rollup_requests_day",
    "rollup_attempts_hour",
    "rollup_attempts_day",
    "rollup_latency_hour",
    "rollup_latency_day",
    "breaker_events",
)
_INDEXES = (
    ("ix_requests_api_key_id_created_at", ["api_key_id", "created_at"]),
    ("ix_requests_served_model_created_at", ["served_model", "created_at"]),
    ("ix_requests_policy_created_at", ["policy", "created_at"]),
    ("ix_requests_status_created_at", ["status", "created_at"]),
)


def upgrade() -> None:
    bind = op.get_bind()
    for name in _ROLLUPS:
        tables.metadata.tables[name].create(bind)
    for name, cols in _INDEXES:
        op.create_index(name, "requests", cols)
    dialect = bind.dialect.name
    # counting a request nothing served under the model asked for, as this revision did (0011 moves it)
    unserved: rollups.UnservedAs = "requested"
    for stmt in rollups.backfill_sql(dialect, unserved) + rollups.create_triggers_sql(dialect, unserved):
        op.execute(sa.text(stmt))


def downgrade() -> None:
    bind = op.get_bind()
    for stmt in rollups.drop_triggers_sql(bind.dialect.name):
        op.execute(sa.text(stmt))
    for name, _ in _INDEXES:
        op.drop_index(name, "requests")
    for name in reversed(_ROLLUPS):
        tables.metadata.tables[name].drop(bind)
