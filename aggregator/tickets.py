"""Ticket lifecycle: open or escalate, acknowledge, resolve with an outcome.

Functions take the caller's ``Session`` and never commit: the ingestor opens tickets in
the same transaction that marks messages seen, and an API route commits its own change.

One non-resolved ticket per (site, asset, kind) is the database's job (a partial unique
index, see ``db.Ticket``; asset names are only unique within a site); ``open_or_escalate``
checks first for speed and treats a unique violation as "someone else just opened it",
which it then escalates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.conditions import close_sensor
from aggregator.db import OUTCOMES, TICKET_KINDS, Ticket
from aggregator.errors import TicketNotFoundError, TicketStateError

if TYPE_CHECKING:
    from aggregator.series import PredictionPoint

__all__ = [
    "MAX_EVIDENCE_SCORES",
    "Kind",
    "Outcome",
    "Status",
    "Subject",
    "acknowledge",
    "find",
    "get",
    "open_or_escalate",
    "open_ticket",
    "reclassify",
    "resolve",
    "supersede",
]

logger = logging.getLogger(__name__)

Kind = Literal["maintenance", "sensor", "inspect", "retraining"]
Status = Literal["open", "acknowledged", "resolved"]
Outcome = Literal["confirmed_failure", "no_fault_found", "other", "superseded"]

# A ticket escalated for weeks must not grow without bound; the newest scores matter most.
MAX_EVIDENCE_SCORES = 200


@dataclass(frozen=True, slots=True)
class Subject:
    """What a ticket is about: the asset, where it is, and the model that judged it."""

    asset: str
    site: str
    line: str
    agent: str
    model_name: str
    model_version: str
    threshold: float

    @classmethod
    def of(cls, point: PredictionPoint, threshold: float) -> Subject:
        """The subject of a stored prediction, judged against ``threshold``."""
        return cls(asset=point.asset, site=point.site, line=point.line, agent=point.agent,
                   model_name=point.model, model_version=point.model_version,
                   threshold=threshold)


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def open_ticket(session: Session, site: str, asset: str, kind: str) -> Ticket | None:
    """The non-resolved ticket of (site, asset, kind), locked, or None."""
    return _open_ticket(session, site, asset, kind)


def _open_ticket(session: Session, site: str, asset: str, kind: str) -> Ticket | None:
    query = select(Ticket).where(
        Ticket.site == site,
        Ticket.asset == asset,
        Ticket.kind == kind,
        Ticket.status != "resolved",
    )
    return session.scalars(query.with_for_update()).first()


def _last_resolved_at(session: Session, site: str, asset: str, kind: str) -> datetime | None:
    query = select(func.max(Ticket.resolved_at)).where(
        Ticket.site == site, Ticket.asset == asset, Ticket.kind == kind,
        Ticket.status == "resolved",
    )
    return session.scalar(query)


def _merge_evidence(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """New evidence wins for scalars; scores are merged by window_end, newest kept."""
    scores = {s["window_end"]: s for s in old.get("scores", [])}
    scores.update({s["window_end"]: s for s in new.get("scores", [])})
    merged = sorted(scores.values(), key=lambda s: datetime.fromisoformat(s["window_end"]))
    # A new dict, not an in-place change: plain JSON columns do not track mutations.
    return {**old, **new, "scores": merged[-MAX_EVIDENCE_SCORES:]}


def _escalate(ticket: Ticket, evidence: dict[str, Any], now: datetime) -> Ticket:
    ticket.evidence = _merge_evidence(ticket.evidence, evidence)
    ticket.escalations += 1
    ticket.updated_at = now
    return ticket


def open_or_escalate(
    session: Session,
    subject: Subject,
    kind: Kind,
    evidence: dict[str, Any],
    *,
    now: datetime | None = None,
    cooldown: timedelta = timedelta(0),
) -> tuple[Ticket | None, bool]:
    """Open a ticket for (site, asset, kind), or escalate the one already open.

    The same asset name at another site is another asset: it gets its own ticket.

    Returns ``(ticket, opened)``; ``opened`` is False when an existing ticket was
    escalated (evidence appended, ``updated_at`` bumped, ``escalations`` + 1). Within
    ``cooldown`` of the last resolution of this (site, asset, kind) nothing is opened and
    ``(None, False)`` comes back: a technician who just closed a ticket must not get it
    straight back for the same trend.
    """
    if kind not in TICKET_KINDS:
        raise ValueError(f"kind must be one of {TICKET_KINDS}, got {kind!r}")
    now = _now(now)
    site, asset = subject.site, subject.asset
    existing = _open_ticket(session, site, asset, kind)
    if existing is not None:
        return _escalate(existing, evidence, now), False
    if cooldown > timedelta(0):
        resolved = _last_resolved_at(session, site, asset, kind)
        if resolved is not None and now < resolved + cooldown:
            logger.info("%s/%s/%s still triggered, but its ticket was resolved at %s: "
                        "no new ticket before %s", site, asset, kind, resolved.isoformat(),
                        (resolved + cooldown).isoformat())
            return None, False
    ticket = Ticket(
        kind=kind, asset=asset, agent=subject.agent, site=site, line=subject.line,
        status="open", opened_at=now, updated_at=now, model_name=subject.model_name,
        model_version=subject.model_version, threshold=subject.threshold, escalations=0,
        evidence=_merge_evidence({}, evidence),
    )
    try:
        # A savepoint, so losing the race rolls back only this insert, not the caller's
        # whole transaction (seen msg_ids, agents, rule state).
        with session.begin_nested():
            session.add(ticket)
    except IntegrityError:
        existing = _open_ticket(session, site, asset, kind)
        if existing is None:  # a different constraint failed: not ours to hide
            raise
        logger.debug(
            "ticket for %s/%s/%s opened concurrently; escalating it", site, asset, kind
        )
        return _escalate(existing, evidence, now), False
    logger.info("opened %s ticket %d for asset %s at site %s", kind, ticket.id, asset, site)
    return ticket, True


def get(session: Session, ticket_id: int, *, for_update: bool = False) -> Ticket:
    """The ticket with this id, or ``TicketNotFoundError``."""
    ticket = session.get(Ticket, ticket_id, with_for_update=for_update)
    if ticket is None:
        raise TicketNotFoundError(f"no ticket {ticket_id}", ticket_id=ticket_id)
    return ticket


def find(
    session: Session,
    *,
    status: Status | None = None,
    kind: Kind | None = None,
    asset: str | None = None,
    site: str | None = None,
) -> list[Ticket]:
    """Tickets matching every given filter, newest first."""
    query = select(Ticket).order_by(Ticket.opened_at.desc(), Ticket.id.desc())
    if status is not None:
        query = query.where(Ticket.status == status)
    if kind is not None:
        query = query.where(Ticket.kind == kind)
    if asset is not None:
        query = query.where(Ticket.asset == asset)
    if site is not None:
        query = query.where(Ticket.site == site)
    return list(session.scalars(query))


def acknowledge(session: Session, ticket_id: int, *, now: datetime | None = None) -> Ticket:
    """open -> acknowledged (someone is on it). Acknowledging twice is a no-op."""
    ticket = get(session, ticket_id, for_update=True)
    if ticket.status == "resolved":
        raise TicketStateError(
            f"ticket {ticket_id} is resolved", ticket_id=ticket_id, status=ticket.status
        )
    if ticket.status == "open":
        ticket.status = "acknowledged"
        ticket.updated_at = _now(now)
    return ticket


def resolve(
    session: Session,
    ticket_id: int,
    outcome: Outcome,
    note: str | None = None,
    *,
    now: datetime | None = None,
) -> Ticket:
    """-> resolved, with the outcome that model health is computed from.

    A resolved ticket frees its (site, asset, kind): the next trigger opens a new one.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    ticket = get(session, ticket_id, for_update=True)
    if ticket.status == "resolved":
        raise TicketStateError(
            f"ticket {ticket_id} is already resolved ({ticket.outcome})",
            ticket_id=ticket_id,
            status=ticket.status,
        )
    now = _now(now)
    ticket.status, ticket.outcome, ticket.note = "resolved", outcome, note
    ticket.resolved_at = ticket.updated_at = now
    if ticket.kind == "sensor":
        # The person who fixed the sensor ends its conditions; a channel that still
        # misbehaves raises them again (after the cooldown, a new ticket).
        close_sensor(session, ticket.site, ticket.asset, now)
    return ticket



