"""Dedupe by msg_id: a message redelivered by the broker (or re-sent by an agent after a
reconnect) is recognised and dropped, never stored or counted twice.

The msg_ids are rows of ``seen_messages``, written in the same transaction as everything
the message caused, and forgotten after ``dedupe_retention_s`` so the table stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from aggregator.db import SeenMessage
from aggregator.validate import DataMessage

__all__ = ["forget_before", "mark_seen", "seen"]

_TABLE = cast(Table, SeenMessage.__table__)
# Every backend accepts this many bound parameters in one IN (...).
_CHUNK = 500


def seen(session: Session, msg_ids: Iterable[str]) -> set[str]:
    """The msg_ids among ``msg_ids`` that were handled before."""
    ids = list(msg_ids)
    found: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        # Core, not an ORM select: no entity to load, and the ORM's compile step per call
        # cost more than the look-up.
        found.update(session.connection().execute(
            select(_TABLE.c.msg_id).where(_TABLE.c.msg_id.in_(chunk))).scalars())
    return found


def mark_seen(session: Session, data: Sequence[DataMessage], now: datetime,
              msg_ids: Sequence[str] | None = None) -> None:
    """Record the messages as handled: one executemany on the session's connection, not
    an object per message (and not the ORM's bulk insert, whose per-row bookkeeping cost
    more than the INSERT itself). ``msg_ids``, when given, are ``data``'s msg_ids as
    strings, in order (the caller has them already)."""
    if not data:
        return
    ids = [str(d.envelope.msg_id) for d in data] if msg_ids is None else msg_ids
    session.connection().execute(insert(_TABLE), [
        {"msg_id": msg_id, "agent": d.envelope.agent, "seq": d.envelope.seq,
         "received_at": now}
        for msg_id, d in zip(ids, data, strict=True)
    ])


def forget_before(session: Session, cutoff: datetime) -> int:
    """Forget msg_ids handled before ``cutoff``; return how many."""
    result = session.execute(delete(SeenMessage).where(SeenMessage.received_at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
