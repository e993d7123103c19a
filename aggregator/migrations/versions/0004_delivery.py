"""Delivery tracking: which of each agent's messages are stored, and completeness by hour.

- ``agent_delivery``: one row per agent, its seq ledger (stored through, gaps, received
  ranges) and cumulative counters (gaps, reorders, duplicates, resets, resend requests,
  messages and windows the agent reported undeliverable).
- ``delivery_hours``: windows received and reported undeliverable, per agent and hour.

Agents already known start with ``stored_through`` at their ``last_seq``: what an earlier
release stored cannot be told apart any more, and asking every agent again for all it ever
sent would only bring back "gone" answers for messages that were most likely stored.
A downgrade drops both tables (the figures are derived; nothing a person wrote is lost).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = 128
COUNTERS = (
    "outstanding", "messages", "windows", "duplicates", "gaps_opened", "reorders", "resets",
    "given_up", "dropped_messages", "dropped_windows", "gone_messages", "gone_windows",
    "resend_requests",
)


def upgrade() -> None:
    op.create_table(
        "agent_delivery",
        sa.Column("agent_id", sa.String(length=NAME), nullable=False),
        sa.Column("stored_through", sa.BigInteger(), nullable=False),
        sa.Column("top_seq", sa.BigInteger(), nullable=False),
        sa.Column("highest_seq", sa.BigInteger(), nullable=False),
        sa.Column("latest_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ranges", sa.JSON(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTERS),
        sa.Column("resend_id", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("agent_id"),
    )
    op.create_table(
        "delivery_hours",
        sa.Column("agent_id", sa.String(length=NAME), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("windows_received", sa.BigInteger(), nullable=False),
        sa.Column("windows_undeliverable", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "hour"),
    )
    op.create_index("ix_delivery_hours_hour", "delivery_hours", ["hour"])
    op.execute(
        "INSERT INTO agent_delivery (agent_id, stored_through, top_seq, highest_seq, ranges, "
        f"{', '.join(COUNTERS)}) "
        "SELECT agent_id, last_seq, last_seq, last_seq, "
        "'{\"received\": [], \"gaps\": []}', "
        f"{', '.join('0' for _ in COUNTERS)} "
        "FROM agents WHERE last_seq IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_hours_hour", table_name="delivery_hours")
    op.drop_table("delivery_hours")
    op.drop_table("agent_delivery")
