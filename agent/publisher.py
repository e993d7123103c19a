"""Drain the outbox to the broker with paho-mqtt: QoS 1, in seq order, a bounded window.

A broker's PUBACK marks a row sent; it leaves the outbox when the aggregator confirms it
stored it: the retained ``Delivery`` on this agent's ``cmd/delivery`` topic, to which the
publisher subscribes at every connection (``agent.delivery``). That message also asks for
rows again (gaps, or everything after a broker lost its session), and rows left unconfirmed
for too long go again on their own. With ``publish.confirm: broker`` (no linewatch
aggregator behind the broker) a row leaves on its PUBACK, as in the first release. While the
connection is down, paho keeps the messages already handed to it and resends them after
reconnecting (MQTT 3.1.1 §4.4); the outbox keeps everything else, across restarts too.
Model assignments come on the same subscription (``cmd/model``, retained), whatever
``publish.confirm`` says: read on the drain thread and handed at once to the rollout
(``agent.rollout``).

Failures are told through ``outage``: every failed connection attempt, refused CONNACK and
lost connection by ``BrokerLink`` (first of each kind at WARNING with the reason and when
paho retries, repeats at DEBUG, a summary every 5 min, one line when it is back, and an
ERROR when another client uses this agent's client id); refused publishes, unreadable
commands and rows the aggregator does not confirm by a ``FailureLog`` each. The agent has
no HTTP server: those lines and the retained ``status`` topic are how an operator sees that
it cannot deliver.
"""

from __future__ import annotations

import heapq
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.delivery import Confirmation, ModelCommands, Tracker
from agent.outbox import Outbox
from contract import wire
from outage.failures import FailureLog
from outage.mqtt import BrokerLink

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)

_QUEUED = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
_REFUSED_RETRY_S = 30.0
# paho's reconnect backoff, 1, 2, 4, 5, 5, ... s: the plant's broker is on the local
# network, an attempt is one TCP handshake, and at most 5 s after the broker is back the
# agent is publishing again (aggregator.subscriber uses the same, see there).
_RETRY_MIN_S, _RETRY_MAX_S = 1, 5
_DRAIN_WAIT_S = 0.2
_DUPLICATE_ADVICE = ("every agent needs its own agent.id, or its own mqtt.client_id if that "
                     "is set (see README)")


