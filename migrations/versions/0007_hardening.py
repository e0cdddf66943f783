"""Gateway heartbeats: ``gateway_instances``, one row per running gateway process.

A process that runs without Redis keeps its limits per process; the heartbeat rows let it see a
second gateway on the same database and warn that its limits are not shared.

Revision ID: 0007_hardening
Revises: 0006_stored_responses
Create Date: 2026-12-06 05:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_hardening"
down_revision: str | Sequence[str] | None = "0006_stored_responses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_instances",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("shared_state", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_instances")),
    )


def downgrade() -> None:
    op.drop_table("gateway_instances")
