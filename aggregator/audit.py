"""The audit log: who changed what, and when.

Every change made through the API (a ticket acknowledged, assigned, annotated, resolved or
reopened, a failure reported, a token created or revoked) and every token command adds one
``AuditEntry``, in the caller's session, so it
commits in the same transaction as the change it describes: a change without its entry,
or an entry for a change that was rolled back, cannot exist. Functions never commit.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db import AuditEntry

__all__ = ["Actor", "cli_actor", "history", "record"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: an API token's name and id, or a command (``token_id`` None)."""

    name: str
    token_id: int | None = None


def cli_actor() -> Actor:
    """The person running a command on this machine: ``cli:<login name>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return Actor(f"cli:{user}"[:128])


def record(
    session: Session,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: int | str,
    detail: dict[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> AuditEntry:
    """Add one entry to ``session`` (flushed, not committed)."""
    entry = AuditEntry(
        at=now if now is not None else datetime.now(UTC),
        actor=actor.name,
        token_id=actor.token_id,
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id),
        detail=dict(detail or {}),
    )
    session.add(entry)
    session.flush()
    return entry


def history(session: Session, subject_type: str, subject_id: int | str) -> list[AuditEntry]:
    """The entries about one subject, oldest first."""
    query = (
        select(AuditEntry)
        .where(AuditEntry.subject_type == subject_type, AuditEntry.subject_id == str(subject_id))
        .order_by(AuditEntry.at, AuditEntry.id)
    )
    return list(session.scalars(query))
