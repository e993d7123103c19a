"""Delivery tracking: which of each agent's messages are stored, by seq, and which hours
of its windows are complete.

Every accepted data message goes into its agent's ledger (``aggregator.delivery``) in
arrival order: a seq beyond the highest opens a gap, one into a gap is a reorder, one
already accounted for a duplicate (or a reset, when the agent plainly numbers from
scratch). A health report's ``undeliverable`` spans account for seqs the agent will never
send; their windows count against completeness in the hours they were made.

The agent's ``agent_delivery`` row is locked for the transaction (replicas in a ``$share``
group ingest the same agent at once on PostgreSQL), and its ``delivery_hours`` rows are
only written under that lock. ``aggregator.confirm`` publishes what the rows say once the
batch is committed.

Logging: each kind of event (a gap, a reorder, a reset, messages dropped or gone) is told
once per agent at WARNING (a reorder at INFO), then at DEBUG; a gap that closes after it
was asked for is told at INFO.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db import AgentDelivery, DeliveryHour
from aggregator.delivery import MAX_GAPS, Arrival, Gap, Ledger, apportion, hour_of, spread
from aggregator.reactions import Batch
from aggregator.reactions.state import locked_agents
from aggregator.validate import DataMessage
from contract.wire import Health, Undeliverable

if TYPE_CHECKING:
    from aggregator.settings import Settings

__all__ = ["DeliveryTracking", "ledger_of", "new_row", "store_ledger"]

logger = logging.getLogger(__name__)

# Agents looked up in one IN (...): every backend accepts this many bound parameters.
_CHUNK = 500


class DeliveryTracking:
    """Keeps one ``agent_delivery`` row and its ``delivery_hours`` per agent up to date."""

    name = "delivery"

    def __init__(self, settings: Settings) -> None:
        self.grace_s = settings.delivery_gap_grace_s
        self._told: set[tuple[str, str]] = set()  # (agent, kind) logged loudly

    def react(self, session: Session, batch: Batch) -> None:
        by_agent: dict[str, list[DataMessage]] = {}
        for item in batch.data:
            by_agent.setdefault(item.envelope.agent, []).append(item)
        # Sorted, so two transactions lock agents in the same order. One SELECT for the
        # rows of every agent of the batch and one for their hours, not one per agent and
        # hour: a batch's SQL round trips are most of what it costs per message.
        agents = sorted(by_agent)
        rows = locked_agents(session, AgentDelivery, agents)
        hours: dict[str, tuple[Counter[datetime], Counter[datetime]]] = {}
        for agent in agents:
            row = rows.get(agent) or _locked(session, agent)
            hours[agent] = self._track(row, agent, by_agent[agent], batch.now)
        _add_hours(session, hours)

    def _track(
        self, row: AgentDelivery, agent: str, messages: Sequence[DataMessage], now: datetime
    ) -> tuple[Counter[datetime], Counter[datetime]]:
        """Account for ``messages`` in the agent's row: the windows they brought per hour,
        and those reported undeliverable per hour."""
        ledger = ledger_of(row)
        received: Counter[datetime] = Counter()
        lost: Counter[datetime] = Counter()
        # Counted here and added to the row once: an ORM attribute write per message
        # costs more than the rest of the bookkeeping.
        counts: Counter[str] = Counter()
        for item in messages:
            env = item.envelope
            change = ledger.receive(env.seq, now, env.ts)
            if change.arrival is Arrival.DUPLICATE:
                counts["duplicates"] += 1
                logger.debug("agent %s: message %d again, under a new msg_id", agent, env.seq)
                continue
            if change.arrival is Arrival.RESET:
                counts["resets"] += 1
                self._tell(agent, "reset", logging.WARNING,
                           "agent %s: message %d was stored already, yet this one is newer "
                           "than anything it sent: its outbox was replaced; tracking its "
                           "messages afresh from %d", agent, env.seq, env.seq)
            counts["messages"] += 1
            counts["windows"] += len(item.points)
            if item.points:
                received[hour_of(env.ts)] += len(item.points)
            if change.opened is not None:
                counts["gaps_opened"] += 1
                self._opened(agent, change.opened, env.seq)
            if change.arrival is Arrival.REORDER:
                counts["reorders"] += 1
                self._tell(agent, "reorder", logging.INFO,
                           "agent %s: message %d arrived after %d (out of order)",
                           agent, env.seq, ledger.highest)
            self._closed(agent, change.filled, now, f"message {env.seq} arrived")
            self._given_up(row, agent, change.given_up)
            if not item.health:
                continue  # only health reports carry undeliverable spans: skip the scan
            for report in env.items:
                if isinstance(report, Health) and report.undeliverable:
                    for span in report.undeliverable:
                        self._undeliverable(row, ledger, agent, span, env.ts, now, lost)
        for name, value in counts.items():
            setattr(row, name, getattr(row, name) + value)
        store_ledger(row, ledger, now)
        return received, lost

    def _undeliverable(
        self, row: AgentDelivery, ledger: Ledger, agent: str, span: Undeliverable,
        reported_at: datetime, now: datetime, lost: Counter[datetime],
    ) -> None:
        change = ledger.account(span.first, span.last, now)
        if change.opened is not None:
            row.gaps_opened += 1
            self._opened(agent, change.opened, None)
        self._closed(agent, change.filled, now, f"the agent reported it {span.reason}")
        self._given_up(row, agent, change.given_up)
        if not change.seqs:
            return  # reported before, or every seq of it was received after all
        size = span.last - span.first + 1
        windows = apportion(span.windows, change.seqs, size)
        if span.reason == "dropped":
            row.dropped_messages += change.seqs
            row.dropped_windows += windows
        else:
            row.gone_messages += change.seqs
            row.gone_windows += windows
        first_at = span.first_at or span.last_at or reported_at
        last_at = span.last_at or first_at
        lost.update(spread(windows, first_at, last_at))
        self._tell(agent, span.reason, logging.WARNING,
                   "agent %s: messages %d..%d (%d windows) are %s: they will never arrive",
                   agent, span.first, span.last, span.windows, span.reason)

    # -- logging ------------------------------------------------------------------------
    def _tell(self, agent: str, kind: str, level: int, msg: str, *args: object) -> None:
        loud = (agent, kind) not in self._told
        self._told.add((agent, kind))
        logger.log(level if loud else logging.DEBUG, msg, *args)

    def _opened(self, agent: str, gap: Gap, seq: int | None) -> None:
        after = "" if seq is None else f" (received {seq} after {gap.first - 1})"
        self._tell(agent, "gap", logging.WARNING,
                   "agent %s: messages %d..%d missing%s; asking for them if still missing "
                   "in %g s", agent, gap.first, gap.last, after, self.grace_s)

    def _closed(self, agent: str, filled: tuple[Gap, ...], now: datetime, why: str) -> None:
        for gap in filled:
            # Most gaps are reorders that close within the grace; only those asked for are
            # news.
            asked = now - gap.since >= timedelta(seconds=self.grace_s)
            logger.log(logging.INFO if asked else logging.DEBUG,
                       "agent %s: gap %d..%d filled after %.1f s (%s)", agent, gap.first,
                       gap.last, (now - gap.since).total_seconds(), why)

    def _given_up(self, row: AgentDelivery, agent: str, gaps: tuple[Gap, ...]) -> None:
        if gaps:
            row.given_up += sum(g.size for g in gaps)
            self._tell(agent, "given_up", logging.WARNING,
                       "agent %s: more than %d gaps at once; no longer asking for the %d "
                       "oldest (messages %d..%d)", agent, MAX_GAPS, len(gaps), gaps[0].first,
                       gaps[-1].last)


def new_row(agent: str) -> AgentDelivery:
    """An agent's row before anything was heard from it: nothing stored."""
    return AgentDelivery(
        agent_id=agent, stored_through=-1, top_seq=-1, highest_seq=-1,
        ranges=Ledger().to_json(), outstanding=0, messages=0, windows=0, duplicates=0,
        gaps_opened=0, reorders=0, resets=0, given_up=0, dropped_messages=0,
        dropped_windows=0, gone_messages=0, gone_windows=0, resend_requests=0,
    )


