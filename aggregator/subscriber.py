"""MQTT subscriber: receives raw messages, hands them to the ingestor, acks when handled.

Delivery guarantee (at least once, end to end): the session is persistent
(``clean_session=False`` for 3.1.1, ``clean_start=False`` + session expiry for 5) and acks
are manual, so a QoS 1 message is acknowledged only after ``Ingestor.handle_batch``
returned; until then the broker keeps it and redelivers it after a reconnect (MQTT 3.1.1
§4.4, 5.0 §4.4). Redeliveries are dropped by the ingestor's msg_id dedupe.

Threads: paho's network thread runs ``on_message``, which puts the message on a bounded
queue; one worker thread forms batches, calls the ingestor and acks.

Flow control (backpressure, never loss): when the queue is full, ``on_message`` waits for
room. paho's network thread then stops reading the socket, TCP's window closes and the
broker holds everything else back, unacked in our session. Nothing received is ever
dropped: a message leaves the queue only into a batch, and is acked only after that batch
was handled. The broker's own limits do not suffice: Mosquitto up to 2.0.12 (Debian 12 and
Ubuntu 22.04 ship 2.0.11) lets a PUBACK release up to ``max_inflight_messages`` (or our
``receive-maximum``) more messages at once (eclipse/mosquitto#2301, fixed in 2.0.13 by
#2306), so under a burst it pushes everything it has at the subscriber. We still announce
``receive-maximum`` = queue size (MQTT 5) for brokers that honour it, with which the queue
never fills; for 3.1.1 the broker's ``max_inflight_messages`` plays that part.

Waiting in ``on_message`` cannot deadlock: the worker never waits for the network thread
(``Client.ack`` only appends to paho's outgoing deque and pokes its wake-up socket pair,
both non-blocking), and ``stop()`` sets ``_stopping`` first, which ends the wait. Nothing
that runs on the worker thread may wait for the network thread (``wait_for_publish``,
``MQTTMessageInfo.wait_for_publish``): it may be the one waiting for room. While the queue
drains, paho reads one packet per loop and writes our acks and its pings in between, so
keepalive carries on. Only if storing fails long enough for the queue to stay full past
the keepalive does the broker close the connection (nothing read from us for 1.5 x
keepalive): that is logged, shown by ``problems()``, and costs nothing, since everything
unacked is sent again after the reconnect and the msg_id dedupe drops what was stored.

Acks: a mid belongs to one connection. ``_live`` is the generation of the connection that
is up (None while down), set by ``on_connect``/``on_disconnect`` under ``_ack_lock``; the
worker acks only messages of that generation, under the same lock, so no ack is queued
between a loss and the next CONNACK, and after a reconnect nothing is sent before the
SUBSCRIBE. Acks go out in the order the messages came, which matters: Mosquitto 2.0.11
numbers messages in flight in 16 bits without checking for one still in flight, so with
more than 65535 of them (a burst, pushed at once, see above) two share a mid, and a PUBACK
deletes the older of the two. Acked in order, that is the one acked. (Before, a message
that overflowed the queue stayed unacked while later ones were acked, and the PUBACK of a
later one with its mid deleted it unstored: the loss of issue #9.)

Failures are told through ``outage``: the broker link by ``BrokerLink`` (a lost connection
with its reason in words, reconnect attempts 1, 2, 4, 8, ... at WARNING with when paho
retries, the others at DEBUG, a summary every 5 min, one INFO line with the time and the
attempts when it is back; another client using our client id at ERROR), a batch that
cannot be stored by a ``FailureLog`` (first of a kind at WARNING, then DEBUG and a summary
every 5 min, with the retry loop's delay). A broker that lost our session is told at
WARNING. ``problems()`` says what keeps the service from doing its job, for ``/readyz``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from aggregator.confirm import Confirmer
from aggregator.errors import UnavailableError
from aggregator.ingest import Ingestor, RawMessage
from aggregator.settings import Settings
from contract.wire import subscription
from outage.failures import FailureLog, span
from outage.mqtt import BrokerLink

__all__ = ["Subscriber", "SubscriberCounts"]

logger = logging.getLogger(__name__)

KEEPALIVE_S = 30
BATCH_WAIT_S = 0.2
ROOM_WAIT_S = 0.5  # on_message looks at _stopping this often while it waits for room
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
# paho's reconnect backoff: 1, 2, 4, 5, 5, ... s. A plant's broker is on the local network,
# so an attempt costs one TCP handshake: even a hundred clients trying every 5 s are no load
# for Mosquitto, and once the broker is back the aggregator follows within 5 s (it was 30 s,
# and the agents, back within 10 s, had flushed long before: issue #9).
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 5
DUPLICATE_ADVICE = "every aggregator replica needs its own LINEWATCH_MQTT_CLIENT_ID (see README)"


# The cyclic garbage collector's generation-0 threshold while ingesting (CPython's default
# is 700): see _tune_gc.
GC_THRESHOLD = (500_000, 20, 100)


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for ingest (process-wide, once).

    Ingest allocates a few objects per item and frees them by reference counting; almost
    none are cyclic garbage. With CPython's defaults a collection runs every 700 net
    allocations, and each older-generation pass walks the whole long-lived heap (FastAPI,
    SQLAlchemy, pydantic's schemas): in a profile of ingest batches of the bench's
    messages, 25-40 % of the CPU at one item per message. ``gc.freeze()`` moves what
    exists after start-up out of the collector's sight for good, and a higher threshold
    makes the rest rarer. Cycles are still collected, only in larger rounds.
    """
    if gc.get_threshold() != GC_THRESHOLD:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic collection while a batch is handled: it holds every item's objects alive
    until it returns (500 messages of 100 items: a few hundred thousand), all of them young,
    and a collection in its midst walks them all to free nothing (ingest's garbage goes by
    reference counting). The next collection after it finds them gone."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # which connection delivered it; an ack is only valid on that one


