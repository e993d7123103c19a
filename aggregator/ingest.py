"""Ingest: raw MQTT messages in; stored predictions, drift events, health reports, agents
and tickets out.

Per batch, in this order (the order is the guarantee):

1. parse the topic, decode the payload, check semantics (``validate.parse``);
   a bad message is *rejected*: counted by reason, quarantined with its raw bytes, logged
   once per reason at WARNING (then at DEBUG); it never raises;
2. drop msg_ids already seen (counted as *duplicate*);
3. write every prediction, drift event and health report of the batch to the series store
   in ONE call; if the store is down this raises ``SeriesUnavailableError`` and nothing is
   marked seen, so the caller retries the same batch later (a rewrite replaces identical
   points: nothing doubles);
4. one SQL transaction: seen msg_ids, quarantine rows, agents, the maintenance rule per
   (site, asset) in window_end order, tickets opened or escalated. Asset names are only
   unique within a site, so the same name at two sites has two windows and two tickets.

Only when ``handle_batch`` returns may the subscriber acknowledge the messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast
from uuid import UUID

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from aggregator import tickets
from aggregator.db import (
    QUARANTINE_MAX_BYTES,
    AgentRecord,
    QuarantinedMessage,
    RuleState,
    SeenMessage,
    SessionFactory,
)
from aggregator.errors import DatabaseUnavailableError
from aggregator.rules import MaintenanceRule, ScoredWindow
from aggregator.series import PredictionPoint, SeriesStore
from aggregator.settings import Settings
from aggregator.validate import DataMessage, Parsed, RawMessage, Rejected, StatusMessage, parse
from contract.wire import TopicParts

__all__ = ["IngestCounts", "Ingestor", "Outcome", "RawMessage"]

logger = logging.getLogger(__name__)

LOG_PAYLOAD_BYTES = 200


# Pruning old msg_ids is one indexed DELETE; every ten minutes is plenty.
_PRUNE_EVERY_S = 600.0

@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message. ``reason`` is the rejection code (``contract.wire``'s)."""

    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    error: str = ""
    msg_id: UUID | None = None
    predictions: int = 0
    drift_events: int = 0
    health_reports: int = 0


@dataclass(frozen=True, slots=True)
class IngestCounts:
    """Cumulative counters since the ingestor was built (exposed by ``/healthz``)."""

    accepted: int
    duplicates: int
    predictions: int
    drift_events: int
    health_reports: int
    statuses: int
    rejected: dict[str, int]