def supersede(session: Session, ticket: Ticket, note: str, *, now: datetime | None = None) -> None:
    """Close a ticket the aggregator itself has found to be of another kind. Its outcome,
    ``superseded``, is not ground truth: model health leaves it out."""
    now = _now(now)
    ticket.status, ticket.outcome, ticket.note = "resolved", "superseded", note
    ticket.resolved_at = ticket.updated_at = now
    logger.info("superseded %s ticket %d for %s/%s: %s", ticket.kind, ticket.id, ticket.site,
                ticket.asset, note)


def reclassify(session: Session, ticket: Ticket, kind: Kind, evidence: dict[str, Any],
               note: str, *, now: datetime | None = None) -> Ticket:
    """Turn an open ticket into one of ``kind`` (a maintenance ticket that a sensor fault
    caused becomes a sensor ticket), keeping its id, history and evidence. If the asset
    already has an open ticket of that kind, that one absorbs the evidence and this one is
    superseded. Returns the ticket that now stands."""
    now = _now(now)
    other = _open_ticket(session, ticket.site, ticket.asset, kind)
    merged = {**evidence, "note": note,
              "reclassified_from": {"id": ticket.id, "kind": ticket.kind, **ticket.evidence}}
    if other is not None and other.id != ticket.id:
        supersede(session, ticket, f"{note} (see {kind} ticket {other.id})", now=now)
        return _escalate(other, merged, now)
    logger.info("reclassified %s ticket %d for %s/%s as %s: %s", ticket.kind, ticket.id,
                ticket.site, ticket.asset, kind, note)
    ticket.kind = kind
    ticket.evidence = merged
    ticket.updated_at = now
    ticket.escalations += 1
    return ticket
