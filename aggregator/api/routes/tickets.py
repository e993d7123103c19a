"""Tickets: list, read, acknowledge, resolve with an outcome."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator import tickets
from aggregator.api.deps import SessionDep
from aggregator.api.schemas import ResolveIn, TicketOut

__all__ = ["acknowledge_ticket", "get_ticket", "list_tickets", "resolve_ticket", "router"]

router = APIRouter(prefix="/tickets", tags=["tickets"])


@router.get("")
def list_tickets(
    session: SessionDep,
    status: tickets.Status | None = None,
    kind: tickets.Kind | None = None,
    asset: str | None = None,
    site: str | None = None,
) -> list[TicketOut]:
    """Newest first; every given filter must match (asset names repeat across sites:
    ``site`` narrows ``asset`` to one plant's)."""
    found = tickets.find(session, status=status, kind=kind, asset=asset, site=site)
    return [TicketOut.model_validate(t) for t in found]


@router.get("/{ticket_id}")
def get_ticket(ticket_id: int, session: SessionDep) -> TicketOut:
    return TicketOut.model_validate(tickets.get(session, ticket_id))


@router.post("/{ticket_id}/ack")
def acknowledge_ticket(ticket_id: int, session: SessionDep) -> TicketOut:
    """open -> acknowledged; 409 if already resolved."""
    ticket = tickets.acknowledge(session, ticket_id)
    session.commit()
    return TicketOut.model_validate(ticket)


@router.post("/{ticket_id}/resolve")
def resolve_ticket(ticket_id: int, body: ResolveIn, session: SessionDep) -> TicketOut:
    """-> resolved with an outcome; 409 if already resolved."""
    ticket = tickets.resolve(session, ticket_id, body.outcome, body.note)
    session.commit()
    return TicketOut.model_validate(ticket)