@dataclass(frozen=True, slots=True)
class SubscriberCounts:
    """Counters since start. ``waits``: times ``on_message`` waited for room in the queue
    (the broker was held back). ``overflowed``: received messages that were not queued but
    left unacked for the broker to send again; only while stopping, never under load."""

    connected: bool
    subscribed: bool
    received: int
    acked: int
    batches: int
    retries: int
    overflowed: int
    waits: int
    queued: int
    connect_failures: int
    disconnects: int
    takeovers: int
    duplicate_client_id: bool
    last_error: str | None


class Subscriber:
    """Subscribes to every agent's topics and feeds the ingestor, acking after handling.

    Parameters
    ----------
    settings
        Broker address, protocol, client id, credentials, shared group, batch and queue
        sizes.
    ingestor
        Receives batches; its ``UnavailableError`` means "retry the same batch later".
    """

    def __init__(self, settings: Settings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.topic = subscription()
        if settings.mqtt_shared_group:
            self.topic = f"$share/{settings.mqtt_shared_group}/{self.topic}"
        self._queue: queue.Queue[_Received] = queue.Queue(maxsize=settings.ingest_queue_size)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._generation = 0  # connections accepted so far
        self._live: int | None = None  # generation of the connection that is up
        self._ack_lock = threading.Lock()
        self._had_session = False  # an earlier connection made the broker keep a session
        self._waiting_since: float | None = None  # on_message waiting for room since
        self._subscription_refused: str | None = None
        self._store_log = FailureLog(logger)
        self._worker: threading.Thread | None = None
        self._counts = {"received": 0, "acked": 0, "batches": 0, "retries": 0, "overflowed": 0,
                        "waits": 0}
        self._client = self._make_client()
        # Tells agents, on our own client, which of their messages are stored.
        self.confirmer = Confirmer(settings, ingestor.session_factory, self._client)
        endpoint = settings.mqtt
        self.link = BrokerLink(
            self._client, logger, host=endpoint.host, port=endpoint.port,
            client_id=settings.mqtt_client_id, duplicate_advice=DUPLICATE_ADVICE,
            retry_min_s=RECONNECT_MIN_S, retry_max_s=RECONNECT_MAX_S,
        )

    # -- paho client --------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        s = self.settings
        if s.mqtt_protocol == "5":
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=s.mqtt_client_id,
                protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True,
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=s.mqtt_client_id,
                protocol=MQTTProtocolVersion.MQTTv311, clean_session=False, manual_ack=True,
            )
        if s.mqtt_username is not None:
            client.username_pw_set(s.mqtt_username, s.mqtt_password)
        if s.mqtt.tls:
            ca = str(s.mqtt_ca_file) if s.mqtt_ca_file is not None else None
            client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _connect_async(self) -> None:
        endpoint = self.settings.mqtt
        if self.settings.mqtt_protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.settings.mqtt_session_expiry_s
            props.ReceiveMaximum = self.settings.ingest_queue_size
            self._client.connect_async(
                endpoint.host, endpoint.port, KEEPALIVE_S, clean_start=False, properties=props
            )
        else:
            self._client.connect_async(endpoint.host, endpoint.port, KEEPALIVE_S)

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between an accepted CONNACK and the next disconnect."""
        return self._connected.is_set()

    @property
    def counts(self) -> SubscriberCounts:
        link = self.link
        return SubscriberCounts(
            connected=self.connected, subscribed=self.ready, queued=self._queue.qsize(),
            connect_failures=link.connect_failures, disconnects=link.disconnects,
            takeovers=link.takeovers, duplicate_client_id=link.duplicate_client_id,
            last_error=link.last_error, **self._counts,
        )

    def problems(self) -> list[str]:
        """What keeps messages from being received and stored right now; empty when
        nothing does. The series store and the SQL database are asked by ``/readyz``
        itself; a batch that keeps failing is reported here."""
        found = []
        link_problem = self.link.problem
        if link_problem is not None:
            found.append(link_problem)
        elif self._subscription_refused is not None:
            found.append(self._subscription_refused)
        elif not self.ready:
            found.append(f"connected to broker {self.link.broker}, not subscribed yet")
        waiting = self._waiting_since
        if waiting is not None and time.monotonic() - waiting >= KEEPALIVE_S:
            found.append(
                f"not reading from broker {self.link.broker} for "
                f"{span(time.monotonic() - waiting)}: the ingest queue is full "
                f"({self._queue.maxsize} messages); the broker holds the rest"
            )
        if self._store_log.failing:
            found.append(
                f"cannot store received messages for {span(self._store_log.failing_for_s)} "
                f"({self._store_log.failures} failures): {self._store_log.last}"
            )
        return found

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers) and start work."""
        _tune_gc()
        self._stopping.clear()
        self.link.start()
        self._connect_async()
        self._client.loop_start()
        self._worker = threading.Thread(target=self._work, name="mqtt-ingest", daemon=True)
        self._worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand (acking it if handled), disconnect cleanly, join threads.

        Messages still queued are not acked: a persistent session gets them back later.
        ``_stopping`` is set first: it ends a wait for room in ``on_message``, so that
        paho's network thread can finish.
        """
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout_s)
            if self._worker.is_alive():
                logger.warning("ingest worker still busy after %.0f s; leaving it", timeout_s)
            self._worker = None
        self.confirmer.stop()
        self.link.closing()
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._subscribed.clear()

    @property
    def ready(self) -> bool:
        """Connected, and the broker has granted the subscription (SUBACK)."""
        return self._subscribed.is_set()

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until ``ready`` (or the timeout).

        A fresh session receives nothing published before its subscription exists, so a
        caller about to publish (the demo, tests) waits for this first.
        """
        return self._subscribed.wait(timeout_s)

    # -- callbacks (paho network thread: no I/O, no exceptions) -------------------------
    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not self.link.connected(reason):
            # A refused CONNACK is not a connection (bad credentials, not authorised...).
            self._connected.clear()
            self._subscribed.clear()
            return
        with self._ack_lock:
            self._generation += 1
            self._live = self._generation
            # First thing on the new connection (no ack can be queued before it): with
            # its session gone the broker would deliver nothing; with it, SUBACK is cheap.
            client.subscribe(self.topic, qos=1)
        self._connected.set()
        had_session, self._had_session = self._had_session, True
        logger.debug("subscribing to %s (session present: %s)", self.topic,
                     flags.session_present)
        if not flags.session_present and had_session:
            logger.warning(
                "broker %s has no session for us (restarted without persistence?): "
                "resubscribed; every agent is asked to resend what we have not confirmed",
                self.link.broker,
            )
        # After the SUBSCRIBE: what agents resend on a lost session must find it in place.
        self.confirmer.connected(flags.session_present)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            self._subscription_refused = (
                f"broker {self.link.broker} refused the subscription to {self.topic}: "
                f"{refused[0]}"
            )
            logger.error("%s", self._subscription_refused)
        else:
            self._subscription_refused = None
            self._subscribed.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        with self._ack_lock:
            self._live = None
        self._connected.clear()
        self._subscribed.clear()
        self.link.disconnected(flags, reason, props)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers must refuse these (MQTT 3.1.1 §1.5.3); be safe
            topic = bytes(message._topic).decode("utf-8", "replace")
        raw = bytes(message.payload)
        item = _Received(topic, raw, message.mid, message.qos, self._generation)
        self._counts["received"] += 1
        if not self._enqueue(item):
            # Stopping: not queued, not acked, so the broker still owes it to us.
            self._counts["overflowed"] += 1

    def _enqueue(self, item: _Received) -> bool:
        """Put ``item`` on the queue, waiting for room as long as it takes (module
        docstring, flow control); False only if ``stop()`` came first."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            pass
        self._counts["waits"] += 1
        since = self._waiting_since = time.monotonic()
        told = False
        try:
            while not self._stopping.is_set():
                try:
                    self._queue.put(item, timeout=ROOM_WAIT_S)
                    return True
                except queue.Full:
                    pass
                if not told and time.monotonic() - since >= KEEPALIVE_S:
                    told = True
                    logger.warning(
                        "ingest queue full (%d messages) for %s, nothing stored meanwhile: "
                        "not reading from broker %s, which holds the rest (and may drop "
                        "the connection: the keepalive is %d s; nothing is lost)",
                        self._queue.maxsize, span(time.monotonic() - since),
                        self.link.broker, KEEPALIVE_S,
                    )
            return False
        finally:
            self._waiting_since = None
            if told:
                logger.info("reading from broker %s again after %s", self.link.broker,
                            span(time.monotonic() - since))

    # -- worker thread ------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            batch = self._next_batch()
            if batch:
                self._handle_until_done(batch)
            self.link.tick()

    def _next_batch(self) -> list[_Received]:
        """Wait up to BATCH_WAIT_S for a first message, then take what is already queued.

        No lingering for a fuller batch: with a broker that keeps to its in-flight window
        (20 by default on Mosquitto) no more messages come until these are acked, so
        waiting would only add latency. Under load the queue fills while the previous
        batch is handled, and batches grow by themselves up to ``ingest_batch_size``.
        """
        try:
            batch = [self._queue.get(timeout=BATCH_WAIT_S)]
        except queue.Empty:
            return []
        while len(batch) < self.settings.ingest_batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _handle_until_done(self, batch: list[_Received]) -> None:
        messages = [RawMessage(r.topic, r.payload) for r in batch]
        delay = RETRY_MIN_S
        while True:
            try:
                with _collector_paused():
                    self.ingestor.handle_batch(messages)
            except UnavailableError as exc:
                # The series store or the SQL database is down: the same batch goes again.
                self._store_log.failed(
                    type(exc).__name__,
                    f"cannot store {len(batch)} received messages: {exc}",
                    retry_in_s=delay,
                )
            except Exception as exc:
                # A bug, not bad input (which never raises): keep the messages unacked and
                # retry, rather than lose them; the traceback comes with the loud lines.
                self._store_log.failed(
                    f"bug-{type(exc).__name__}",
                    f"ingest failed on {len(batch)} received messages: {exc!r}",
                    retry_in_s=delay, level=logging.ERROR, exc_info=exc,
                )
            else:
                self._store_log.recovered("storing received messages again")
                self._counts["batches"] += 1
                self._ack(batch)
                self.confirmer.stored(r.topic for r in batch)
                return
            self._counts["retries"] += 1
            if self._stopping.wait(delay):
                logger.warning("stopping with %d messages unhandled (not acked)", len(batch))
                return
            delay = min(delay * 2, RETRY_MAX_S)

    def _ack(self, batch: list[_Received]) -> None:
        # A mid belongs to the connection that delivered it; after a reconnect the broker
        # resends under the same or a new mid, and the dedupe acks that copy. In the order
        # received: one mid may be on two messages in flight (module docstring, acks).
        acked = 0
        with self._ack_lock:
            live = self._live
            for r in batch:
                if r.qos > 0 and r.generation == live:
                    if self._client.ack(r.mid, r.qos) == mqtt.MQTT_ERR_SUCCESS:
                        acked += 1
        self._counts["acked"] += acked
