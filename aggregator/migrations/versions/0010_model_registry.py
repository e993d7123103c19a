"""The model registry: signed model versions, their assignments, what each agent was told.

- ``model_versions``: name, version, card (JSON), the artifact's sha256, size, signature
  and bytes (so every replica sharing the database serves it), who uploaded it and when,
  and the retraining ticket it answers (nullable).
- ``model_assignments``: a version at a stage (shadow, canary, live) on agents, a site or
  a site's line, its canary share, its state (active, promoted, rolled_back, superseded),
  who made it and when, when and why it ended, the gate's figures at each decision.
- ``published_models``: per agent, the assignment message last published (retained), so a
  restart republishes nothing that did not change.

New tables only; a downgrade drops them (and every uploaded version with them).

Revision ID: 0010
Revises: 0009
Create Date: 2027-03-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("card", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("signature", sa.String(length=256), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=128), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answers_ticket", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["answers_ticket"], ["tickets.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_model_versions_name"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_table(
        "model_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("target_agents", sa.JSON(), nullable=True),
        sa.Column("target_site", sa.String(length=128), nullable=True),
        sa.Column("target_line", sa.String(length=128), nullable=True),
        sa.Column("share", sa.Float(), nullable=True),
        sa.Column("baseline_version", sa.String(length=128), nullable=True),
        sa.Column("previous_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.CheckConstraint("stage IN ('shadow', 'canary', 'live')",
                           name="ck_model_assignments_stage"),
        sa.CheckConstraint("state IN ('active', 'promoted', 'rolled_back', 'superseded')",
                           name="ck_model_assignments_state"),
        sa.ForeignKeyConstraint(["previous_id"], ["model_assignments.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_assignments_state", "model_assignments", ["state"])
    op.create_table(
        "published_models",
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("desired", sa.JSON(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("agent_id"),
    )


def downgrade() -> None:
    op.drop_table("published_models")
    op.drop_index("ix_model_assignments_state", table_name="model_assignments")
    op.drop_table("model_assignments")
    op.drop_table("model_versions")
