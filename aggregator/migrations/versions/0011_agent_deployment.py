"""What each agent runs, from its model assignments: the live and shadow model versions
and the outcome of its latest assignment.

- ``agents``: ``shadow_model_name`` / ``shadow_model_version`` (the model run beside the
  live one, None without), ``deployment_assignment`` / ``deployment_state`` (applied or
  refused) / ``deployment_reason`` / ``deployment_at`` from the newest ``Health.deployment``
  it reported. The live model stays in ``model_name`` / ``model_version``.

Nullable columns only, nothing to backfill: an agent's next health report fills them. A
downgrade drops them.

Revision ID: 0011
Revises: 0010
Create Date: 2027-03-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("shadow_model_name", sa.String(length=128)),
    ("shadow_model_version", sa.String(length=128)),
    ("deployment_assignment", sa.String(length=64)),
    ("deployment_state", sa.String(length=16)),
    ("deployment_reason", sa.Text()),
    ("deployment_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    # One batch: SQLite rebuilds the table once (a plain ADD COLUMN each would do too, but
    # batch mode keeps the two dialects on one path).
    with op.batch_alter_table("agents") as batch:
        for name, kind in _COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
