"""Ticket lifecycle: open or escalate, acknowledge, assign, add a note, resolve with an
outcome (``aggregator.outcomes``), reopen.

Functions take the caller's ``Session`` and never commit: the ingestor opens tickets in
the same transaction that marks messages seen, and an API route commits its own change
together with its audit entry (``aggregator.audit``).

One non-resolved ticket per (site, asset, kind) is the database's job (a partial unique
index, see ``db.Ticket``; asset names are only unique within a site); ``open_or_escalate``
checks first for speed and treats a unique violation as "someone else just opened it",
which it then escalates. ``reopen`` checks the same way and refuses (``TicketStateError``,
naming the other ticket) when another ticket of the (site, asset, kind) is open; a
concurrent opener that slips between check and commit makes the commit fail instead.

Who may set what: ``superseded`` is the aggregator's own outcome (``supersede``); a person
resolves with any other (``PERSON_OUTCOMES``), and gives ``failed_at`` only with
``confirmed_failure``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from aggregator.conditions import close_sensor
from aggregator.db import TICKET_KINDS, Ticket, TicketNote
from aggregator.errors import TicketNotFoundError, TicketStateError
from aggregator.notify.intents import record as notify
from aggregator.outcomes import OUTCOMES, Outcome

if TYPE_CHECKING:
    from aggregator.series import PredictionPoint

__all__ = [
    "ALWAYS",
    "MAX_EVIDENCE_SCORES",
    "PERSON_OUTCOMES",
    "Kind",
    "Outcome",
    "Status",
    "Subject",
    "TimeRange",
    "acknowledge",
    "add_note",
    "assign",
    "count",
    "find",
    "get",
    "open_or_escalate",
    "open_ticket",
    "reclassify",
    "reopen",
    "resolve",
    "supersede",
]

logger = logging.getLogger(__name__)

Kind = Literal["maintenance", "sensor", "inspect", "retraining"]
Status = Literal["open", "acknowledged", "resolved"]
# What a person may resolve a ticket with: every outcome but the aggregator's own.
PERSON_OUTCOMES: tuple[Outcome, ...] = tuple(o for o in OUTCOMES if o != "superseded")

_VISIBLE = re.compile(r"[^\x00-\x20\x7f]")  # what a note needs one of (the API's pattern)
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


def _escalate(session: Session, ticket: Ticket, evidence: dict[str, Any],
              now: datetime, times: int = 1) -> Ticket:
    ticket.evidence = _merge_evidence(ticket.evidence, evidence)
    ticket.escalations += times
    ticket.updated_at = now
    notify(session, ticket, "escalated", now=now)
    return ticket


def open_or_escalate(
    session: Session,
    subject: Subject,
    kind: Kind,
    evidence: dict[str, Any],
    *,
    now: datetime | None = None,
    at: datetime | None = None,
    triggers: int = 1,
    cooldown: timedelta = timedelta(0),
) -> tuple[Ticket | None, bool]:
    """Open a ticket for (site, asset, kind), or escalate the one already open.

    The same asset name at another site is another asset: it gets its own ticket.

    ``at`` is when the (first) trigger happened, in event time (default ``now``): a new
    ticket's ``opened_at``; ``now`` is when it was received (``received_at``,
    ``updated_at``). ``triggers`` is how many triggers this call stands for, in event-time
    order (a backlog brings many at once): the first opens the ticket, every other one is
    an escalation, so ``escalations`` does not depend on how the triggers were batched.

    Returns ``(ticket, opened)``; ``opened`` is False when an existing ticket was
    escalated (evidence appended, ``updated_at`` bumped, ``escalations`` + ``triggers``).
    Within ``cooldown`` of the last resolution of this (site, asset, kind) nothing is
    opened and ``(None, False)`` comes back: a technician who just closed a ticket must not
    get it straight back for the same trend.
    """
    if kind not in TICKET_KINDS:
        raise ValueError(f"kind must be one of {TICKET_KINDS}, got {kind!r}")
    if triggers < 1:
        raise ValueError(f"triggers must be at least 1, got {triggers}")
    now = _now(now)
    at = now if at is None else at
    site, asset = subject.site, subject.asset
    existing = _open_ticket(session, site, asset, kind)
    if existing is not None:
        return _escalate(session, existing, evidence, now, triggers), False
    if cooldown > timedelta(0):
        resolved = _last_resolved_at(session, site, asset, kind)
        if resolved is not None and now < resolved + cooldown:
            logger.info("%s/%s/%s still triggered, but its ticket was resolved at %s: "
                        "no new ticket before %s", site, asset, kind, resolved.isoformat(),
                        (resolved + cooldown).isoformat())
            return None, False
    ticket = Ticket(
        kind=kind, asset=asset, agent=subject.agent, site=site, line=subject.line,
        status="open", opened_at=at, received_at=now, updated_at=now,
        model_name=subject.model_name, model_version=subject.model_version,
        threshold=subject.threshold, escalations=triggers - 1,
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
        return _escalate(session, existing, evidence, now, triggers), False
    notify(session, ticket, "opened", now=now)
    logger.info("opened %s ticket %d for asset %s at site %s", kind, ticket.id, asset, site)
    return ticket, True


def get(session: Session, ticket_id: int, *, for_update: bool = False) -> Ticket:
    """The ticket with this id, or ``TicketNotFoundError``."""
    ticket = session.get(Ticket, ticket_id, with_for_update=for_update)
    if ticket is None:
        raise TicketNotFoundError(f"no ticket {ticket_id}", ticket_id=ticket_id)
    return ticket


@dataclass(frozen=True, slots=True)
class TimeRange:
    """[since, until): either end may be open (None)."""

    since: datetime | None = None
    until: datetime | None = None

    def clauses(self, column: Any) -> list[ColumnElement[bool]]:
        """SQL conditions that put ``column`` in the range (none for an open range)."""
        out: list[ColumnElement[bool]] = []
        if self.since is not None:
            out.append(column >= self.since)
        if self.until is not None:
            out.append(column < self.until)
        return out


ALWAYS = TimeRange()  # no time filter


def _filters(status: Status | None, kind: Kind | None, asset: str | None, site: str | None,
             opened: TimeRange, resolved: TimeRange) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [
        *opened.clauses(Ticket.opened_at), *resolved.clauses(Ticket.resolved_at)]
    for column, value in ((Ticket.status, status), (Ticket.kind, kind), (Ticket.asset, asset),
                          (Ticket.site, site)):
        if value is not None:
            where.append(column == value)
    return where


def find(
    session: Session,
    *,
    status: Status | None = None,
    kind: Kind | None = None,
    asset: str | None = None,
    site: str | None = None,
    opened: TimeRange = ALWAYS,
    resolved: TimeRange = ALWAYS,
    limit: int | None = None,
    offset: int = 0,
) -> list[Ticket]:
    """Tickets matching every given filter, newest first (by ``opened_at``, then id): at
    most ``limit`` of them (all if None) after skipping ``offset``; notes loaded.

    ``opened`` and ``resolved`` are time ranges of ``opened_at`` and ``resolved_at``; a
    ``resolved`` range leaves out tickets not resolved.
    """
    where = _filters(status, kind, asset, site, opened, resolved)
    query = (select(Ticket).where(*where).options(selectinload(Ticket.notes))
             .order_by(Ticket.opened_at.desc(), Ticket.id.desc()).offset(offset))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count(
    session: Session,
    *,
    status: Status | None = None,
    kind: Kind | None = None,
    asset: str | None = None,
    site: str | None = None,
    opened: TimeRange = ALWAYS,
    resolved: TimeRange = ALWAYS,
) -> int:
    """How many tickets ``find`` with the same filters would list without a limit."""
    where = _filters(status, kind, asset, site, opened, resolved)
    return session.scalar(select(func.count()).select_from(Ticket).where(*where)) or 0


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
        notify(session, ticket, "acknowledged", now=ticket.updated_at)
    return ticket


def _unresolved(ticket: Ticket, doing: str) -> None:
    if ticket.status == "resolved":
        raise TicketStateError(
            f"ticket {ticket.id} is resolved ({ticket.outcome}): reopen it before you "
            f"{doing} it", ticket_id=ticket.id, status=ticket.status)


def assign(session: Session, ticket_id: int, assignee: str | None, *,
           now: datetime | None = None) -> tuple[Ticket, str | None]:
    """Assign the ticket to ``assignee`` (a person's name; None: to nobody). Returns the
    ticket and whom it was assigned to before; nothing changes when that is the same.
    A resolved ticket cannot be assigned (``TicketStateError``)."""
    ticket = get(session, ticket_id, for_update=True)
    _unresolved(ticket, "assign")
    before = ticket.assignee
    if assignee != before:
        ticket.assignee = assignee
        ticket.updated_at = _now(now)
    return ticket, before


def add_note(session: Session, ticket_id: int, text: str, author: str, *,
             now: datetime | None = None) -> TicketNote:
    """Add a note to the ticket, in any status (a resolved ticket may still need one)."""
    if not _VISIBLE.search(text):
        raise ValueError("a note needs a visible character")
    ticket = get(session, ticket_id, for_update=True)
    now = _now(now)
    note = TicketNote(at=now, author=author, text=text)
    ticket.notes.append(note)
    ticket.updated_at = now
    session.flush()
    return note


def resolve(
    session: Session,
    ticket_id: int,
    outcome: Outcome,
    note: str | None = None,
    *,
    failed_at: datetime | None = None,
    now: datetime | None = None,
) -> Ticket:
    """-> resolved, with the outcome that model health is computed from, and for a
    confirmed failure whose time is known, ``failed_at``.

    A resolved ticket frees its (site, asset, kind): the next trigger opens a new one.
    ``superseded`` is the aggregator's (``supersede``), not a person's: ``ValueError``.
    """
    if outcome not in PERSON_OUTCOMES:
        raise ValueError(f"outcome must be one of {PERSON_OUTCOMES}, got {outcome!r}")
    if failed_at is not None:
        if outcome != "confirmed_failure":
            raise ValueError("failed_at goes only with outcome confirmed_failure, got "
                             f"{outcome!r}")
        if failed_at.tzinfo is None:
            raise ValueError("failed_at must be timezone-aware")
    ticket = get(session, ticket_id, for_update=True)
    if ticket.status == "resolved":
        raise TicketStateError(
            f"ticket {ticket_id} is already resolved ({ticket.outcome})",
            ticket_id=ticket_id,
            status=ticket.status,
        )
    now = _now(now)
    ticket.status, ticket.outcome, ticket.note = "resolved", outcome, note
    ticket.failed_at = failed_at
    ticket.resolved_at = ticket.updated_at = now
    if ticket.kind == "sensor":
        # The person who fixed the sensor ends its conditions; a channel that still
        # misbehaves raises them again (after the cooldown, a new ticket).
        close_sensor(session, ticket.site, ticket.asset, now)
    notify(session, ticket, "resolved", now=now)
    return ticket


def reopen(session: Session, ticket_id: int, *, now: datetime | None = None
           ) -> tuple[Ticket, dict[str, Any]]:
    """resolved -> open: the resolution was wrong, or the fault came back. Returns the
    ticket and what its resolution was (status, outcome, note, resolved_at, failed_at).

    The outcome, note and times of the resolution are cleared (the audit log keeps them);
    model health counts the ticket again once it is resolved again. Refused
    (``TicketStateError``): a ticket that is not resolved; one the aggregator superseded
    (the ticket that replaced it is the one to work on); one whose (site, asset, kind)
    has another ticket open, which the error names.
    """
    ticket = get(session, ticket_id, for_update=True)
    if ticket.status != "resolved":
        raise TicketStateError(f"ticket {ticket_id} is {ticket.status}, not resolved: "
                               "there is nothing to reopen", ticket_id=ticket_id,
                               status=ticket.status)
    if ticket.outcome == "superseded":
        raise TicketStateError(
            f"ticket {ticket_id} was superseded by the aggregator ({ticket.note}): work on "
            "the ticket that replaced it", ticket_id=ticket_id, status=ticket.status)
    other = _open_ticket(session, ticket.site, ticket.asset, ticket.kind)
    if other is not None:
        raise TicketStateError(
            f"ticket {ticket_id} cannot be reopened: {ticket.kind} ticket {other.id} is "
            f"{other.status} for {ticket.asset} at {ticket.site}, and an asset has one "
            f"{ticket.kind} ticket at a time; add to ticket {other.id} instead",
            ticket_id=ticket_id, status=ticket.status)
    was = {"status": ticket.status, "outcome": ticket.outcome, "note": ticket.note,
           "resolved_at": _iso(ticket.resolved_at), "failed_at": _iso(ticket.failed_at)}
    ticket.status = "open"
    ticket.outcome = ticket.note = None
    ticket.resolved_at = ticket.failed_at = None
    ticket.updated_at = _now(now)
    notify(session, ticket, "reopened", now=ticket.updated_at)
    return ticket, was


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def supersede(session: Session, ticket: Ticket, note: str, *, now: datetime | None = None) -> None:
    """Close a ticket the aggregator itself has found to be of another kind. Its outcome,
    ``superseded``, is not ground truth: model health leaves it out."""
    now = _now(now)
    ticket.status, ticket.outcome, ticket.note = "resolved", "superseded", note
    ticket.resolved_at = ticket.updated_at = now
    notify(session, ticket, "resolved", now=now)
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
        return _escalate(session, other, merged, now)
    logger.info("reclassified %s ticket %d for %s/%s as %s: %s", ticket.kind, ticket.id,
                ticket.site, ticket.asset, kind, note)
    ticket.kind = kind
    ticket.evidence = merged
    ticket.updated_at = now
    ticket.escalations += 1
    notify(session, ticket, "reclassified", now=now)
    return ticket
