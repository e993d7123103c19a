"""The ticket lifecycle as the source of truth: assignees, notes, failure times, the full
outcome vocabulary, and failures reported without a ticket.

- ``tickets.assignee``: who a ticket is assigned to (a person's name), or NULL;
- ``tickets.failed_at``: when the machine failed, for a confirmed failure whose time is
  known (model health measures the warning time up to it);
- ``tickets.outcome`` may also be ``preventive_action`` and ``sensor_fault``
  (``aggregator.outcomes``);
- ``ticket_notes``: notes people add to a ticket, one row each;
- ``failures``: failures reported without a ticket that warned of them (missed
  detections);
- indexes on ``tickets.opened_at`` and ``tickets.resolved_at`` for the lists' time filters
  and the model health period.

No existing row changes. A downgrade refuses while a ticket has an assignee, a failure
time or one of the new outcomes, or while a note or a reported failure exists: the older
schema cannot hold them, and they are people's work (export them first).

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = 128
OUTCOMES_5 = ("outcome IS NULL OR outcome IN ('confirmed_failure', 'no_fault_found', 'other', "
              "'superseded')")
OUTCOMES_6 = ("outcome IS NULL OR outcome IN ('confirmed_failure', 'preventive_action', "
              "'no_fault_found', 'sensor_fault', 'other', 'superseded')")


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("assignee", sa.String(length=NAME), nullable=True))
        batch.drop_constraint("ck_tickets_outcome", type_="check")
        batch.create_check_constraint("ck_tickets_outcome", OUTCOMES_6)
    op.create_index("ix_tickets_opened_at", "tickets", ["opened_at"])
    op.create_index("ix_tickets_resolved_at", "tickets", ["resolved_at"])
    op.create_table(
        "ticket_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(length=NAME), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ticket_notes_ticket_id", "ticket_notes", ["ticket_id"])
    op.create_table(
        "failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=NAME), nullable=False),
        sa.Column("line", sa.String(length=NAME), nullable=False),
        sa.Column("asset", sa.String(length=NAME), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(length=NAME), nullable=True),
        sa.Column("model_version", sa.String(length=NAME), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reported_by", sa.String(length=NAME), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_failures_at", "failures", ["at"])
    op.create_index("ix_failures_site_asset", "failures", ["site", "asset"])


def downgrade() -> None:
    bind = op.get_bind()
    held = {
        "tickets with an assignee, a failure time or an outcome revision 0005 cannot hold":
            "SELECT COUNT(*) FROM tickets WHERE assignee IS NOT NULL OR failed_at IS NOT NULL "
            "OR outcome IN ('preventive_action', 'sensor_fault')",
        "ticket notes": "SELECT COUNT(*) FROM ticket_notes",
        "reported failures": "SELECT COUNT(*) FROM failures",
    }
    found = [f"{n} {what}" for what, q in held.items() if (n := bind.scalar(sa.text(q)))]
    if found:
        raise RuntimeError(f"the database holds {', '.join(found)}; export (or delete) them "
                           "before downgrading")
    op.drop_index("ix_failures_site_asset", table_name="failures")
    op.drop_index("ix_failures_at", table_name="failures")
    op.drop_table("failures")
    op.drop_index("ix_ticket_notes_ticket_id", table_name="ticket_notes")
    op.drop_table("ticket_notes")
    op.drop_index("ix_tickets_resolved_at", table_name="tickets")
    op.drop_index("ix_tickets_opened_at", table_name="tickets")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_constraint("ck_tickets_outcome", type_="check")
        batch.create_check_constraint("ck_tickets_outcome", OUTCOMES_5)
        batch.drop_column("assignee")
        batch.drop_column("failed_at")
