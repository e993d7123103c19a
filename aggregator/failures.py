"""Failures reported without a ticket that warned of them: the model's missed detections.

A person reports the failure (site, line, asset, when, a note); model health counts it
against the model's recall (``aggregator.figures.MissedFailure``). Functions take the
caller's ``Session`` and never commit; the API route records the report in the audit log
in the same transaction.

Which model missed it: the one given, else the one model version the agents of its line
ran, as the aggregator last heard from them (``db.AgentRecord``); with none or several, the
failure is attributed to no model version and counts everywhere but in the per-model
figures.

A failure is refused (``FailureTicketedError``) when a maintenance ticket of the asset was
open at the time it happened: that ticket did warn of it, and is the one to resolve (as a
confirmed failure, with ``failed_at``); counting both would make one failure a caught and a
missed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from aggregator.db import AgentRecord, ReportedFailure, Ticket
from aggregator.errors import FailureTicketedError
from aggregator.tickets import ALWAYS, TimeRange

__all__ = ["FailureReport", "count", "find", "model_of_line", "report"]


@dataclass(frozen=True, slots=True)
class FailureReport:
    """What a person reports: where, which asset, when it failed (aware), and optionally
    which model version should have caught it and a note."""

    site: str
    line: str
    asset: str
    at: datetime
    note: str | None = None
    model_name: str | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        if (self.model_name is None) != (self.model_version is None):
            raise ValueError("give both model_name and model_version, or neither")


def model_of_line(session: Session, site: str, line: str) -> tuple[str, str] | None:
    """The one (model name, version) the agents of a line last reported, or None when they
    report none or several."""
    query = select(AgentRecord.model_name, AgentRecord.model_version).where(
        AgentRecord.site == site, AgentRecord.line == line,
        AgentRecord.model_name.is_not(None), AgentRecord.model_version.is_not(None),
    ).distinct()
    found = [(str(name), str(version)) for name, version in session.execute(query)]
    return found[0] if len(found) == 1 else None


def _covering_ticket(session: Session, site: str, asset: str, at: datetime) -> Ticket | None:
    query = select(Ticket).where(
        Ticket.site == site, Ticket.asset == asset, Ticket.kind == "maintenance",
        Ticket.opened_at <= at, or_(Ticket.resolved_at.is_(None), Ticket.resolved_at >= at),
    ).order_by(Ticket.opened_at, Ticket.id)
    return session.scalars(query).first()


def report(session: Session, failure: FailureReport, reported_by: str, *,
           now: datetime | None = None) -> ReportedFailure:
    """Record a missed failure (flushed, not committed); ``FailureTicketedError`` if a
    maintenance ticket of the asset was open when it happened."""
    ticket = _covering_ticket(session, failure.site, failure.asset, failure.at)
    if ticket is not None:
        raise FailureTicketedError(
            f"maintenance ticket {ticket.id} was open for {failure.asset} at {failure.site} "
            f"when it failed ({failure.at.isoformat()}): "
            f"it was not missed; resolve ticket {ticket.id} as confirmed_failure with failed_at"
            + (" (reopen it first)" if ticket.status == "resolved" else ""),
            ticket_id=ticket.id)
    model = ((failure.model_name, failure.model_version)
             if failure.model_name is not None and failure.model_version is not None
             else model_of_line(session, failure.site, failure.line))
    row = ReportedFailure(
        site=failure.site, line=failure.line, asset=failure.asset, at=failure.at,
        model_name=None if model is None else model[0],
        model_version=None if model is None else model[1], note=failure.note,
        reported_at=now if now is not None else datetime.now(UTC), reported_by=reported_by)
    session.add(row)
    session.flush()
    return row


def _filters(site: str | None, asset: str | None, at: TimeRange
             ) -> list[ColumnElement[bool]]:
    where = at.clauses(ReportedFailure.at)
    if site is not None:
        where.append(ReportedFailure.site == site)
    if asset is not None:
        where.append(ReportedFailure.asset == asset)
    return where


def find(session: Session, *, site: str | None = None, asset: str | None = None,
         at: TimeRange = ALWAYS, limit: int | None = None, offset: int = 0
         ) -> list[ReportedFailure]:
    """Reported failures matching every filter, newest failure first (then newest id)."""
    query = (select(ReportedFailure).where(*_filters(site, asset, at))
             .order_by(ReportedFailure.at.desc(), ReportedFailure.id.desc()).offset(offset))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count(session: Session, *, site: str | None = None, asset: str | None = None,
          at: TimeRange = ALWAYS) -> int:
    """How many ``find`` with the same filters would list without a limit."""
    query = select(func.count()).select_from(ReportedFailure).where(
        *_filters(site, asset, at))
    return session.scalar(query) or 0
