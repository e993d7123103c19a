"""A line's andon over MQTT: its current state (retained) and the events of its incidents
(``contract.wire.AndonState``, ``AndonEvent``).

The state is read from SQL when it is published, not carried in the notification: it is
always the line's tickets as they are now, so publishing it twice, late or out of order
shows nothing stale for longer than the next publish.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db import Ticket
from contract.wire import (
    MAX_ANDON_TICKETS,
    SCHEMA,
    AndonEvent,
    AndonLevel,
    AndonState,
    AndonTicket,
)

__all__ = ["event_of", "level", "state_of"]


def level(tickets: list[tuple[str, str]]) -> AndonLevel:
    """The tower's colour for (kind, status) of the line's unresolved tickets.

    >>> level([]), level([("sensor", "open")]), level([("maintenance", "open")])
    ('ok', 'warning', 'alarm')
    >>> level([("maintenance", "acknowledged")])
    'warning'
    """
    if any(kind == "maintenance" and status == "open" for kind, status in tickets):
        return "alarm"
    return "warning" if tickets else "ok"


def state_of(session: Session, site: str, line: str, kinds: tuple[str, ...],
             now: datetime) -> AndonState:
    """The line's andon state now."""
    rows = list(session.scalars(
        select(Ticket).where(Ticket.site == site, Ticket.line == line,
                             Ticket.kind.in_(kinds), Ticket.status != "resolved")
        .order_by(Ticket.opened_at.desc(), Ticket.id.desc())))
    shown = [AndonTicket(id=t.id, kind=t.kind, status=t.status, asset=t.asset,
                         opened_at=t.opened_at) for t in rows[:MAX_ANDON_TICKETS]]
    return AndonState(schema_=SCHEMA, site=site, line=line, ts=now,
                      level=level([(t.kind, t.status) for t in rows]), open=len(rows),
                      tickets=shown)


def event_of(incident: str, event: str, ticket: dict[str, Any], state: AndonState,
             event_at: datetime, now: datetime) -> AndonEvent:
    """The event for a notification's ticket snapshot, with the line's level now."""
    return AndonEvent(schema_=SCHEMA, site=ticket["site"], line=ticket["line"], ts=now,
                      incident=incident, ticket=ticket["id"], event=event,
                      kind=ticket["kind"], asset=ticket["asset"], status=ticket["status"],
                      level=state.level, event_at=event_at)
