"""Notifications: the outbox of what to tell webhooks and andons, and the delivery log.

- ``notifications``: one row per ticket change and target, written in the transaction
  that changed the ticket; a worker sends it (``aggregator.notify``);
- ``notification_attempts``: every attempt to send one (and every notification recorded
  but not sent, such as a past incident), with its status and error.

Two new tables, nothing else changes. A downgrade drops them; it refuses while a
notification is still pending (it would never be sent).

Revision ID: 0007
Revises: 0006
Create Date: 2027-02-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('pending', 'sent', 'failed', 'suppressed')"


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("incident", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("announce", sa.Boolean(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.CheckConstraint(STATUSES, name="ck_notifications_status"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notifications_status_due", "notifications",
                    ["status", "next_attempt_at"])
    op.create_index("ix_notifications_ticket_id", "notifications", ["ticket_id"])
    op.create_table(
        "notification_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notification_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["notification_id"], ["notifications.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notification_attempts_ticket_id", "notification_attempts",
                    ["ticket_id"])
    op.create_index("ix_notification_attempts_started_at", "notification_attempts",
                    ["started_at"])


def downgrade() -> None:
    pending = op.get_bind().scalar(
        sa.text("SELECT COUNT(*) FROM notifications WHERE status = 'pending'"))
    if pending:
        raise RuntimeError(f"{pending} notifications are still to be sent, which revision "
                           "0006 cannot keep; let the aggregator send them (or delete them) "
                           "before downgrading")
    op.drop_index("ix_notification_attempts_started_at", table_name="notification_attempts")
    op.drop_index("ix_notification_attempts_ticket_id", table_name="notification_attempts")
    op.drop_table("notification_attempts")
    op.drop_index("ix_notifications_ticket_id", table_name="notifications")
    op.drop_index("ix_notifications_status_due", table_name="notifications")
    op.drop_table("notifications")
