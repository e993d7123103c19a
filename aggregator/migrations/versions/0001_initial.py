"""The schema of the releases before migrations: tickets one-open per (asset, kind).

What ``Base.metadata.create_all`` made up to commit a232ddb^, frozen here as plain
SQLAlchemy types and literals (never the models, which keep changing). A database those
releases created has no ``alembic_version`` table; ``aggregator.migrations`` recognises its
shape and stamps it with this revision before upgrading.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = 128  # contract.wire's longest name, as it was


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("agent_id", sa.String(NAME), nullable=False),
        sa.Column("site", sa.String(NAME), nullable=False),
        sa.Column("line", sa.String(NAME), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("model_name", sa.String(NAME), nullable=True),
        sa.Column("model_version", sa.String(NAME), nullable=True),
        sa.Column("predictions_count", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("state IN ('online', 'offline', 'unknown')", name="ck_agents_state"),
        sa.PrimaryKeyConstraint("agent_id"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_len", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_quarantine_reason", "quarantine", ["reason"])
    op.create_index("ix_quarantine_received_at", "quarantine", ["received_at"])
    op.create_table(
        "rule_state",
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("asset", sa.String(NAME), nullable=False),
        sa.Column("windows", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rule", "asset"),
    )
    op.create_table(
        "seen_messages",
        sa.Column("msg_id", sa.String(36), nullable=False),
        sa.Column("agent", sa.String(NAME), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("msg_id"),
    )
    op.create_index("ix_seen_messages_received_at", "seen_messages", ["received_at"])
    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("asset", sa.String(NAME), nullable=False),
        sa.Column("agent", sa.String(NAME), nullable=False),
        sa.Column("site", sa.String(NAME), nullable=False),
        sa.Column("line", sa.String(NAME), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("model_name", sa.String(NAME), nullable=False),
        sa.Column("model_version", sa.String(NAME), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("escalations", sa.Integer(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.CheckConstraint("kind IN ('maintenance', 'retraining')", name="ck_tickets_kind"),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved')", name="ck_tickets_status"
        ),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('confirmed_failure', 'no_fault_found', 'other')",
            name="ck_tickets_outcome",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "uq_tickets_open_asset_kind",
        "tickets",
        ["asset", "kind"],
        unique=True,
        sqlite_where=sa.text("status != 'resolved'"),
        postgresql_where=sa.text("status != 'resolved'"),
    )
    op.create_index("ix_tickets_status", "tickets", ["status"])


def downgrade() -> None:
    for table in ("tickets", "seen_messages", "rule_state", "quarantine", "agents"):
        op.drop_table(table)