class Ingestor:
    """Turns batches of raw MQTT messages into stored points, agents and tickets.

    Parameters
    ----------
    series
        Where predictions, drift events and health reports go (``open_series(settings)``).
    session_factory
        SQL sessions for dedupe, quarantine, agents, rule state and tickets.
    settings
        Only ``rule_k`` and ``rule_n`` are read.

    Thread safety: ``handle_batch`` is called by one worker thread; the counters may be
    read from any thread.
    """

    def __init__(
        self, series: SeriesStore, session_factory: SessionFactory, settings: Settings
    ) -> None:
        self.series = series
        self.session_factory = session_factory
        self.settings = settings
        self._lock = threading.Lock()
        self._rejected: Counter[str] = Counter()
        self._accepted = 0
        self._duplicates = 0
        self._predictions = 0
        self._drift_events = 0
        self._health_reports = 0
        self._statuses = 0
        self._warned: set[str] = set()
        self._next_prune = 0.0  # monotonic time of the next prune of seen msg_ids

    # -- counters -----------------------------------------------------------------------
    @property
    def rejected(self) -> Counter[str]:
        """Rejected messages by reason (a copy)."""
        with self._lock:
            return Counter(self._rejected)

    @property
    def counts(self) -> IngestCounts:
        with self._lock:
            return IngestCounts(
                accepted=self._accepted,
                duplicates=self._duplicates,
                predictions=self._predictions,
                drift_events=self._drift_events,
                health_reports=self._health_reports,
                statuses=self._statuses,
                rejected=dict(self._rejected),
            )

    # -- entry points -------------------------------------------------------------------
    def handle(self, topic: str, raw: bytes) -> Outcome:
        """Handle one message (a batch of one)."""
        return self.handle_batch([RawMessage(topic, raw)])[0]

    def handle_batch(self, messages: list[RawMessage]) -> list[Outcome]:
        """Handle a batch; outcomes come back in the order of ``messages``.

        Raises ``SeriesUnavailableError`` / ``DatabaseUnavailableError`` (nothing marked
        seen: retry the same batch later). Bad input never raises.
        """
        now = datetime.now(UTC)
        parsed = [parse(m) for m in messages]
        fresh = self._fresh(parsed)
        data = [_as_data(parsed[i]) for i in sorted(fresh)]
        self.series.write(
            [p for d in data for p in d.points],
            drift=[e for d in data for e in d.drift],
            health=[h for d in data for h in d.health],
        )
        try:
            with self.session_factory() as session, session.begin():
                fresh = self._commit(session, parsed, fresh, now)
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"SQL database: {exc.orig!r}") from exc
        outcomes = [_outcome(item, i in fresh) for i, item in enumerate(parsed)]
        self._count(parsed, outcomes)
        if time.monotonic() >= self._next_prune:
            self.prune_seen(now)
        return outcomes

    def prune_seen(self, now: datetime) -> int:
        """Forget msg_ids handled more than ``dedupe_retention_s`` ago; return how many."""
        self._next_prune = time.monotonic() + _PRUNE_EVERY_S
        cutoff = now - timedelta(seconds=self.settings.dedupe_retention_s)
        try:
            with self.session_factory() as session, session.begin():
                result = session.execute(
                    delete(SeenMessage).where(SeenMessage.received_at < cutoff)
                )
        except OperationalError as exc:
            # Pruning can wait for the next round; the batch itself is already handled.
            logger.warning("could not prune seen msg_ids: %s", exc.orig)
            return 0
        pruned = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if pruned:
            logger.info("forgot %d msg_ids handled before %s", pruned, cutoff.isoformat())
        return pruned

    # -- steps --------------------------------------------------------------------------
    def _fresh(self, parsed: list[Parsed]) -> set[int]:
        """Indexes of data messages whose msg_id is new (in this batch and in the DB)."""
        first: dict[str, int] = {}
        for i, item in enumerate(parsed):
            if isinstance(item, DataMessage):
                first.setdefault(str(item.envelope.msg_id), i)
        if not first:
            return set()
        try:
            with self.session_factory() as session, session.begin():
                seen = _seen(session, first)
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"SQL database: {exc.orig!r}") from exc
        return {i for msg_id, i in first.items() if msg_id not in seen}

    def _commit(
        self, session: Session, parsed: list[Parsed], fresh: set[int], now: datetime
    ) -> set[int]:
        # Checked again inside the transaction: another replica may have handled one of
        # these since _fresh(); its points were just rewritten (harmless), but it must not
        # count twice or feed the rule twice.
        seen = _seen(session, {str(_as_data(parsed[i]).envelope.msg_id) for i in fresh})
        fresh = {i for i in fresh if str(_as_data(parsed[i]).envelope.msg_id) not in seen}
        data = [_as_data(parsed[i]) for i in sorted(fresh)]
        if data:
            # One multi-row INSERT (ORM bulk), not a unit-of-work object per message.
            seen_rows = [
                {"msg_id": str(d.envelope.msg_id), "agent": d.envelope.agent,
                 "seq": d.envelope.seq, "received_at": now}
                for d in data
            ]
            session.execute(insert(SeenMessage), seen_rows)
        for rejected in parsed:
            if isinstance(rejected, Rejected):
                session.add(_quarantine_row(rejected, now))
        _update_agents(session, data, [p for p in parsed if isinstance(p, StatusMessage)], now)
        self._run_rules(session, data, now)
        return fresh

    def _run_rules(self, session: Session, data: list[DataMessage], now: datetime) -> None:
        rule = MaintenanceRule(self.settings.rule_k, self.settings.rule_n)
        # Keyed by (site, asset): asset names are only unique within a site.
        by_key: dict[tuple[str, str], list[tuple[PredictionPoint, float]]] = defaultdict(list)
        for item in data:
            for point in item.points:
                by_key[point.site, point.asset].append((point, item.envelope.model.threshold))
        for key in sorted(by_key):  # a fixed order: replicas lock rows alike, no deadlock
            site, asset = key
            state = _rule_state(session, rule.name, site, asset, now)
            rule.restore(key, (ScoredWindow.from_json(w) for w in state.windows))
            trigger: tuple[PredictionPoint, float, list[ScoredWindow]] | None = None
            for point, threshold in sorted(by_key[key], key=lambda pt: pt[0].window_end):
                if rule.update(key, ScoredWindow(point.window_end, point.score, point.alert)):
                    trigger = (point, threshold, rule.windows(key))
            state.windows = [w.to_json() for w in rule.windows(key)]
            state.updated_at = now
            if trigger is not None:
                # One escalation per (site, asset) and batch, with its last trigger's evidence.
                point, threshold, windows = trigger
                tickets.open_or_escalate(
                    session, asset, "maintenance",
                    {"k": rule.k, "n": rule.n, "scores": [w.to_json() for w in windows]},
                    agent=point.agent, site=site, line=point.line,
                    model_name=point.model, model_version=point.model_version,
                    threshold=threshold, now=now,
                    cooldown=timedelta(seconds=self.settings.rule_cooldown_s),
                )

    def _count(self, parsed: list[Parsed], outcomes: list[Outcome]) -> None:
        with self._lock:
            for item, outcome in zip(parsed, outcomes, strict=True):
                if outcome.status == "accepted":
                    self._accepted += 1
                    self._predictions += outcome.predictions
                    self._drift_events += outcome.drift_events
                    self._health_reports += outcome.health_reports
                    self._statuses += isinstance(item, StatusMessage)
                elif outcome.status == "duplicate":
                    self._duplicates += 1
                else:
                    self._rejected[outcome.reason or "invalid"] += 1
        for item in parsed:
            if isinstance(item, Rejected):
                self._log_rejection(item)

    def _log_rejection(self, item: Rejected) -> None:
        reason = item.error.reason
        first = reason not in self._warned
        self._warned.add(reason)
        payload = item.message.payload
        shown = payload[:LOG_PAYLOAD_BYTES]
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "rejected message on %r: %s; payload (%d bytes) %r%s%s",
            item.message.topic,
            item.error,
            len(payload),
            shown,
            "..." if len(payload) > len(shown) else "",
            f" (further {reason!r} rejections are logged at DEBUG)" if first else "",
        )