class Publisher:
    """Publish outbox rows and a retained presence status with a last will.

    ``confirmation`` given: rows leave the outbox when the aggregator confirms them (and go
    again when it asks, or after its timeout); None: on the broker's PUBACK.
    """

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        client_id: str,
        status_topic: str,
        status: Callable[[str, datetime], bytes],
        confirmation: Confirmation | None = None,
        models: ModelCommands | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.confirmation = confirmation
        self.models = models
        self._clock = clock
        self._status_topic = status_topic
        self._status = status
        self._online = self._offline = b""
        protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if config.username:
            self._client.username_pw_set(config.username, config.password())
        if config.tls:
            self._client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self._new_session()
        self.link = BrokerLink(
            self._client, logger, host=config.host, port=config.port, client_id=client_id,
            duplicate_advice=_DUPLICATE_ADVICE, retry_min_s=_RETRY_MIN_S,
            retry_max_s=_RETRY_MAX_S,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        # on_publish runs on paho's network thread while paho holds its own locks; it only
        # enqueues, and the drain thread does the bookkeeping, so the two never deadlock.
        self._acks: queue.SimpleQueue[tuple[int, ReasonCode]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> seq
        # acks that arrived before their mid was recorded
        self._early: dict[int, ReasonCode] = {}
        self._status_mids: set[int] = set()
        self._retry_at: dict[int, float] = {}  # seq -> when a refused row may go again
        self._last_handed = -1
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0  # rows the broker acknowledged (the first time)
        self.refused = 0
        self._publish_log = FailureLog(logger)
        # Commands from the aggregator, read on paho's thread, applied on the drain thread.
        self._commands: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._command_log = FailureLog(logger)
        self._subscribe_log = FailureLog(logger)
        self.bad_commands = 0
        self._resend: list[int] = []  # heap of seqs to hand over again
        self._resending: set[int] = set()
        self.tracker = None if confirmation is None else Tracker(
            outbox, confirmation, broker=self.link.broker, log=logger, clock=clock)

    def _new_session(self) -> None:
        """Stamp the next connection's ``online`` and its last will alike: the aggregator
        orders an agent's states by these stamps, and at equal stamps the will is the later
        fact. A will stamped once at start would predate every later reconnection's
        ``online`` (and say "offline since" a time before the agent connected)."""
        now = datetime.now(UTC)
        self._online, self._offline = self._status("online", now), self._status("offline", now)
        self._client.will_set(self._status_topic, self._offline, qos=1, retain=True)

    # --- paho callbacks (network thread) ------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self.link.connected(reason_code):
            return  # a refused CONNACK is not "connected"; paho retries with backoff
        info = client.publish(self._status_topic, self._online, qos=1, retain=True)
        # Its PUBACK is handled on this thread after we return, so the mid is known by then.
        self._status_mids.add(info.mid)
        if self._subscription is not None:
            # Every connection: a clean session forgets subscriptions; the retained Delivery
            # and model assignment come again right after, so nothing is missed while
            # disconnected.
            client.subscribe(self._subscription, qos=1)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._new_session()  # paho reconnects with the will set now
        self.link.disconnected(flags, reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._acks.put((mid, reason_code))
        self._wake.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [r for r in reason_codes if r.is_failure]
        if refused:
            # Without its commands the agent keeps every row until the confirmation timeout
            # and resends: an operator must fix the broker's ACL.
            self._subscribe_log.failed(
                "refused", f"broker {self.link.broker} refused the subscription to "
                f"{self._subscription}: "
                f"{refused[0]}; rows stay in the outbox until the aggregator confirms them",
                level=logging.ERROR)
        else:
            self._subscribe_log.recovered(f"subscribed to the aggregator's commands on "
                                          f"broker {self.link.broker} again")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        subscription = self._subscription
        if subscription is None or not mqtt.topic_matches_sub(subscription, msg.topic):
            # Not a command, nor anything asked for: amqtt (the embedded broker) hands a
            # connecting client the retained messages of every client's subscriptions,
            # its own status among them. Not the sender's fault: nothing to warn of.
            logger.debug("ignored a message on %s, which this agent did not subscribe to",
                         msg.topic)
            return
        self._commands.put((msg.topic, bytes(msg.payload)))
        self._wake.set()

    # --- drain thread --------------------------------------------------------------------

    @property
    def _subscription(self) -> str | None:
        """The filter of this agent's commands, when it reads any."""
        for reader in (self.confirmation, self.models):
            if reader is not None:
                return reader.subscription
        return None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def confirmed(self) -> int:
        """Rows the aggregator confirmed, this process (0 with ``confirm: broker``)."""
        return 0 if self.tracker is None else self.tracker.confirmed

    @property
    def resent(self) -> int:
        """Rows scheduled to go to the broker again, this process."""
        return 0 if self.tracker is None else self.tracker.resent

    @property
    def problem(self) -> str | None:
        """Why messages cannot be delivered right now (None: connected)."""
        return self.link.problem

    def start(self) -> None:
        if self.confirmation is None:
            # Acknowledged by the broker under `confirm: aggregator` in an earlier run: under
            # `confirm: broker` that is their release.
            self.outbox.release_sent()
        else:
            self.outbox.restamp_sent(self._clock())
        self.link.start()
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._drain, name="linewatch-publisher",
                                        daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Tell the drain thread that new rows are waiting."""
        self._wake.set()

    def _settle_acks(self) -> None:
        done: list[int] = []
        while True:
            try:
                mid, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            if mid in self._status_mids:
                self._status_mids.discard(mid)
            else:
                self._early[mid] = reason
        for mid in [m for m in self._early if m in self._inflight]:
            reason = self._early.pop(mid)
            seq = self._inflight.pop(mid)
            self.outbox.let_go(seq)
            if not reason.is_failure:
                done.append(seq)
                self._retry_at.pop(seq, None)
            else:
                # An MQTT 5 broker may refuse a publish (e.g. not authorised). The row stays,
                # retried with backoff, so a broker-side fix delivers it. An operator must
                # act, hence ERROR, once per reason and then at DEBUG.
                self.refused += 1
                self._publish_log.failed(
                    f"refused-{reason.value}",
                    f"broker refused message seq {seq} ({reason}); it stays in the outbox",
                    retry_in_s=_REFUSED_RETRY_S, level=logging.ERROR,
                )
                self._retry_at[seq] = time.monotonic() + _REFUSED_RETRY_S
        if done:
            if self.tracker is None:
                self.published += len(done)  # first: whoever sees the rows gone sees them
                self.outbox.ack(done)
            else:
                self.published += self.outbox.mark_sent(done, self._clock())
            self._publish_log.recovered(f"broker {self.link.broker} accepts messages again")
        if self._inflight or self._early:
            return
        # Nothing in flight: rows refused earlier (seq <= last handed) get another chance.
        self._last_handed = -1

    def _read_commands(self) -> None:
        while True:
            try:
                topic, raw = self._commands.get_nowait()
            except queue.Empty:
                return
            if self.models is not None and topic == self.models.topic:
                assignment = self._assignment(raw)
                if assignment is not None:
                    self.models.handler(assignment)
                continue
            if self.confirmation is None:
                if topic.endswith("/cmd/delivery"):
                    continue  # an aggregator's confirmations, not asked for (confirm: broker)
                self._bad_command(f"an unknown command on {topic}", "unknown")
                continue
            delivery = self._delivery(topic, raw)
            if delivery is not None and self.tracker is not None:
                busy = self._resending | set(self._inflight.values())
                self._queue_again(self.tracker.apply(delivery, busy))

    def _assignment(self, raw: bytes) -> wire.Assignment | None:
        """The model assignment in a command message, or None: an empty retained payload
        (the registry cleared the topic: the agent keeps what it runs), or one that is
        unreadable or for another agent (counted and logged)."""
        assert self.models is not None
        if not raw:
            logger.info("the model assignment topic was cleared: the running models stay")
            return None
        try:
            assignment = wire.decode_assignment(raw)
        except wire.WireError as exc:
            self._bad_command(f"an unreadable model assignment ({exc})",
                              f"model-bad-{exc.reason}")
            return None
        if assignment.agent != self.models.agent:
            self._bad_command(f"a model assignment for agent {assignment.agent!r}",
                              "model-other-agent")
            return None
        self._command_log.recovered("the aggregator's commands are readable again")
        return assignment

    def _bad_command(self, problem: str, kind: str) -> None:
        self.bad_commands += 1
        self._command_log.failed(kind, f"ignored {problem}")

    def _delivery(self, topic: str, raw: bytes) -> wire.Delivery | None:
        """The Delivery in a command message, or None (counted and logged) if it is not one
        for this agent."""
        assert self.confirmation is not None  # only called with a confirmation
        if topic != self.confirmation.topic:
            problem, kind = f"an unknown command on {topic}", "unknown"
        else:
            try:
                delivery = wire.decode_delivery(raw)
            except wire.WireError as exc:
                problem, kind = f"an unreadable delivery command ({exc})", f"bad-{exc.reason}"
            else:
                if delivery.agent == self.confirmation.agent:
                    self._command_log.recovered("the aggregator's delivery commands are "
                                                "readable again")
                    return delivery
                problem, kind = (f"a delivery command for agent {delivery.agent!r} on "
                                 f"{topic}"), "other-agent"
        self._bad_command(problem, kind)
        return None

    def _queue_again(self, seqs: list[int]) -> None:
        for seq in seqs:
            if seq not in self._resending:
                self._resending.add(seq)
                heapq.heappush(self._resend, seq)

    def _hand_over(self) -> None:
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0 or not self.connected:
            return
        room -= self._hand_over_again(room)
        if room <= 0:
            return
        now = time.monotonic()
        for row in self.outbox.pending(self._last_handed, room):
            if row.seq in self._inflight.values() or self._retry_at.get(row.seq, 0) > now:
                # Step over it, so refused rows waiting for their retry never block the
                # rows behind them; they come round again once nothing is in flight.
                self._last_handed = max(self._last_handed, row.seq)
                continue
            info = self._client.publish(row.topic, row.payload, qos=1)
            if info.rc not in _QUEUED:
                # Retried on the next pass of the drain loop: logged once, not every pass.
                self._publish_log.failed(
                    f"queue-{info.rc}",
                    f"paho refused to queue seq {row.seq}: {mqtt.error_string(info.rc)}",
                    retry_in_s=_DRAIN_WAIT_S,
                )
                return
            self._inflight[info.mid] = row.seq
            self.outbox.hold(row.seq)
            self._last_handed = row.seq

    def _hand_over_again(self, room: int) -> int:
        """Hand over rows queued to go again, oldest first; return how many."""
        seqs = [heapq.heappop(self._resend) for _ in range(min(room, len(self._resend)))]
        self._resending.difference_update(seqs)
        rows, handed = self.outbox.rows(seqs), 0
        for n, row in enumerate(rows):
            info = self._client.publish(row.topic, row.payload, qos=1)
            if info.rc not in _QUEUED:
                self._publish_log.failed(
                    f"queue-{info.rc}",
                    f"paho refused to queue seq {row.seq}: {mqtt.error_string(info.rc)}",
                    retry_in_s=_DRAIN_WAIT_S,
                )
                self._queue_again([r.seq for r in rows[n:]])
                break
            self._inflight[info.mid] = row.seq
            self.outbox.hold(row.seq)
            handed += 1
        return handed

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_DRAIN_WAIT_S)
            self._wake.clear()
            if self._subscription is not None:
                # Before the acks: a PUBACK that came after a Delivery must not make the
                # Delivery release a row it never saw (a stale retained one, at connection).
                # A row a Delivery did confirm before its PUBACK leaves with it (mark_sent).
                self._read_commands()
            self._settle_acks()
            if self.tracker is not None:
                if self.tracker.next_due_s == 0:
                    busy = self._resending | set(self._inflight.values())
                    self._queue_again(self.tracker.due(busy))
            self._hand_over()
            self.link.tick()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (every row confirmed by the aggregator, or, with
        ``confirm: broker``, acknowledged by the broker); False if it is not by the
        deadline, or as soon as rows are newly known undeliverable (the caller tells the
        aggregator, which waits for that, and then waits on)."""
        deadline = time.monotonic() + timeout_s
        spans = self.outbox.spans_made
        while time.monotonic() < deadline:
            if self.outbox.depth == 0 and not self._inflight:
                return True
            if self.outbox.spans_made != spans:
                return False
            self._wake.set()
            time.sleep(0.02)
        return self.outbox.depth == 0 and not self._inflight

    def close(self) -> None:
        """Say goodbye (retained offline status), disconnect, stop the threads. Rows not yet
        confirmed stay in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.connected:
            goodbye = self._status("offline", datetime.now(UTC))
            info = self._client.publish(self._status_topic, goodbye, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self.link.closing()
        self._client.disconnect()
        self._client.loop_stop()
