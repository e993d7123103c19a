"""MQTT subscriber: receives raw messages, hands them to the ingestor, acks when handled.

Delivery guarantee (at least once, end to end): the session is persistent
(``clean_session=False`` for 3.1.1, ``clean_start=False`` + session expiry for 5) and acks
are manual, so a QoS 1 message is acknowledged only after ``Ingestor.handle_batch``
returned; until then the broker keeps it and redelivers it after a reconnect (MQTT 3.1.1
§4.4, 5.0 §4.4). Redeliveries are dropped by the ingestor's msg_id dedupe.

Threads: paho's network thread runs ``on_message``, which only enqueues (a slow callback
blocks keepalive and gets the client disconnected, paho.mqtt.python#379); one worker
thread forms batches, calls the ingestor and acks.

Flow control: the queue holds received, unacked messages only, so the broker's in-flight
window bounds it. With MQTT 5 we announce ``receive-maximum`` = queue size; with 3.1.1 the
broker's ``max_inflight_messages`` should stay below it. If the queue ever overflows
anyway, the message is left unacked and, once the queue has drained, the connection is
dropped so that the broker sends it again after paho's automatic reconnect.

Failures are told through ``outage``: the broker link by ``BrokerLink`` (each kind of
connection failure at WARNING with the reason and when paho retries, then DEBUG, a summary
every 5 min, one INFO line when it is back; another client using our client id at ERROR),
a batch that cannot be stored by a ``FailureLog`` (the same rules, with the retry loop's
delay). ``problems()`` says what keeps the service from doing its job, for ``/readyz``.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
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
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30  # paho's reconnect backoff
DUPLICATE_ADVICE = "every aggregator replica needs its own LINEWATCH_MQTT_CLIENT_ID (see README)"


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # which connection delivered it; an ack is only valid on that one


@dataclass(frozen=True, slots=True)
class SubscriberCounts:
    connected: bool
    subscribed: bool
    received: int
    acked: int
    batches: int
    retries: int
    overflowed: int
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
        self._generation = 0
        self._resync_needed = False
        self._subscription_refused: str | None = None
        self._store_log = FailureLog(logger)
        self._worker: threading.Thread | None = None
        self._counts = {"received": 0, "acked": 0, "batches": 0, "retries": 0, "overflowed": 0}
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
        if self._store_log.failing:
            found.append(
                f"cannot store received messages for {span(self._store_log.failing_for_s)} "
                f"({self._store_log.failures} failures): {self._store_log.last}"
            )
        return found

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers) and start work."""
        self._stopping.clear()
        self.link.start()
        self._connect_async()
        self._client.loop_start()
        self._worker = threading.Thread(target=self._work, name="mqtt-ingest", daemon=True)
        self._worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand (acking it if handled), disconnect cleanly, join threads.

        Messages still queued are not acked: a persistent session gets them back later.
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
        self._generation += 1
        self._connected.set()
        logger.debug("subscribing to %s (session present: %s)", self.topic,
                     flags.session_present)
        client.subscribe(self.topic, qos=1)
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
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        self.link.disconnected(_flags, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers must refuse these (MQTT 3.1.1 §1.5.3); be safe
            topic = bytes(message._topic).decode("utf-8", "replace")
        raw = bytes(message.payload)
        item = _Received(topic, raw, message.mid, message.qos, self._generation)
        self._counts["received"] += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            # Not acked, so the broker still owes it to us; a reconnect makes it resend.
            if not self._resync_needed:
                logger.warning(
                    "ingest queue full (%d): leaving messages unacked until a reconnect",
                    self._queue.maxsize,
                )
            self._counts["overflowed"] += 1
            self._resync_needed = True

    # -- worker thread ------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            batch = self._next_batch()
            if batch:
                self._handle_until_done(batch)
            if self._resync_needed and self._queue.empty() and not self._stopping.is_set():
                self._resync()
            self.link.tick()

    def _next_batch(self) -> list[_Received]:
        """Wait up to BATCH_WAIT_S for a first message, then take what is already queued.

        No lingering for a fuller batch: with the broker's in-flight window (20 by default
        on Mosquitto) no more messages come until these are acked, so waiting would only
        add latency. Under load the queue fills while the previous batch is handled, and
        batches grow by themselves up to ``ingest_batch_size``.
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
        for r in batch:
            # A mid belongs to the connection that delivered it; after a reconnect the
            # broker resends under the same or a new mid, and the dedupe acks that copy.
            if r.qos > 0 and r.generation == self._generation:
                if self._client.ack(r.mid, r.qos) == mqtt.MQTT_ERR_SUCCESS:
                    self._counts["acked"] += 1

    def _resync(self) -> None:
        """Drop the connection so the broker resends what overflowed (unacked QoS 1).

        Shutting the socket down (not closing it: paho owns the descriptor) makes paho's
        network thread see a lost connection and run its own reconnect; no second loop is
        started and no paho internals are touched.
        """
        self._resync_needed = False
        sock = self._client.socket()
        if not isinstance(sock, socket.socket):
            return  # already disconnected: the reconnect will bring the messages back
        logger.warning(
            "reconnecting to get overflowed messages resent (%d so far)",
            self._counts["overflowed"],
        )
        self.link.closing()  # a deliberate disconnect, not a failure of the link
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed meanwhile: same outcome
