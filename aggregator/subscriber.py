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

from aggregator.errors import UnavailableError
from aggregator.ingest import Ingestor, RawMessage
from aggregator.settings import Settings
from contract.wire import subscription

__all__ = ["Subscriber", "SubscriberCounts"]

logger = logging.getLogger(__name__)

KEEPALIVE_S = 30
BATCH_WAIT_S = 0.2
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0


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
        self._refusals_logged: set[str] = set()
        self._worker: threading.Thread | None = None
        self._counts = {"received": 0, "acked": 0, "batches": 0, "retries": 0, "overflowed": 0}
        self._client = self._make_client()

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
        client.reconnect_delay_set(min_delay=1, max_delay=30)
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
        return SubscriberCounts(
            connected=self.connected, subscribed=self.ready, queued=self._queue.qsize(),
            **self._counts,
        )

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers) and start work."""
        self._stopping.clear()
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
        if reason.is_failure:
            # A refused CONNACK is not a connection (bad credentials, not authorised...).
            self._connected.clear()
            self._subscribed.clear()
            level = logging.DEBUG if str(reason) in self._refusals_logged else logging.ERROR
            self._refusals_logged.add(str(reason))
            host = self.settings.mqtt.host
            logger.log(level, "broker %s refused the connection: %s", host, reason)
            return
        self._refusals_logged.clear()
        self._generation += 1
        self._connected.set()
        logger.info(
            "connected to %s:%d (session present: %s); subscribing to %s",
            *self.settings.mqtt[:2], flags.session_present, self.topic,
        )
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            logger.error("broker refused the subscription to %s: %s", self.topic, refused[0])
        else:
            self._subscribed.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if was_connected and not self._stopping.is_set():
            logger.warning("disconnected from the broker (%s); reconnecting", reason)

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
        delay, failures = RETRY_MIN_S, 0
        while True:
            try:
                self.ingestor.handle_batch(messages)
            except UnavailableError as exc:
                if failures == 0:
                    logger.warning("%s; retrying %d messages until it is back", exc, len(batch))
            except Exception:
                # A bug, not bad input (which never raises): keep the messages unacked and
                # retry, rather than lose them; the traceback is logged once per episode.
                if failures == 0:
                    logger.exception("ingest failed; retrying %d messages", len(batch))
            else:
                if failures:
                    logger.info("ingest recovered after %d retries", failures)
                self._counts["batches"] += 1
                self._ack(batch)
                return
            failures += 1
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
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed meanwhile: same outcome
