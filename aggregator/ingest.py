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
4. one SQL transaction: seen msg_ids (``dedupe``), quarantine rows (``quarantine``), then
   the accepted batch goes to each reaction in turn (``reactions``: the agent registry,
   the maintenance rule, ...), all in that same transaction. The reactions that account
   for messages (agents, delivery) see the whole batch; the others see it in event-time
   slices (``reactions.eventtime``: cut at its drift events, so a backlog is judged as it
   was live). Envelopes of a shadow model (``ModelRef.role == "shadow"``) are stored and
   confirmed like any other, but reach only the accounting reactions: no rule state,
   condition or ticket comes of them.

Only when ``handle_batch`` returns may the subscriber acknowledge the messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast
from uuid import UUID

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from aggregator import dedupe
from aggregator.db import SessionFactory
from aggregator.errors import DatabaseUnavailableError
from aggregator.quarantine import RejectionLog, quarantine_row
from aggregator.reactions import Batch, Reaction, eventtime, standard
from aggregator.series import SeriesStore
from aggregator.settings import Settings
from aggregator.validate import DataMessage, Parsed, RawMessage, Rejected, StatusMessage, parse

__all__ = ["IngestCounts", "Ingestor", "Outcome", "RawMessage"]

logger = logging.getLogger(__name__)

# Pruning old msg_ids is one indexed DELETE; every ten minutes is plenty.
_PRUNE_EVERY_S = 600.0
# Reactions that account for messages (who sent what, which seqs are stored), not for what
# the items say: they see a shadow model's messages like any other.
_ACCOUNTING = frozenset({"agents", "delivery"})

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
        ``dedupe_retention_s``, and what the reactions read.
    reactions
        What follows a stored batch, in order; ``reactions.standard(settings)`` if None.

    Thread safety: ``handle_batch`` is called by one worker thread; the counters may be
    read from any thread.
    """

    def __init__(
        self,
        series: SeriesStore,
        session_factory: SessionFactory,
        settings: Settings,
        reactions: Sequence[Reaction] | None = None,
    ) -> None:
        self.series = series
        self.session_factory = session_factory
        self.settings = settings
        self.reactions = list(standard(settings) if reactions is None else reactions)
        self._lock = threading.Lock()
        self._rejected: Counter[str] = Counter()
        self._accepted = 0
        self._duplicates = 0
        self._predictions = 0
        self._drift_events = 0
        self._health_reports = 0
        self._statuses = 0
        self._rejections = RejectionLog()
        self._next_prune = 0.0  # monotonic time of the next prune of seen msg_ids
        # Told how long each successful series store write took (seconds): /metrics.
        self.on_series_write: Callable[[float], None] = lambda _seconds: None

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
        # Each data message's msg_id as stored, made once (dedupe reads it three times).
        ids = {i: str(item.envelope.msg_id) for i, item in enumerate(parsed)
               if isinstance(item, DataMessage)}
        fresh = self._fresh(ids)
        data = [_as_data(parsed[i]) for i in sorted(fresh)]
        started = time.perf_counter()
        self.series.write(
            [p for d in data for p in d.points],
            drift=[e for d in data for e in d.drift],
            health=[h for d in data for h in d.health],
        )
        self.on_series_write(time.perf_counter() - started)
        try:
            with self.session_factory() as session, session.begin():
                fresh = self._commit(session, parsed, ids, fresh, now)
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
                pruned = dedupe.forget_before(session, cutoff)
        except OperationalError as exc:
            # Pruning can wait for the next round; the batch itself is already handled.
            logger.warning("could not prune seen msg_ids: %s", exc.orig)
            return 0
        if pruned:
            logger.info("forgot %d msg_ids handled before %s", pruned, cutoff.isoformat())
        return pruned

    # -- steps --------------------------------------------------------------------------
    def _fresh(self, ids: dict[int, str]) -> set[int]:
        """Indexes of data messages whose msg_id (``ids``: by index) is new (in this batch
        and in the DB)."""
        first: dict[str, int] = {}
        for i, msg_id in ids.items():
            first.setdefault(msg_id, i)
        if not first:
            return set()
        try:
            with self.session_factory() as session, session.begin():
                seen = dedupe.seen(session, first)
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"SQL database: {exc.orig!r}") from exc
        return {i for msg_id, i in first.items() if msg_id not in seen}

    def _commit(
        self, session: Session, parsed: list[Parsed], ids: dict[int, str], fresh: set[int],
        now: datetime,
    ) -> set[int]:
        # Checked again inside the transaction: another replica may have handled one of
        # these since _fresh(); its points were just rewritten (harmless), but it must not
        # count twice or feed the reactions twice.
        seen = dedupe.seen(session, {ids[i] for i in fresh})
        fresh = {i for i in fresh if ids[i] not in seen}
        order = sorted(fresh)
        data = [_as_data(parsed[i]) for i in order]
        dedupe.mark_seen(session, data, now, [ids[i] for i in order])
        for rejected in parsed:
            if isinstance(rejected, Rejected):
                session.add(quarantine_row(rejected, now))
        statuses = [p for p in parsed if isinstance(p, StatusMessage)]
        batch = Batch(data, statuses, now)
        for reaction in self.reactions:
            if reaction.name in _ACCOUNTING:
                reaction.react(session, batch)
        # A shadow model is being judged, not trusted: its messages are stored, deduped and
        # confirmed (the accounting reactions above saw them), but no rule, condition or
        # ticket ever sees them, nor its health reports' estimates.
        judged = batch
        if any(d.envelope.model.shadow for d in data):
            judged = Batch([d for d in data if not d.envelope.model.shadow], statuses, now)
        for part in eventtime.slices(judged):
            for reaction in self.reactions:
                if reaction.name not in _ACCOUNTING:
                    reaction.react(session, part)
        return fresh

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
                self._rejections.log(item)


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
