"""The notification worker: sends what the outbox holds, with retries, and logs every
attempt.

One thread per aggregator. Each round it claims the notifications that are due (in a
short transaction; replicas sharing PostgreSQL skip each other's claimed rows), sends
them outside any transaction, and writes each outcome (the row's new status and one
delivery log row) in another. A notification is due when its next attempt has come and
no earlier notification of the same incident to the same target is still pending: an
update never overtakes the announcement it refers to. A failed attempt is retried after
``notify_retry_min_s``, doubling up to ``notify_retry_max_s``; after
``notify_max_attempts`` it is given up (``failed``). A target that failed in a round is
not tried again in that round.

Delivery is at least once: a crash between a send and its commit sends it again at the
next claim (after the claim's lease). Every JSON body carries the same ``id`` and an
``Idempotency-Key`` header on every attempt, so a receiver can drop the copy; the
incident itself is recorded once, with the ticket change that caused it.

The andon target publishes on the subscriber's paho client, QoS 1, and counts as sent
when the broker has acknowledged the publish (``wait_for_publish``): this thread, not the
ingest worker, may wait for paho's network thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from aggregator.db import Notification, NotificationAttempt, SessionFactory
from aggregator.notify import andon, bodies
from aggregator.notify.targets import ANDON, TargetConfig
from aggregator.settings import Settings
from contract.wire import andon_topic, encode
from outage.failures import FailureLog

__all__ = ["Notifier", "backoff"]

logger = logging.getLogger(__name__)

IDLE_S = 1.0  # the outbox is polled this often (a commit that records one wakes us)
_BATCH = 50
_SCAN = 500  # pending rows looked at per round to find the due heads of their incidents


def backoff(attempt: int, first_s: float, cap_s: float) -> float:
    """Seconds before the next attempt after ``attempt`` failed ones: doubling, capped.

    >>> [backoff(n, 2.0, 30.0) for n in range(1, 6)]
    [2.0, 4.0, 8.0, 16.0, 30.0]
    """
    return float(min(cap_s, first_s * 2 ** min(attempt - 1, 60)))


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    target: str
    ticket_id: int
    incident: str
    event: str
    announce: bool
    body: dict[str, Any]
    event_at: datetime
    created_at: datetime
    attempts: int
    thread_ref: str | None


@dataclass(frozen=True, slots=True)
class _Result:
    ok: bool
    error: str | None = None
    reference: str | None = None


class Notifier:
    """Sends pending notifications (see the module docstring).

    Parameters
    ----------
    settings
        Targets, retry schedule, timeout, andon kinds.
    session_factory
        Where the outbox and the delivery log are.
    client
        The subscriber's paho client, for the andon; None leaves andon rows pending.
    """

    def __init__(self, settings: Settings, session_factory: SessionFactory,
                 client: mqtt.Client | None, *, clock: Callable[[], datetime] | None = None
                 ) -> None:
        self.targets = {t.name: t for t in settings.notify_targets}
        self.retry_min_s = settings.notify_retry_min_s
        self.retry_max_s = settings.notify_retry_max_s
        self.max_attempts = settings.notify_max_attempts
        self.timeout_s = settings.notify_timeout_s
        self.andon_kinds = tuple(settings.andon_kinds)
        self.session_factory = session_factory
        self.client = client
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lease = timedelta(seconds=2 * self.timeout_s + 30)
        self._http = httpx.Client(timeout=self.timeout_s, follow_redirects=False,
                                  headers={"User-Agent": "linewatch-aggregator"})
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = FailureLog(logger)
        self._lock = threading.Lock()
        self._outcomes: Counter[tuple[str, str]] = Counter()  # (target, status) -> n

    @property
    def outcomes(self) -> dict[tuple[str, str], int]:
        """Attempts by (target, status: sent, error, failed) in this process."""
        with self._lock:
            return dict(self._outcomes)

    def wake(self) -> None:
        """Something was recorded: look at the outbox now."""
        self._wake.set()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """End the thread after the attempt in hand; what is pending stays in the outbox."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._http.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            busy = self.run_due()
            if not busy:
                self._wake.wait(IDLE_S)
                self._wake.clear()

    # -- one round --------------------------------------------------------------------------
    def run_due(self) -> int:
        """Claim what is due, send it, record the outcomes; return how many were tried."""
        try:
            claimed = self._claim(self._clock())
            failed_targets: set[str] = set()
            for row in claimed:
                if self._stopping.is_set():
                    break
                started = self._clock()
                if row.target in failed_targets:
                    result = _Result(False, "not tried: the target failed earlier this round")
                else:
                    result = self._send(row)
                if not result.ok:
                    failed_targets.add(row.target)
                self._finish(row, result, started, self._clock())
        except SQLAlchemyError as exc:
            self._failures.failed(type(exc).__name__, f"cannot read or write the "
                                  f"notification outbox: {exc}", retry_in_s=IDLE_S)
            return 0
        except Exception as exc:  # a bug: keep the worker alive, loudly
            self._failures.failed(f"bug-{type(exc).__name__}", f"sending notifications "
                                  f"failed: {exc!r}", retry_in_s=IDLE_S, level=logging.ERROR,
                                  exc_info=exc)
            return 0
        self._failures.recovered("notification outbox usable again")
        return len(claimed)

    def _nothing_pending(self) -> bool:
        """A read on the raw connection: on SQLite a transaction would take the write lock
        every poll, and the outbox is empty most of the time."""
        with self.session_factory() as session:
            bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        try:
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("SELECT 1 FROM notifications WHERE status = 'pending' LIMIT 1")
                found = cursor.fetchone()
                cursor.close()
            finally:
                raw.close()
        except Exception:  # the driver's own error: the claim's transaction reports it
            return False
        return found is None

    def _claim(self, now: datetime) -> list[_Claimed]:
        if self._nothing_pending():
            return []
        with self.session_factory() as session, session.begin():
            pending = list(session.scalars(
                select(Notification).where(Notification.status == "pending")
                .order_by(Notification.id).limit(_SCAN)))
            heads: dict[tuple[str, str], Notification] = {}
            for row in pending:
                heads.setdefault((row.target, row.incident), row)
            due = [r.id for r in heads.values() if r.next_attempt_at <= now
                   and (r.claimed_until is None or r.claimed_until <= now)][:_BATCH]
            if not due:
                return []
            rows = list(session.scalars(
                select(Notification).where(Notification.id.in_(due),
                                           Notification.status == "pending")
                .order_by(Notification.id).with_for_update(skip_locked=True)))
            refs = self._references(session, rows)
            claimed = []
            for row in rows:
                row.claimed_until = now + self._lease
                claimed.append(_Claimed(
                    row.id, row.target, row.ticket_id, row.incident, row.event, row.announce,
                    dict(row.body), row.event_at, row.created_at, row.attempts,
                    refs.get((row.target, row.incident))))
            return claimed

    @staticmethod
    def _references(session: Any, rows: list[Notification]) -> dict[tuple[str, str], str]:
        incidents = sorted({r.incident for r in rows if not r.announce})
        if not incidents:
            return {}
        found = session.execute(
            select(Notification.target, Notification.incident, Notification.reference)
            .where(Notification.incident.in_(incidents), Notification.announce.is_(True),
                   Notification.reference.is_not(None)))
        return {(t, i): ref for t, i, ref in found}

    def _finish(self, row: _Claimed, result: _Result, started: datetime,
                finished: datetime) -> None:
        attempt = row.attempts + 1
        if result.ok:
            status = "sent"
        elif attempt >= self.max_attempts or row.target not in self.targets \
                and row.target != ANDON:
            status = "failed"
        else:
            status = "error"
        with self.session_factory() as session, session.begin():
            stored = session.get(Notification, row.id, with_for_update=True)
            if stored is None or stored.status != "pending":
                return
            stored.attempts = attempt
            stored.claimed_until = None
            stored.last_error = result.error
            if status == "sent":
                stored.status, stored.sent_at = "sent", finished
                stored.reference = result.reference
            elif status == "failed":
                stored.status = "failed"
            else:
                stored.next_attempt_at = finished + timedelta(
                    seconds=backoff(attempt, self.retry_min_s, self.retry_max_s))
            session.add(NotificationAttempt(
                notification_id=row.id, target=row.target, ticket_id=row.ticket_id,
                event=row.event, attempt=attempt, status=status, error=result.error,
                started_at=started, finished_at=finished))
        with self._lock:
            self._outcomes[row.target, status] += 1
        if status == "failed":
            logger.warning("gave up notifying %s of %s on ticket %d after %d attempts: %s",
                           row.target, row.event, row.ticket_id, attempt, result.error)
        elif status == "error":
            logger.info("notifying %s of %s on ticket %d failed (attempt %d: %s); next in "
                        "%.0f s", row.target, row.event, row.ticket_id, attempt, result.error,
                        backoff(attempt, self.retry_min_s, self.retry_max_s))

    # -- sending ------------------------------------------------------------------------------
    def _send(self, row: _Claimed) -> _Result:
        if row.target == ANDON:
            return self._publish_andon(row)
        target = self.targets.get(row.target)
        if target is None:
            return _Result(False, f"no target {row.target!r} is configured any more")
        return self._post(target, row)

    def _post(self, target: TargetConfig, row: _Claimed) -> _Result:
        ticket = {k: v for k, v in row.body.items() if k != "publish_event"}
        body = bodies.render(
            target.kind, notification_id=row.id, incident=row.incident, event=row.event,
            announce=row.announce, event_at=row.event_at.isoformat(),
            created_at=row.created_at.isoformat(), ticket=ticket,
            channel=target.slack_channel, thread_ts=row.thread_ref)
        try:
            headers = {"Idempotency-Key": f"linewatch-notification-{row.id}",
                       **target.headers()}
        except ValueError as exc:
            return _Result(False, str(exc))
        try:
            response = self._http.post(target.url, json=body, headers=headers)
        except httpx.TimeoutException:
            return _Result(False, f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            # The exception's text may hold the URL, and a webhook URL is often a secret.
            return _Result(False, f"cannot connect ({type(exc).__name__})")
        if not response.is_success:
            return _Result(False, f"HTTP {response.status_code}")
        return _slack_answer(response) if target.kind == "slack" else _Result(True)

    def _publish_andon(self, row: _Claimed) -> _Result:
        client = self.client
        if client is None or not client.is_connected():
            return _Result(False, "not connected to the broker")
        ticket = row.body
        now = self._clock()
        with self.session_factory() as session:
            state = andon.state_of(session, ticket["site"], ticket["line"], self.andon_kinds,
                                   now)
        messages = [(andon_topic(state.site, state.line, "state"), encode(state), True)]
        if ticket.get("publish_event", True):
            event = andon.event_of(row.incident, row.event, ticket, state, row.event_at, now)
            messages.append((andon_topic(state.site, state.line, "events"), encode(event),
                             False))
        for topic, raw, retain in messages:
            info = client.publish(topic, raw, qos=1, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return _Result(False, f"publish refused: {mqtt.error_string(info.rc)}")
            deadline = time.monotonic() + self.timeout_s
            while not info.is_published():
                if time.monotonic() > deadline or self._stopping.is_set():
                    return _Result(False, f"the broker did not acknowledge within "
                                          f"{self.timeout_s:g} s")
                info.wait_for_publish(0.1)
        return _Result(True)


def _slack_answer(response: httpx.Response) -> _Result:
    """Slack's chat.postMessage answers 200 with ``ok`` false on errors, and the message's
    ``ts`` when it worked; an incoming webhook answers ``ok`` in plain text."""
    if "json" not in response.headers.get("content-type", ""):
        return _Result(True)
    try:
        answer = response.json()
    except ValueError:
        return _Result(True)
    if isinstance(answer, dict) and answer.get("ok") is False:
        return _Result(False, f"Slack refused it: {str(answer.get('error'))[:100]}")
    ts = answer.get("ts") if isinstance(answer, dict) else None
    return _Result(True, reference=str(ts)[:128] if ts else None)
