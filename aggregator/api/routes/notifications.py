"""The notification delivery log (read): every attempt to send a notification to a
webhook or the andon, and every notification recorded but not sent.

Read scope, like the tickets it is about: who was told of an incident, and when, is part
of a ticket's story, and the log holds no secret (a target's name, never its URL or
header; errors in our own words, not the HTTP client's, which would quote the URL)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select

from aggregator.api.deps import SessionDep
from aggregator.api.paging import PAGED, page_headers
from aggregator.api.params import Limit, Offset, Since, Until
from aggregator.api.responses import AUTH, DB_DOWN
from aggregator.api.schemas import NotificationAttemptOut
from aggregator.api.security import READ
from aggregator.db import NotificationAttempt
from aggregator.tickets import TimeRange

__all__ = ["list_notifications", "router"]

router = APIRouter(prefix="/notifications", tags=["notifications"], responses=AUTH | DB_DOWN)

TicketFilter = Annotated[int | None, Query(ge=1, le=2**31 - 1,
                                           description="only this ticket's notifications")]
TargetFilter = Annotated[str | None, Query(min_length=1, max_length=64,
                                           description="only this target's")]


@router.get("", dependencies=[READ], responses=PAGED)
def list_notifications(
    request: Request,
    response: Response,
    session: SessionDep,
    ticket: TicketFilter = None,
    target: TargetFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[NotificationAttemptOut]:
    """The delivery log, newest first; ``since`` and ``until`` bound when an attempt
    started. Paged like ``/tickets`` (``X-Total-Count``, ``Link``)."""
    where = TimeRange(since, until).clauses(NotificationAttempt.started_at)
    if ticket is not None:
        where.append(NotificationAttempt.ticket_id == ticket)
    if target is not None:
        where.append(NotificationAttempt.target == target)
    rows = list(session.scalars(
        select(NotificationAttempt).where(*where)
        .order_by(NotificationAttempt.started_at.desc(), NotificationAttempt.id.desc())
        .limit(limit).offset(offset)))
    total = session.scalar(select(func.count()).select_from(NotificationAttempt)
                           .where(*where)) or 0
    page_headers(request, response, limit=limit, offset=offset, returned=len(rows),
                 total=total)
    return [NotificationAttemptOut.model_validate(r) for r in rows]
