"""Notification intents: what to tell whom about a ticket change, written in the change's
own transaction (the notification outbox, ``db.Notification``).

``aggregator.tickets`` calls :func:`record` wherever a ticket changes; the session
carries the :class:`Policy` (``install`` puts it on the session factory), so the ticket
functions need no settings and a session without one (a command, a unit test) records
nothing. A crash before the commit loses the change and its intent together; a batch the
ingestor retries records its intents once, when it commits.

What is recorded, per target that wants the ticket:

- **one announcement per incident** (an incident is one ticket: ``incident`` is its thread
  key). The first change of a ticket that is *current* announces it: normally its
  opening, or the first escalation of a ticket whose opening was past;
- **updates** refer to it: escalations (at most one per ``escalation_interval`` and
  target), a reclassification, the resolution, a reopening; none before the announcement
  (a resolution of an incident nobody was told of tells nobody);
- **past incidents are history, not news.** The event time of an opening or escalation is
  the newest window (or condition) of the ticket's evidence: when it is older than
  ``past_after`` at receipt (a backlog flushed after an outage), the opening is recorded
  as ``suppressed`` (delivery log ``suppressed: past incident``, and one entry on the
  ticket's history) and nothing is sent. The newest window, not the first alert
  (``figures.first_alert``), decides: an incident whose alerts began during the outage
  and go on now is current.

The MQTT andon (target ``andon``) shows state rather than news: it gets every change that
alters a line's state (not escalations) and publishes the event only for current ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from aggregator import audit
from aggregator.db import Notification, NotificationAttempt, SessionFactory, Ticket
from aggregator.notify.targets import ANDON, TargetConfig

if TYPE_CHECKING:
    from aggregator.settings import Settings

__all__ = ["ACTOR", "EVENTS", "POLICY_KEY", "Policy", "event_time", "install", "policy",
           "record", "snapshot"]

logger = logging.getLogger(__name__)

POLICY_KEY = "linewatch.notify"
_RECORDED_KEY = "linewatch.notify.recorded"
ACTOR = audit.Actor("aggregator")
# What can happen to a ticket. The first three come from the agents' data (plant time
# decides whether they are current); the others are people's (or the aggregator's) acts.
FROM_DATA = ("opened", "escalated", "reclassified")
EVENTS = (*FROM_DATA, "acknowledged", "resolved", "reopened")
_ANDON_EVENTS = ("opened", "reclassified", "acknowledged", "resolved", "reopened")
PAST = "suppressed: past incident"


@dataclass(frozen=True, slots=True)
class Policy:
    """What ``record`` needs from the settings."""

    targets: tuple[TargetConfig, ...]
    past_after: timedelta
    escalation_interval: timedelta
    andon_kinds: tuple[str, ...] | None  # None: no andon

    def wants(self, ticket: Ticket, event: str) -> list[str]:
        """Names of the targets told about this change of this ticket."""
        names = [t.name for t in self.targets
                 if event != "acknowledged" and t.wants(ticket.kind, ticket.site)]
        if self.andon_kinds is not None and ticket.kind in self.andon_kinds \
                and event in _ANDON_EVENTS:
            names.append(ANDON)
        return names


def policy(settings: Settings) -> Policy:
    """The recording policy the settings describe."""
    return Policy(
        targets=tuple(settings.notify_targets),
        past_after=timedelta(seconds=settings.notify_past_after_s),
        escalation_interval=timedelta(seconds=settings.notify_escalation_interval_s),
        andon_kinds=tuple(settings.andon_kinds) if settings.andon_enabled else None,
    )


def install(factory: SessionFactory, policy: Policy, wake: Callable[[], None]) -> None:
    """Give every session of ``factory`` the policy, and call ``wake`` after a commit
    that recorded a notification (the worker then sends it without waiting to poll)."""
    factory.configure(info={POLICY_KEY: policy})

    @event.listens_for(factory, "after_commit")
    def _after_commit(session: Session) -> None:
        if session.info.pop(_RECORDED_KEY, False):
            wake()

    @event.listens_for(factory, "after_rollback")
    def _after_rollback(session: Session) -> None:
        session.info.pop(_RECORDED_KEY, None)


def _parse(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def event_time(evidence: Mapping[str, Any], opened_at: datetime) -> datetime:
    """When the evidence behind a ticket's latest change happened (plant time): its newest
    scored window, drift or sensor condition, or retraining period end; ``opened_at``
    when the evidence holds no time.

    >>> event_time({"scores": [{"window_end": "2026-01-01T10:00:00+00:00"},
    ...                        {"window_end": "2026-01-01T11:00:00+00:00"}]},
    ...            datetime(2026, 3, 1, tzinfo=UTC)).hour
    11
    """
    found = [_parse(s.get("window_end")) for s in evidence.get("scores", []) or []
             if isinstance(s, Mapping)]
    found += [_parse(c.get("detected_at")) for c in evidence.get("conditions", []) or []
              if isinstance(c, Mapping)]
    if "to" in evidence:
        found.append(_parse(evidence["to"]))
    times = [t for t in found if t is not None]
    return max(times) if times else opened_at


def snapshot(ticket: Ticket) -> dict[str, Any]:
    """The ticket as a notification tells it (JSON; no evidence beyond a summary)."""
    ev = ticket.evidence or {}
    scores = [s for s in ev.get("scores", []) or [] if isinstance(s, Mapping)]
    return {
        "id": ticket.id, "kind": ticket.kind, "status": ticket.status, "site": ticket.site,
        "line": ticket.line, "asset": ticket.asset, "agent": ticket.agent,
        "model": {"name": ticket.model_name, "version": ticket.model_version,
                  "threshold": ticket.threshold},
        "opened_at": ticket.opened_at.isoformat(),
        "resolved_at": None if ticket.resolved_at is None else ticket.resolved_at.isoformat(),
        "escalations": ticket.escalations, "outcome": ticket.outcome, "note": ticket.note,
        "assignee": ticket.assignee,
        "action": ev.get("action"),
        "channels": ev.get("channels"),
        "alerts": sum(1 for s in scores if s.get("alert")), "windows": len(scores),
        "max_score": max((float(s["score"]) for s in scores if "score" in s), default=None),
    }


def record(session: Session, ticket: Ticket, event: str, *,
           now: datetime | None = None) -> None:
    """Record what to tell each target about ``event`` on ``ticket`` (flushed by the
    caller's commit, with the change). Does nothing without a policy on the session."""
    policy: Policy | None = session.info.get(POLICY_KEY)
    if policy is None:
        return
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
    wanted = policy.wants(ticket, event)
    if not policy.targets and not wanted:
        return
    now = now if now is not None else datetime.now(UTC)
    session.flush()  # the ticket's id, for a ticket opened in this transaction
    at = event_time(ticket.evidence or {}, ticket.opened_at) if event in FROM_DATA else now
    past = event in FROM_DATA and now - at > policy.past_after
    earlier = list(session.execute(
        select(Notification.target, Notification.announce, Notification.status,
               Notification.event, Notification.created_at)
        .where(Notification.ticket_id == ticket.id)))
    # A target told of the incident hears how it ends, also when the ticket became a kind
    # it does not follow (a maintenance ticket that turned out to be a sensor's).
    configured = {t.name for t in policy.targets}
    wanted += sorted({r.target for r in earlier if r.target in configured and r.announce
                      and r.status != "suppressed" and r.target not in wanted
                      and event in ("reclassified", "resolved", "reopened")})
    if not wanted:
        return
    body = snapshot(ticket)
    suppressed: list[str] = []
    for target in wanted:
        mine = [r for r in earlier if r.target == target]
        announced = any(r.announce and r.status != "suppressed" for r in mine)
        if target == ANDON:
            # State, not news: every change is published; the event only when current.
            _add(session, ticket, event, target, not announced and not past, body, at, now,
                 publish_event=not past)
            continue
        if past:
            if event == "opened" and not announced:
                _suppress(session, ticket, event, target, body, at, now)
                suppressed.append(target)
            continue
        if not announced:
            if event in ("resolved", "acknowledged"):
                continue  # nobody was told of it: nothing to close
            _add(session, ticket, event, target, True, body, at, now)
        elif event != "escalated" or _due(mine, now, policy.escalation_interval):
            _add(session, ticket, event, target, False, body, at, now)
    if suppressed:
        audit.record(session, ACTOR, "not_notified", "ticket", ticket.id, {
            "reason": "past incident", "event": event, "event_at": at.isoformat(),
            "received_at": now.isoformat(), "age_s": round((now - at).total_seconds()),
            "targets": suppressed}, now=now)
        logger.info("%s ticket %d for %s/%s: evidence from %s, %s old when received: "
                    "recorded, not notified", ticket.kind, ticket.id, ticket.site,
                    ticket.asset, at.isoformat(), now - at)


def _due(rows: list[Any], now: datetime, interval: timedelta) -> bool:
    last = max((r.created_at for r in rows if r.status != "suppressed"), default=None)
    return last is None or now - last >= interval


def _incident(ticket: Ticket) -> str:
    return f"linewatch:{ticket.site}:ticket-{ticket.id}"[:64]


def _add(session: Session, ticket: Ticket, event: str, target: str, announce: bool,
         body: dict[str, Any], at: datetime, now: datetime, *,
         publish_event: bool = True) -> Notification:
    row = Notification(
        ticket_id=ticket.id, incident=_incident(ticket), event=event, target=target,
        announce=announce, body={**body, "publish_event": publish_event}, event_at=at,
        created_at=now, status="pending", attempts=0, next_attempt_at=now)
    session.add(row)
    session.info[_RECORDED_KEY] = True
    return row


def _suppress(session: Session, ticket: Ticket, event: str, target: str,
              body: dict[str, Any], at: datetime, now: datetime) -> None:
    row = _add(session, ticket, event, target, True, body, at, now)
    row.status = "suppressed"
    row.last_error = PAST
    session.flush()
    session.add(NotificationAttempt(
        notification_id=row.id, target=target, ticket_id=ticket.id, event=event, attempt=0,
        status=PAST, error=f"evidence from {at.isoformat()}, {now - at} old when received",
        started_at=now, finished_at=now))
