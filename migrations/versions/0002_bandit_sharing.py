"""Bandit learning shared through the database: the deciding bandit on each request row, and
the additive per-arm totals every gateway process adds to and reads from. User and team budgets
set through the admin API.

Revision ID: 0002_bandit_sharing
Revises: 0001_initial
Create Date: 2026-11-23 12:00:00

Hand-written, like 0001: plain ADD COLUMN / CREATE TABLE, so it runs on PostgreSQL and SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002_bandit_sharing"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("requests", sa.Column("bandit", JSON, nullable=True))
    op.create_table(
        "bandit_totals",
        sa.Column("bandit", sa.String(), nullable=False),
        sa.Column("arm", sa.String(), nullable=False),
        sa.Column("stat", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("bandit", "arm", "stat", name="pk_bandit_totals"),
    )
    op.create_table(
        "scope_budgets",
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("limit_usd", sa.Float(), nullable=False),
        sa.Column("period", sa.String(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_scope_budgets"),
    )


def downgrade() -> None:
    op.drop_table("scope_budgets")
    op.drop_table("bandit_totals")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("bandit")
