"""Tickets: list, read and see the history of (read); acknowledge, resolve with an outcome
(write). Every change is written to the audit log, with the token's name as the actor, in
the transaction that makes it."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator import audit, tickets
from aggregator.api.deps import SessionDep
from aggregator.api.params import AssetFilter, KindFilter, SiteFilter, StatusFilter, TicketId
from aggregator.api.responses import (
    AUTH,
    BAD_BODY,
    DB_DOWN,
    TICKET_CONFLICT,
    TICKET_NOT_FOUND,
)
from aggregator.api.schemas import AuditOut, ResolveIn, TicketOut
from aggregator.api.security import READ, WriteToken

__all__ = [
    "acknowledge_ticket",
    "get_ticket",
    "list_tickets",
    "resolve_ticket",
    "router",
    "ticket_history",
]

router = APIRouter(prefix="/tickets", tags=["tickets"], responses=AUTH | DB_DOWN)


@router.get("", dependencies=[READ])
def list_tickets(
    session: SessionDep,
    status: StatusFilter = None,
    kind: KindFilter = None,
    asset: AssetFilter = None,
    site: SiteFilter = None,
) -> list[TicketOut]:
    """Newest first; every given filter must match (asset names repeat across sites:
    ``site`` narrows ``asset`` to one plant's)."""
    found = tickets.find(session, status=status, kind=kind, asset=asset, site=site)
    return [TicketOut.model_validate(t) for t in found]


@router.get("/{ticket_id}", responses=TICKET_NOT_FOUND, dependencies=[READ])
def get_ticket(ticket_id: TicketId, session: SessionDep) -> TicketOut:
    return TicketOut.model_validate(tickets.get(session, ticket_id))


@router.get("/{ticket_id}/history", responses=TICKET_NOT_FOUND, dependencies=[READ])
def ticket_history(ticket_id: TicketId, session: SessionDep) -> list[AuditOut]:
    """Every change made to the ticket through the API, oldest first: who (the token's
    name), when, and what (e.g. the outcome and note of a resolution)."""
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
    session.commit()
    return TicketOut.model_validate(ticket)


@router.post(
    "/{ticket_id}/resolve", responses=TICKET_NOT_FOUND | TICKET_CONFLICT | BAD_BODY
)
def resolve_ticket(
    ticket_id: TicketId, body: ResolveIn, session: SessionDep, caller: WriteToken
) -> TicketOut:
    """-> resolved with an outcome; 409 if already resolved."""
    before = tickets.get(session, ticket_id, for_update=True).status
    ticket = tickets.resolve(session, ticket_id, body.outcome, body.note)
    audit.record(session, caller.actor, "resolve", "ticket", ticket.id,
                 {"from": before, "to": ticket.status, "outcome": body.outcome,
                  "note": body.note}, now=ticket.updated_at)
    session.commit()
    return TicketOut.model_validate(ticket)
