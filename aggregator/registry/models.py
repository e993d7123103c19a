"""The registry's SQL tables (revision 0010): model versions, assignments, and what was
last published to each agent.

``model_versions.artifact`` holds the signed bytes themselves (``LargeBinary``): replicas
that share PostgreSQL all serve every version, with no shared disk. ``published_models``
is the per-agent desired state as last published: a restart compares against it and
publishes only what changed, and an agent coming back online gets the same message (same
``id``) again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from aggregator.db import NAME_LENGTH, Base, UTCDateTime

__all__ = [
    "ASSIGNMENT_STATES",
    "STAGES",
    "ModelAssignment",
    "ModelVersion",
    "PublishedModel",
]

STAGES = ("shadow", "canary", "live")
ASSIGNMENT_STATES = ("active", "promoted", "rolled_back", "superseded")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ModelVersion(Base):
    """One uploaded, signed model version; never changed once stored."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version: Mapped[str] = mapped_column(String(NAME_LENGTH))
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(Integer)
    signature: Mapped[str] = mapped_column(String(256))
    # Deferred: listing versions must not read every artifact.
    artifact: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    uploaded_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answers_ticket: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("tickets.id"), default=None)

    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name"),)


class ModelAssignment(Base):
    """A version at a stage on a target (a list of agents, a site, or a site's line).

    ``baseline_version``: the version it is judged against (the live version its agents
    ran when it was made), ``previous_id``: the live assignment it superseded, active
    again when it is rolled back. ``figures``: the gate's verdict at each decision."""

    __tablename__ = "model_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version: Mapped[str] = mapped_column(String(NAME_LENGTH))
    stage: Mapped[str] = mapped_column(String(16))
    target_agents: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    target_site: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    target_line: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    share: Mapped[float | None] = mapped_column(Float, default=None)
    baseline_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    previous_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_assignments.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)

    __table_args__ = (
        CheckConstraint(_in("stage", STAGES), name="ck_model_assignments_stage"),
        CheckConstraint(_in("state", ASSIGNMENT_STATES), name="ck_model_assignments_state"),
        Index("ix_model_assignments_state", "state"),
    )


class PublishedModel(Base):
    """The assignment message last published, retained, to one agent."""

    __tablename__ = "published_models"

    agent_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64))
    desired: Mapped[dict[str, Any]] = mapped_column(JSON)
    payload: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
