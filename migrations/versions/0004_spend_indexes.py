"""Indexes for budget spend sums: ``(user, created_at)`` and ``(team, created_at)`` on requests.

Budget accounts open from, and catch up with, ``SUM(cost_usd)`` of a user's or team's requests in
the current period (requestlog/spend.py). Keys already had ``api_key_id``; without these, a user or
team sum scans every request of the period.

Revision ID: 0004_spend_indexes
Revises: 0003_artifact_slots
Create Date: 2026-11-23 22:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_spend_indexes"
down_revision: str | Sequence[str] | None = "0003_artifact_slots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_requests_user_created_at", "requests", ["user", "created_at"])
    op.create_index("ix_requests_team_created_at", "requests", ["team", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_team_created_at", "requests")
    op.drop_index("ix_requests_user_created_at", "requests")
