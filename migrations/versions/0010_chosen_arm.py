"""The router's first choice on each request row: ``requests.chosen_model`` and
``requests.chosen_deployment``.

``propensity`` is the probability of the router's first choice, while ``served_model`` and
``deployment`` name whoever answered: after a fallback they differ, and off-policy evaluation
needs the chosen one as the logged action. Rows logged before this revision keep NULL (readers
take the answering model as the chosen one there: exact whenever no fallback answered).

A downgrade forgets every row's first choice.

Revision ID: 0010_chosen_arm
Revises: 0009_policy_retirements
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_chosen_arm"
down_revision: str | Sequence[str] | None = "0009_policy_retirements"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("chosen_model", "chosen_deployment")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("requests", sa.Column(name, sa.String(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN on both databases (SQLite has it since 3.35), not batch mode: batch mode
    # rebuilds the table on SQLite, which the rollup triggers (on requests, and on feedback reading
    # requests) do not survive: the rebuild fails with "error in trigger ... no such table".
    for name in reversed(COLUMNS):
        op.drop_column("requests", name)
