"""Confirmations: tell each agent, end to end, which of its messages are stored.

A broker's PUBACK only means the broker has a message. Once a batch is committed and
acked, :class:`Confirmer` publishes each touched agent's ``contract.wire.Delivery``
(retained, QoS 1, on ``command_topic(site, line, agent, "delivery")``) as the SQL rows
say it, committed: ``stored_through``, the gaps open longer than
``delivery_gap_grace_s`` in ``missing``, and the agent's latest ``resend`` id.

- Coalesced: at most one publish per agent per ``MIN_INTERVAL_S``; a change that comes
  within it is published when the interval ends, so the latest state is always sent.
- A gap is published again when its grace ends (it then enters ``missing``) and every
  ``delivery_republish_s`` while the agent has gaps: a request lost with a broker is
  repeated.
- A connection on which the broker kept no session for us (``session_present`` false):
  whatever the broker held for us may be gone, so every known agent gets a new
  ``resend`` id (kept in SQL and repeated in every later delivery, since the retained
  message is all an agent that was away will see).

Threads: ``stored`` (the ingest worker) and ``connected`` (paho's network thread) only
note what to do; one thread of its own reads SQL and publishes, on the subscriber's paho
client. Replicas publish for the agents they ingest; each publishes committed state, and
a stale one is corrected by the next change or republish.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from aggregator.db import AgentDelivery, AgentRecord, SessionFactory
from aggregator.reactions.delivery import ledger_of, new_row
from aggregator.settings import Settings
from contract.wire import (
    ITEM_KINDS,
    MAX_SPANS,
    SCHEMA,
    Delivery,
    Span,
    WireError,
    command_topic,
    encode,
    parse_topic,
)
from outage.failures import FailureLog

__all__ = ["MIN_INTERVAL_S", "Confirmer", "ConfirmerCounts"]

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.5
RETRY_S = 2.0  # after SQL or the broker refused a round
IDLE_S = 1.0  # longest sleep with nothing due (a stop is noticed at once anyway)
_CHUNK = 500  # bound parameters in one IN (...)


@dataclass(frozen=True, slots=True)
class ConfirmerCounts:
    """What this process published (per-process figures: they restart at 0)."""

    published: int
    failures: int
    resend_rounds: int


class Confirmer:
    """Publishes agents' ``Delivery`` commands on ``client`` (see the module docstring).

    Parameters
    ----------
    settings
        ``delivery_gap_grace_s``, ``delivery_republish_s``.
    session_factory
        Where the committed ``agent_delivery`` and ``agents`` rows are read.
    client
        The subscriber's paho client; publishes only while it is connected.
    clock
        Monotonic seconds (for the coalescing and the republish schedule).
    autostart
        Start the thread at the first thing to do; without it, nothing happens until
        ``run_due`` is called (tests drive it so, with their own clock).
    """

    def __init__(
        self, settings: Settings, session_factory: SessionFactory, client: mqtt.Client,
        *, clock: Callable[[], float] = time.monotonic, autostart: bool = True,
    ) -> None:
        self.grace_s = settings.delivery_gap_grace_s
        self.republish_s = settings.delivery_republish_s
        self.session_factory = session_factory
        self.client = client
        self._clock = clock
        self._wake = threading.Condition()
        self._due: dict[str, float] = {}  # agent -> when to publish it next
        self._last: dict[str, float] = {}  # agent -> when it was last published
        self._resend = False
        self._sweep = False
        self._stopping = False
        self._poked = False
        self._autostart = autostart
        self._thread: threading.Thread | None = None
        self._failures = FailureLog(logger)
        self._published = 0
        self._failed = 0
        self._resend_rounds = 0

    @property
    def counts(self) -> ConfirmerCounts:
        return ConfirmerCounts(self._published, self._failed, self._resend_rounds)

    # -- what to do (other threads: no I/O) ------------------------------------------------
    def stored(self, topics: Iterable[str]) -> None:
        """The messages received on ``topics`` are committed: confirm to their agents."""
        agents = set()
        for name in topics:
            try:
                parts = parse_topic(name)
            except WireError:
                continue
            if parts.kind in ITEM_KINDS:
                agents.add(parts.agent)
        if agents:
            self._schedule(agents, self._clock())

    def connected(self, session_present: bool) -> None:
        """A connection was accepted; without its session, everyone is asked to resend."""
        with self._wake:
            self._resend = self._resend or not session_present
            self._sweep = True
            self._poked = True
            self._wake.notify()
        self._ensure_started()

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the thread (what is still due is published by the next start, if any)."""
        with self._wake:
            self._stopping = True
            self._poked = True
            self._wake.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _schedule(self, agents: Iterable[str], at: float) -> None:
        with self._wake:
            for agent in agents:
                soonest = max(at, self._last.get(agent, -MIN_INTERVAL_S) + MIN_INTERVAL_S)
                self._due[agent] = min(self._due.get(agent, soonest), soonest)
            self._poked = True
            self._wake.notify()
        self._ensure_started()

    def _ensure_started(self) -> None:
        with self._wake:
            if not self._autostart or (self._thread is not None and self._thread.is_alive()):
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="delivery-confirm",
                                             daemon=True)
            self._thread.start()

    # -- the thread ------------------------------------------------------------------------
    def run_due(self) -> float:
        """Do what is due now: ask for a resend, find the agents with gaps after a
        connection, publish the agents whose time has come. Return the seconds until the
        next thing is due (at most ``IDLE_S``). The thread calls it in a loop."""
        with self._wake:
            now = self._clock()
            if not self.client.is_connected():
                return IDLE_S  # connected() wakes the thread
            due = sorted(a for a, at in self._due.items() if at <= now)
            if not (due or self._resend or self._sweep):
                upcoming = min(self._due.values(), default=now + IDLE_S)
                return max(0.0, min(upcoming - now, IDLE_S))
            resend, sweep = self._resend, self._sweep
            self._resend = self._sweep = False
            for agent in due:
                del self._due[agent]
                self._last[agent] = now
        try:
            if resend:
                due = sorted(set(due) | self._ask_resend())
            if sweep:
                due = sorted(set(due) | self._with_gaps())
            self._publish(due)
        except SQLAlchemyError as exc:
            self._failed += 1
            self._failures.failed(type(exc).__name__,
                                  f"cannot read what is stored for {len(due)} agents: {exc}",
                                  retry_in_s=RETRY_S)
            self._retry(due, resend, sweep)
        except Exception as exc:  # a bug: keep confirming the others, loudly
            self._failed += 1
            self._failures.failed(f"bug-{type(exc).__name__}",
                                  f"confirming deliveries failed: {exc!r}",
                                  retry_in_s=RETRY_S, level=logging.ERROR, exc_info=exc)
            self._retry(due, resend, sweep)
        else:
            self._failures.recovered("confirming deliveries again")
        return 0.0

    def _run(self) -> None:
        while True:
            wait = self.run_due()
            with self._wake:
                if self._stopping:
                    return
                # _poked: something was scheduled while run_due worked; do not sleep on it.
                if wait > 0 and not self._poked:
                    self._wake.wait(wait)
                self._poked = False

    def _retry(self, agents: list[str], resend: bool, sweep: bool) -> None:
        with self._wake:
            self._resend = self._resend or resend
            self._sweep = self._sweep or sweep
        self._schedule(agents, self._clock() + RETRY_S)

    def _publish(self, agents: list[str]) -> None:
        if not agents:
            return
        with self.session_factory() as session:
            found = _read(session, agents)
        now, mono = datetime.now(UTC), self._clock()
        later: dict[str, float] = {}
        for row, site, line in found:
            ledger = ledger_of(row)
            delivery = Delivery(
                schema_=SCHEMA, agent=row.agent_id, ts=now,
                stored_through=ledger.stored_through,
                missing=[Span(first=g.first, last=g.last)
                         for g in ledger.missing(now, self.grace_s, MAX_SPANS)],
                resend=row.resend_id,
            )
            topic = command_topic(site, line, row.agent_id, "delivery")
            info = self.client.publish(topic, encode(delivery), qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._failed += 1
                self._failures.failed("publish", f"cannot publish to {topic}: "
                                      f"{mqtt.error_string(info.rc)}", retry_in_s=RETRY_S)
                later[row.agent_id] = mono + RETRY_S
                continue
            self._published += 1
            logger.debug("confirmed to %s: stored through %d, missing %s, resend %s",
                         row.agent_id, delivery.stored_through,
                         [(s.first, s.last) for s in delivery.missing], delivery.resend)
            grace_ends = ledger.next_due(now, self.grace_s)
            if grace_ends is not None:
                later[row.agent_id] = mono + (grace_ends - now).total_seconds()
            if ledger.gaps:
                again = mono + self.republish_s
                later[row.agent_id] = min(later.get(row.agent_id, again), again)
        for agent, at in later.items():
            self._schedule([agent], at)

    def _ask_resend(self) -> set[str]:
        """Give every known agent a new resend id; return them."""
        resend_id = uuid.uuid4().hex
        with self.session_factory() as session, session.begin():
            agents = sorted(session.scalars(select(AgentRecord.agent_id)))
            have: set[str] = set()
            for start in range(0, len(agents), _CHUNK):
                chunk = agents[start:start + _CHUNK]
                have.update(session.scalars(
                    select(AgentDelivery.agent_id).where(AgentDelivery.agent_id.in_(chunk))))
            for agent in agents:
                if agent not in have:
                    _create(session, agent)
            # One statement per agent, in order: ingest locks these rows in the same order.
            for agent in agents:
                session.execute(
                    update(AgentDelivery).where(AgentDelivery.agent_id == agent).values(
                        resend_id=resend_id,
                        resend_requests=AgentDelivery.resend_requests + 1))
        if agents:
            self._resend_rounds += 1
            logger.info("the broker kept no session for us, so messages meant for us may be "
                        "lost: asking %d agents to send again what is not confirmed "
                        "(resend %s)", len(agents), resend_id)
        return set(agents)

    def _with_gaps(self) -> set[str]:
        with self.session_factory() as session:
            return set(session.scalars(
                select(AgentDelivery.agent_id).where(AgentDelivery.outstanding > 0)))


def _read(session: Session, agents: list[str]) -> list[tuple[AgentDelivery, str, str]]:
    rows: list[tuple[AgentDelivery, str, str]] = []
    for start in range(0, len(agents), _CHUNK):
        chunk = agents[start:start + _CHUNK]
        query = (select(AgentDelivery, AgentRecord.site, AgentRecord.line)
                 .join(AgentRecord, AgentRecord.agent_id == AgentDelivery.agent_id)
                 .where(AgentDelivery.agent_id.in_(chunk)))
        rows.extend((row, site, line) for row, site, line in session.execute(query))
    return rows


def _create(session: Session, agent: str) -> None:
    try:
        # The ingest may meet the agent at the same moment on another replica.
        with session.begin_nested():
            session.add(new_row(agent))
    except IntegrityError:
        pass
