"""Asset conditions, ticket kinds by cause, and the agents' false-alarm budgets.

- ``asset_conditions``: the drift and data-quality conditions agents report, from start to
  end, at most one active per (site, agent, asset, monitor, detector).
- ``tickets.kind`` may also be ``sensor`` and ``inspect``; ``tickets.outcome`` may be
  ``superseded`` (closed by the aggregator when later evidence showed another kind).
- ``agents.alarm_budget_per_day``: each agent's budget, from its health reports.

No existing row changes. A downgrade refuses while tickets of the new kinds or outcome
exist: dropping them would lose a technician's work.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = 128
ACTIVE = sa.text("ended_at IS NULL")
KINDS_2 = "kind IN ('maintenance', 'retraining')"
KINDS_3 = "kind IN ('maintenance', 'sensor', 'inspect', 'retraining')"
OUTCOMES_2 = "outcome IS NULL OR outcome IN ('confirmed_failure', 'no_fault_found', 'other')"
OUTCOMES_3 = ("outcome IS NULL OR outcome IN ('confirmed_failure', 'no_fault_found', 'other', "
              "'superseded')")


def _checks(kinds: str, outcomes: str) -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_constraint("ck_tickets_kind", type_="check")
        batch.drop_constraint("ck_tickets_outcome", type_="check")
        batch.create_check_constraint("ck_tickets_kind", kinds)
        batch.create_check_constraint("ck_tickets_outcome", outcomes)


def upgrade() -> None:
    op.create_table(
        "asset_conditions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=NAME), nullable=False),
        sa.Column("line", sa.String(length=NAME), nullable=False),
        sa.Column("agent", sa.String(length=NAME), nullable=False),
        sa.Column("asset", sa.String(length=NAME), nullable=False),
        sa.Column("model_name", sa.String(length=NAME), nullable=False),
        sa.Column("model_version", sa.String(length=NAME), nullable=False),
        sa.Column("monitor", sa.String(length=NAME), nullable=False),
        sa.Column("detector", sa.String(length=32), nullable=False),
        sa.Column("signal", sa.String(length=16), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reference", sa.JSON(), nullable=True),
        sa.Column("current", sa.Float(), nullable=True),
        sa.Column("statistic", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_conditions_site_asset", "asset_conditions", ["site", "asset"])
    op.create_index("uq_conditions_active", "asset_conditions",
                    ["site", "agent", "asset", "monitor", "detector"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("alarm_budget_per_day", sa.Float(), nullable=True))
    _checks(KINDS_3, OUTCOMES_3)


def downgrade() -> None:
    newer = op.get_bind().scalar(sa.text(
        "SELECT COUNT(*) FROM tickets WHERE kind IN ('sensor', 'inspect') "
        "OR outcome = 'superseded'"))
    if newer:
        raise RuntimeError(f"{newer} tickets are of a kind or outcome revision 0002 cannot "
                           "hold; resolve or export them before downgrading")
    _checks(KINDS_2, OUTCOMES_2)
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("alarm_budget_per_day")
    op.drop_index("uq_conditions_active", table_name="asset_conditions")
    op.drop_index("ix_conditions_site_asset", table_name="asset_conditions")
    op.drop_table("asset_conditions")