def _as_data(item: Parsed) -> DataMessage:
    return cast(DataMessage, item)  # callers index only data messages


def _outcome(item: Parsed, fresh: bool) -> Outcome:
    if isinstance(item, Rejected):
        return Outcome("rejected", reason=item.error.reason, error=item.error.message)
    if isinstance(item, StatusMessage):
        return Outcome("accepted")
    if not fresh:
        return Outcome("duplicate", msg_id=item.envelope.msg_id)
    return Outcome(
        "accepted", msg_id=item.envelope.msg_id, predictions=len(item.points),
        drift_events=len(item.drift), health_reports=len(item.health),
    )


# -- SQL steps ----------------------------------------------------------------------------
def _seen(session: Session, msg_ids: Iterable[str]) -> set[str]:
    ids = list(msg_ids)
    found: set[str] = set()
    for start in range(0, len(ids), 500):  # stay under every backend's parameter limit
        chunk = ids[start : start + 500]
        found.update(session.scalars(select(SeenMessage.msg_id).where(SeenMessage.msg_id.in_(chunk))))
    return found


def _rule_state(
    session: Session, rule: str, site: str, asset: str, now: datetime
) -> RuleState:
    """The (site, asset)'s rule row, locked for this transaction (created if new)."""
    state = session.get(RuleState, (rule, site, asset), with_for_update=True)
    if state is not None:
        return state
    state = RuleState(rule=rule, site=site, asset=asset, windows=[], updated_at=now)
    try:
        with session.begin_nested():  # another replica may create the same row right now
            session.add(state)
    except IntegrityError:
        state = session.get(RuleState, (rule, site, asset), with_for_update=True)
        if state is None:
            raise
    return state


def _quarantine_row(item: Rejected, now: datetime) -> QuarantinedMessage:
    payload = bytes(item.message.payload)
    return QuarantinedMessage(
        received_at=now, topic=item.message.topic, reason=item.error.reason,
        error=item.error.message, payload=payload[:QUARANTINE_MAX_BYTES], payload_len=len(payload),
    )


def _agent(session: Session, parts: TopicParts, rows: dict[str, AgentRecord]) -> AgentRecord:
    """The agent's row, locked for this transaction (created on first contact)."""
    row = rows.get(parts.agent) or session.get(AgentRecord, parts.agent, with_for_update=True)
    if row is None:
        row = AgentRecord(
            agent_id=parts.agent, site=parts.site, line=parts.line, state="unknown",
            predictions_count=0,
        )
        try:
            # Replicas share an agent's messages, so two may meet it for the first time.
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            row = session.get(AgentRecord, parts.agent, with_for_update=True)
            if row is None:
                raise
    rows[parts.agent] = row
    return row


def _update_agents(
    session: Session, data: list[DataMessage], statuses: list[StatusMessage], now: datetime
) -> None:
    rows: dict[str, AgentRecord] = {}
    for item in sorted(data, key=lambda d: (d.envelope.agent, d.envelope.seq)):
        row = _agent(session, item.parts, rows)
        env = item.envelope
        row.site, row.line, row.last_seen = item.parts.site, item.parts.line, now
        if row.last_seq is None or env.seq >= row.last_seq:
            row.last_seq = env.seq
            row.model_name, row.model_version = env.model.name, env.model.version
        row.predictions_count += len(item.points)
        if row.state == "unknown":
            row.state = "online"  # it is sending; its retained status will say more
    for update in sorted(statuses, key=lambda s: s.status.ts):
        row = _agent(session, update.parts, rows)
        status = update.status
        # Retained statuses can arrive late (after a reconnect); the newest ts wins.
        if row.state_at is None or status.ts >= row.state_at:
            row.state, row.state_at, row.last_seen = status.state, status.ts, now
            if status.model is not None:
                row.model_name, row.model_version = status.model.name, status.model.version
