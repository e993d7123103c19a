"""Tickets in event time: ``opened_at`` is when the trigger happened (plant time, the
window or condition that opened the ticket), ``received_at`` when the aggregator received
it. After an outage the two differ by the length of the backlog.

Existing rows get ``received_at = opened_at``: before this revision ``opened_at`` was the
arrival time, and that is all that is known. Their ``opened_at`` stays as it was.

A downgrade drops ``received_at``; ``opened_at`` keeps the event time.

Revision ID: 0008
Revises: 0007
Create Date: 2027-02-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE (SQLite 3.35 and newer drop a column in place): a batch operation would
# copy and drop ``tickets``, which SQLite refuses while ``ticket_notes`` rows point at it.
def upgrade() -> None:
    op.add_column("tickets", sa.Column("received_at", sa.DateTime(timezone=True),
                                       nullable=True))
    op.execute("UPDATE tickets SET received_at = opened_at")


def downgrade() -> None:
    op.drop_column("tickets", "received_at")
