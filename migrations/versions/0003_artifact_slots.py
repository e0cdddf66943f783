"""Router artifacts per slot: ``scorer:<name>`` (classifier) or ``verifier:<name>`` (answer verifier),
so each slot has its own active row and every gateway process loads it (service/artifact_slots.py).

Revision ID: 0003_artifact_slots
Revises: 0002_bandit_sharing
Create Date: 2026-11-23 17:30:00

Hand-written, like 0001/0002: a plain ADD COLUMN with a server default, so it runs on PostgreSQL and
SQLite; rows from before are the default classifier's.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_artifact_slots"
down_revision: str | Sequence[str] | None = "0002_bandit_sharing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("router_artifacts", sa.Column("slot", sa.String(), nullable=False, server_default="scorer:default"))


def downgrade() -> None:
    with op.batch_alter_table("router_artifacts") as batch:
        batch.drop_column("slot")
