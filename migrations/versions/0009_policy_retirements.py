"""Policy retirements: ``policy_retirements``, one row per retirement of a policy (who, when, and the
version that was live), kept as history after the policy is written again.

Retiring a policy deletes its ``policy_active`` row in the same transaction; a downgrade keeps
retired policies retired (no active row) but forgets who retired them and when.

Revision ID: 0009_policy_retirements
Revises: 0008_key_expiry
Create Date: 2026-12-07 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_policy_retirements"
down_revision: str | Sequence[str] | None = "0008_key_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_retirements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.Integer()),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_by", sa.String()),
        sa.PrimaryKeyConstraint("id", name="pk_policy_retirements"),
    )
    op.create_index("ix_policy_retirements_name", "policy_retirements", ["name"])


def downgrade() -> None:
    op.drop_index("ix_policy_retirements_name", table_name="policy_retirements")
    op.drop_table("policy_retirements")
