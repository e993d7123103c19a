"""Drain the outbox to the broker with paho-mqtt: QoS 1, in seq order, a bounded window.

"Sent" means the broker acknowledged it: a row leaves the outbox only when paho reports
the PUBACK for that message's mid. While the connection is down, paho keeps the messages
already handed to it and resends them after reconnecting (MQTT 3.1.1 §4.4); the outbox
keeps everything else, and keeps it across a restart of the process too.

Failures are told through ``outage``: every failed connection attempt, refused CONNACK and
lost connection by ``BrokerLink`` (first of each kind at WARNING with the reason and when
paho retries, repeats at DEBUG, a summary every 5 min, one line when it is back, and an
ERROR when another client uses this agent's client id); refused publishes by a
``FailureLog``. The agent has no HTTP server: those lines and the retained ``status`` topic
are how an operator sees that it cannot deliver.
"""

from __future__ import annotations

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
from agent.outbox import Outbox
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
    """Publish outbox rows and a retained presence status with a last will."""

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        client_id: str,
        status_topic: str,
        status: Callable[[str, datetime], bytes],
    ) -> None:
        self.config = config
        self.outbox = outbox
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
        self.published = 0
        self.refused = 0
        self._publish_log = FailureLog(logger)

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

    # --- drain thread --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def problem(self) -> str | None:
        """Why messages cannot be delivered right now (None: connected)."""
        return self.link.problem

    def start(self) -> None:
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
            self.outbox.ack(done)
            self.published += len(done)
            self._publish_log.recovered(f"broker {self.link.broker} accepts messages again")
        if self._inflight or self._early:
            return
        # Nothing in flight: rows refused earlier (seq <= last handed) get another chance.
        self._last_handed = -1

    def _hand_over(self) -> None:
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0 or not self.connected:
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
            self._last_handed = row.seq

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_DRAIN_WAIT_S)
            self._wake.clear()
            self._settle_acks()
            self._hand_over()
            self.link.tick()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty; False if it is not by the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.outbox.depth == 0 and not self._inflight:
                return True
            self._wake.set()
            time.sleep(0.02)
        return self.outbox.depth == 0 and not self._inflight

    def close(self) -> None:
        """Say goodbye (retained offline status), disconnect, stop the threads. Rows not yet
        acknowledged stay in the outbox for the next start."""
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
