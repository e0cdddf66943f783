"""API key expiry: ``api_keys.expires_at`` (UTC; NULL, every existing key's value, never expires).

A downgrade forgets every expiry, so keys that were to expire no longer do: revoke those first.

Revision ID: 0008_key_expiry
Revises: 0007_hardening
Create Date: 2026-12-07 01:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_key_expiry"
down_revision: str | Sequence[str] | None = "0007_hardening"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table: batch mode does that, in place on Postgres
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
