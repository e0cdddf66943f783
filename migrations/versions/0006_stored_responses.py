"""Stored responses of the Responses API: ``previous_response_id`` and GET/DELETE /v1/responses/{id}
read them, so a conversation continues across gateway processes and restarts.

Revision ID: 0006_stored_responses
Revises: 0004_spend_indexes
Create Date: 2026-12-06 05:40:00

Hand-written like the others: one plain table, the same on PostgreSQL (JSONB) and SQLite (JSON text).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006_stored_responses"
down_revision: str | Sequence[str] | None = "0005_admin_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A snapshot, not the live table definitions (which will move on).
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("api_key_id", sa.String()),
        sa.Column("model", sa.String()),
        sa.Column("response", JSON, nullable=False),
        sa.Column("input_items", JSON, nullable=False),
        sa.Column("history", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stored_responses"),
    )


def downgrade() -> None:
    op.drop_table("stored_responses")
