"""Dedupe by msg_id: a message redelivered by the broker (or re-sent by an agent after a
reconnect) is recognised and dropped, never stored or counted twice.

The msg_ids are rows of ``seen_messages``, written in the same transaction as everything
the message caused, and forgotten after ``dedupe_retention_s`` so the table stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from aggregator.db import SeenMessage
from aggregator.validate import DataMessage

__all__ = ["forget_before", "mark_seen", "seen"]

# Every backend accepts this many bound parameters in one IN (...).
_CHUNK = 500


def seen(session: Session, msg_ids: Iterable[str]) -> set[str]:
    """The msg_ids among ``msg_ids`` that were handled before."""
    ids = list(msg_ids)
    found: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        found.update(
            session.scalars(select(SeenMessage.msg_id).where(SeenMessage.msg_id.in_(chunk)))
        )
    return found


def mark_seen(session: Session, data: Sequence[DataMessage], now: datetime) -> None:
    """Record the messages as handled (one multi-row INSERT, not an object per message)."""
    if data:
        session.execute(insert(SeenMessage), [
            {"msg_id": str(d.envelope.msg_id), "agent": d.envelope.agent,
             "seq": d.envelope.seq, "received_at": now}
            for d in data
        ])


def forget_before(session: Session, cutoff: datetime) -> int:
    """Forget msg_ids handled before ``cutoff``; return how many."""
    result = session.execute(delete(SeenMessage).where(SeenMessage.received_at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
