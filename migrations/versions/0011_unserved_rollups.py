"""Rollups count a request nothing served under the model ``''`` ("none served").

The rollup triggers counted a request that no deployment answered (every attempt failed, or none was
made) under the model name the client asked for, often a policy's name: the dashboards showed it as
a model that had served traffic ("my-policy -> my-policy"), and per-model figures disagreed with the
request log, which filters by the model that answered. The triggers now count such a request under
``''`` (`requestlog.rollups.UNSERVED`), and the hour and day rollups of the requests still logged are
moved there. Requests already pruned by retention cannot be told apart in the rollups and stay where
they were counted. The downgrade moves the logged ones back and restores the earlier triggers.

Revision ID: 0011_unserved_rollups
Revises: 0010_chosen_arm
Create Date: 2026-12-09 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from requestlog import rollups

revision: str = "0011_unserved_rollups"
down_revision: str | Sequence[str] | None = "0010_chosen_arm"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _relabel(to: rollups.UnservedAs) -> None:
    dialect = op.get_bind().dialect.name
    statements = (
        rollups.drop_triggers_sql(dialect)
        + rollups.relabel_unserved_sql(dialect, to)
        + rollups.create_triggers_sql(dialect, unserved=to)
    )
    for stmt in statements:
        op.execute(sa.text(stmt))


def upgrade() -> None:
    _relabel("none")


def downgrade() -> None:
    _relabel("requested")
