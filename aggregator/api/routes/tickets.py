"""Tickets: list (paged, with time filters), read and see the history of (read);
acknowledge, assign, add a note, resolve with an outcome, reopen (write). Every change is
written to the audit log, with the token's name as the actor, in the transaction that
makes it; a refused change (404, 409) is rolled back and recorded nowhere."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator import audit, tickets
from aggregator.api.deps import SeriesDep, SessionDep, SettingsDep
from aggregator.api.paging import PAGED, page_headers
from aggregator.api.params import (
    AssetFilter,
    KindFilter,
    Limit,
    Offset,
    OpenedSince,
    OpenedUntil,
    ResolvedSince,
    ResolvedUntil,
    SiteFilter,
    StatusFilter,
    TicketId,
)
from aggregator.api.responses import (
    AUTH,
    BAD_BODY,
    DB_DOWN,
    TICKET_CONFLICT,
    TICKET_NOT_FOUND,
    Responses,
)
from aggregator.api.schemas import (
    AssignIn,
    AuditOut,
    NoteIn,
    NoteOut,
    ReopenIn,
    ResolveIn,
    TicketOut,
)
from aggregator.api.security import READ, WriteToken
from aggregator.db import Ticket
from aggregator.errors import TicketStateError
from aggregator.reactions import performance

__all__ = [
    "acknowledge_ticket",
    "add_note",
    "assign_ticket",
    "get_ticket",
    "list_tickets",
    "reopen_ticket",
    "resolve_ticket",
    "router",
    "ticket_history",
]

router = APIRouter(prefix="/tickets", tags=["tickets"], responses=AUTH | DB_DOWN)

REOPEN_CONFLICT: Responses = {409: {**TICKET_CONFLICT[409], "description": (
    "the ticket is not resolved, was superseded by the aggregator, or another ticket of "
    "the same asset and kind is open (the answer names it)")}}


@router.get("", dependencies=[READ], responses=PAGED)
def list_tickets(
    request: Request,
    response: Response,
    session: SessionDep,
    status: StatusFilter = None,
    kind: KindFilter = None,
    asset: AssetFilter = None,
    site: SiteFilter = None,
    opened_since: OpenedSince = None,
    opened_until: OpenedUntil = None,
    resolved_since: ResolvedSince = None,
    resolved_until: ResolvedUntil = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[TicketOut]:
    """Newest first (by when opened); every given filter must match (asset names repeat
    across sites: ``site`` narrows ``asset`` to one plant's). Time ranges include their
    start and exclude their end. Paged by ``limit`` and ``offset``: ``X-Total-Count``
    says how many match, ``Link`` where the next and previous pages are."""
    opened = tickets.TimeRange(opened_since, opened_until)
    resolved = tickets.TimeRange(resolved_since, resolved_until)
    found = tickets.find(session, status=status, kind=kind, asset=asset, site=site,
                         opened=opened, resolved=resolved, limit=limit, offset=offset)
    total = tickets.count(session, status=status, kind=kind, asset=asset, site=site,
                          opened=opened, resolved=resolved)
    page_headers(request, response, limit=limit, offset=offset, returned=len(found),
                 total=total)
    return [TicketOut.model_validate(t) for t in found]


@router.get("/{ticket_id}", responses=TICKET_NOT_FOUND, dependencies=[READ])
def get_ticket(ticket_id: TicketId, session: SessionDep) -> TicketOut:
    return TicketOut.model_validate(tickets.get(session, ticket_id))


@router.get("/{ticket_id}/history", responses=TICKET_NOT_FOUND, dependencies=[READ])
def ticket_history(ticket_id: TicketId, session: SessionDep) -> list[AuditOut]:
    """Every change made to the ticket through the API, oldest first: who (the token's
    name), when, and what (acknowledge, assign, note, resolve with its outcome, note and
    failure time, reopen with what the resolution was)."""
    tickets.get(session, ticket_id)  # 404 for a ticket that does not exist
    return [AuditOut.model_validate(e) for e in audit.history(session, "ticket", ticket_id)]


@router.post("/{ticket_id}/ack", responses=TICKET_NOT_FOUND | TICKET_CONFLICT)
def acknowledge_ticket(ticket_id: TicketId, session: SessionDep, caller: WriteToken) -> TicketOut:
    """open -> acknowledged; acknowledging twice is a no-op (and is not recorded); 409 if
    already resolved."""
    before = tickets.get(session, ticket_id, for_update=True).status
    ticket = tickets.acknowledge(session, ticket_id)
    if ticket.status != before:
        audit.record(session, caller.actor, "acknowledge", "ticket", ticket.id,
                     {"from": before, "to": ticket.status}, now=ticket.updated_at)
    return _commit(session, ticket)


@router.post("/{ticket_id}/assign",
             responses=TICKET_NOT_FOUND | TICKET_CONFLICT | BAD_BODY)
def assign_ticket(ticket_id: TicketId, body: AssignIn, session: SessionDep,
                  caller: WriteToken) -> TicketOut:
    """Assign the ticket to a person (``assignee``: a name), or to nobody (null). The same
    assignee again changes nothing (and is not recorded); 409 if resolved."""
    ticket, before = tickets.assign(session, ticket_id, body.assignee)
    if ticket.assignee != before:
        audit.record(session, caller.actor, "assign", "ticket", ticket.id,
                     {"from": before, "to": ticket.assignee}, now=ticket.updated_at)
    return _commit(session, ticket)


@router.post("/{ticket_id}/notes", status_code=201, responses=TICKET_NOT_FOUND | BAD_BODY)
def add_note(ticket_id: TicketId, body: NoteIn, session: SessionDep,
             caller: WriteToken) -> NoteOut:
    """Add a note (what was seen, what was done) to a ticket in any status; its author is
    the token's name. Notes are never changed or removed."""
    note = tickets.add_note(session, ticket_id, body.text, caller.name)
    audit.record(session, caller.actor, "note", "ticket", ticket_id, {"text": body.text},
                 now=note.at)
    out = NoteOut.model_validate(note)
    session.commit()
    return out


@router.post(
    "/{ticket_id}/resolve", responses=TICKET_NOT_FOUND | TICKET_CONFLICT | BAD_BODY
)
def resolve_ticket(
    ticket_id: TicketId, body: Annotated[ResolveIn, Body()], session: SessionDep,
    caller: WriteToken, series: SeriesDep, settings: SettingsDep,
) -> TicketOut:
    """-> resolved with an outcome (the ground truth model health is computed from), an
    optional note and, for a confirmed failure, when it failed (``failed_at``); 409 if
    already resolved."""
    before = tickets.get(session, ticket_id, for_update=True).status
    failed_at = getattr(body, "failed_at", None)
    ticket = tickets.resolve(session, ticket_id, body.outcome, body.note, failed_at=failed_at)
    detail = {"from": before, "to": ticket.status, "outcome": body.outcome, "note": body.note}
    if failed_at is not None:
        detail["failed_at"] = failed_at.isoformat()
    audit.record(session, caller.actor, "resolve", "ticket", ticket.id, detail,
                 now=ticket.updated_at)
    if ticket.kind == "maintenance":
        session.flush()
        performance.check_realised(session, series, settings, site=ticket.site,
                                   model_name=ticket.model_name,
                                   model_version=ticket.model_version, now=ticket.updated_at)
    return _commit(session, ticket)


@router.post("/{ticket_id}/reopen", responses=TICKET_NOT_FOUND | REOPEN_CONFLICT | BAD_BODY)
def reopen_ticket(
    ticket_id: TicketId, session: SessionDep, caller: WriteToken,
    body: Annotated[ReopenIn | None, Body()] = None,
) -> TicketOut:
    """resolved -> open: the resolution was wrong, or the fault came back. Its outcome,
    note and times are cleared (the history keeps them, and model health counts the
    ticket again once it is resolved again). 409 when the ticket is not resolved, when
    the aggregator superseded it, or when another ticket of the same asset and kind is
    open (one per asset and kind at a time): the answer names that ticket."""
    ticket, was = tickets.reopen(session, ticket_id)
    note = None if body is None else body.note
    audit.record(session, caller.actor, "reopen", "ticket", ticket.id,
                 {"from": "resolved", "to": ticket.status, "was": was, "note": note},
                 now=ticket.updated_at)
    out = TicketOut.model_validate(ticket)
    try:
        session.commit()
    except IntegrityError as exc:
        # Another ticket of the (site, asset, kind) opened between the check and now: the
        # partial unique index refused this one.
        session.rollback()
        raise TicketStateError(
            f"ticket {ticket_id} cannot be reopened: another ticket of the same asset and "
            "kind was opened just now; add to that one instead",
            ticket_id=ticket_id, status="resolved") from exc
    return out


def _commit(session: Session, ticket: Ticket) -> TicketOut:
    # The answer is read before the commit: loading the notes afterwards would open
    # another transaction (on SQLite, one that takes the write lock).
    out = TicketOut.model_validate(ticket)
    session.commit()
    return out