def ledger_of(row: AgentDelivery) -> Ledger:
    """The ledger a row holds."""
    return Ledger.from_json(
        row.ranges, stored_through=row.stored_through, top=row.top_seq,
        highest=row.highest_seq, latest_sent=row.latest_sent_at,
    )


def store_ledger(row: AgentDelivery, ledger: Ledger, now: datetime) -> None:
    """Write ``ledger`` back into ``row``."""
    row.stored_through, row.top_seq = ledger.stored_through, ledger.top
    row.highest_seq, row.latest_sent_at = ledger.highest, ledger.latest_sent
    row.ranges = ledger.to_json()
    row.outstanding = ledger.outstanding
    row.updated_at = now


def _locked(session: Session, agent: str) -> AgentDelivery:
    """The agent's row, locked for this transaction (created on first contact)."""
    row = session.get(AgentDelivery, agent, with_for_update=True)
    if row is not None:
        return row
    row = new_row(agent)
    try:
        # Two replicas may meet an agent for the first time at once.
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        found = session.get(AgentDelivery, agent, with_for_update=True)
        if found is None:
            raise
        row = found
    return row


def _add_hours(
    session: Session, hours: dict[str, tuple[Counter[datetime], Counter[datetime]]]
) -> None:
    """Add each agent's windows received and undeliverable to its hour buckets. The
    buckets that exist are loaded in one SELECT (a superset: every agent with every hour);
    ``session.get`` then finds them in the session."""
    agents = sorted(hours)
    wanted = sorted({h for received, lost in hours.values() for h in (*received, *lost)})
    if not wanted:
        return
    # Held here: the session's identity map keeps an unchanged object only while someone
    # else refers to it, and without this every get() below was one more SELECT.
    loaded: list[DeliveryHour] = []
    for start in range(0, len(agents), _CHUNK):
        chunk = agents[start:start + _CHUNK]
        loaded += session.scalars(select(DeliveryHour).where(
            DeliveryHour.agent_id.in_(chunk), DeliveryHour.hour.in_(wanted)))
    for agent in agents:
        received, lost = hours[agent]
        for hour in sorted(set(received) | set(lost)):
            bucket = session.get(DeliveryHour, (agent, hour))
            if bucket is None:
                bucket = DeliveryHour(agent_id=agent, hour=hour, windows_received=0,
                                      windows_undeliverable=0)
                session.add(bucket)
            bucket.windows_received += received[hour]
            bucket.windows_undeliverable += lost[hour]
