"""Console sign-out ends the session everywhere: ``console_revocations``, one row per signed-out session
until the time it would have expired anyway, which every gateway process reads on its sync interval.

Revision ID: 0012_console_revocations
Revises: 0011_unserved_rollups
Create Date: 2026-12-07 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_console_revocations"
down_revision: str | Sequence[str] | None = "0011_unserved_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_revocations",
        sa.Column("sid", sa.String(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid", name="pk_console_revocations"),
    )


def downgrade() -> None:
    op.drop_table("console_revocations")
