"""Tickets: list, read, acknowledge, resolve with an outcome."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator import tickets
from aggregator.api.deps import SessionDep
from aggregator.api.params import AssetFilter, KindFilter, SiteFilter, StatusFilter, TicketId
from aggregator.api.responses import BAD_BODY, DB_DOWN, TICKET_CONFLICT, TICKET_NOT_FOUND
from aggregator.api.schemas import ResolveIn, TicketOut

__all__ = ["acknowledge_ticket", "get_ticket", "list_tickets", "resolve_ticket", "router"]

router = APIRouter(prefix="/tickets", tags=["tickets"], responses=DB_DOWN)


@router.get("")
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


@router.get("/{ticket_id}", responses=TICKET_NOT_FOUND)
def get_ticket(ticket_id: TicketId, session: SessionDep) -> TicketOut:
    return TicketOut.model_validate(tickets.get(session, ticket_id))


@router.post("/{ticket_id}/ack", responses=TICKET_NOT_FOUND | TICKET_CONFLICT)
def acknowledge_ticket(ticket_id: TicketId, session: SessionDep) -> TicketOut:
    """open -> acknowledged; acknowledging twice is a no-op; 409 if already resolved."""
    ticket = tickets.acknowledge(session, ticket_id)
    session.commit()
    return TicketOut.model_validate(ticket)


@router.post(
    "/{ticket_id}/resolve", responses=TICKET_NOT_FOUND | TICKET_CONFLICT | BAD_BODY
)
def resolve_ticket(ticket_id: TicketId, body: ResolveIn, session: SessionDep) -> TicketOut:
    """-> resolved with an outcome; 409 if already resolved."""
    ticket = tickets.resolve(session, ticket_id, body.outcome, body.note)
    session.commit()
    return TicketOut.model_validate(ticket)
