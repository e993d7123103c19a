"""Readings that sensors or a PLC bridge publish as JSON on an MQTT broker.

Each configured topic pattern (``source.topics``) is an MQTT filter whose wildcard levels
may be named: ``plant/+asset/+channel`` subscribes to ``plant/+/+`` and reads the asset and
the channel from the topic; ``plc/+line/+station`` with ``asset: "{line}-{station}"``
builds the asset from two levels. A message either carries every channel (``channels``:
model channel -> dotted JSON path, ``{"data": {"temp": 21.5}}`` -> ``data.temp``) or one
channel (a level named ``channel``; the payload is the bare number, an object with
``value``, or the path ``value`` names). Its time is the payload's (``time``: field and
format) or its arrival. A value that is a JSON array is a block of samples ``rate_hz``
apart (vibration at kHz): it is handed over as one array, never sample by sample.

The client subscribes with QoS 1 in a persistent session under a fixed client id, so the
broker keeps what sensors publish while the agent is away; it reconnects with backoff
(1 to 10 s), and every lost connection and failed attempt is logged as the publisher's are
(``outage.mqtt.BrokerLink``).

Bad input loses nothing else. A message that cannot become a sample (not JSON, larger than
``max_payload``, no asset, a time that does not parse, no channel in it, an asset not in
``assets``) is dropped, counted in ``rejected`` (health's ``rejected_readings``) and by kind
in ``dropped``, logged once per kind, and reported as an input condition of its asset
(monitor ``input``, detector the kind) that ends with the asset's next good message. A
channel whose value is missing, NaN, null or not a number is a missing value: NaN in the
sample, which the quality monitor counts and skips as for any source (logged here once per
kind). Other assets keep flowing throughout.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import SourceError
from agent.monitors import Event
from agent.sources import Reading
from agent.sources.config import MqttSourceConfig, MqttTopicConfig
from agent.sources.samples import SampleAssembler, take
from agent.sources.table import parse_time
from contract.card import ModelCard
from outage.mqtt import BrokerLink

__all__ = ["MqttSource", "TopicPattern", "dig"]

logger = logging.getLogger(__name__)

_TICK_S = 0.2  # longest wait for input before an empty tick
_BATCH = 5000  # messages taken into one tick at most
_QUEUE = 20_000  # messages waiting; beyond, paho's thread waits (TCP holds the broker back)
_DUPLICATE_ADVICE = "every agent's source.client_id must be unique"
_MISSING = object()


class TopicPattern:
    """An MQTT filter with named wildcard levels.

    >>> p = TopicPattern("plant/+asset/+channel")
    >>> p.filter, p.match("plant/press-1/temp"), p.match("plant/press-1")
    ('plant/+/+', {'asset': 'press-1', 'channel': 'temp'}, None)
    >>> TopicPattern("plc/+/#rest").match("plc/l1/a/b")
    {'rest': 'a/b'}
    """

    def __init__(self, pattern: str) -> None:
        self.levels = pattern.split("/")
        self.filter = "/".join(lv[0] if lv[:1] in ("+", "#") else lv for lv in self.levels)

    def match(self, topic: str) -> dict[str, str] | None:
        parts = topic.split("/")
        out: dict[str, str] = {}
        for i, level in enumerate(self.levels):
            if level.startswith("#"):
                if level[1:]:
                    out[level[1:]] = "/".join(parts[i:])
                return out
            if i >= len(parts):
                return None
            if level.startswith("+"):
                if level[1:]:
                    out[level[1:]] = parts[i]
            elif level != parts[i]:
                return None
        return out if len(parts) == len(self.levels) else None


def dig(payload: Any, path: str) -> Any:
    """The value at a dotted path (``a.b.0`` indexes a list), or a sentinel when absent.

    >>> dig({"a": {"b": [5, 6]}}, "a.b.1"), dig({"a": 1}, "a.b") is _MISSING
    (6, True)
    """
    value = payload
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


class _Bad(Exception):
    """A message that cannot become a sample: ``kind`` names why."""

    def __init__(self, kind: str, detail: str, asset: str | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.asset = kind, detail, asset


class MqttSource:
    """A live source over MQTT (module docstring). ``ticks()`` yields at least every
    0.2 s, empty when nothing arrived, until ``close()``."""

    def __init__(self, config: MqttSourceConfig, card: ModelCard, *, client_id: str) -> None:
        self.config = config
        self.channels = card.channel_names
        self._index = {c: j for j, c in enumerate(self.channels)}
        self.assets: Sequence[str] | None = config.assets
        self._allowed = None if config.assets is None else set(config.assets)
        self.sample_interval_s = config.sample_interval_s
        self.total_ticks: int | None = None
        self._rate = card.input.rate_hz
        self._topics = [(TopicPattern(t.pattern), t) for t in config.topics]
        for i, t in enumerate(config.topics):
            unknown = [c for c in (t.channels or {}) if c not in self._index]
            if unknown:
                raise SourceError(f"source.topics.{i}.channels: the model has no channels "
                                  f"{unknown} (it reads {self.channels})")
        self.rejected = 0
        self.dropped: dict[str, int] = {}  # kind -> messages
        self.missing_values: dict[str, int] = {}  # kind -> values read as missing
        self.received = 0
        self._told: set[str] = set()
        self._open: dict[tuple[str | None, str], float] = {}  # (asset, kind) -> since
        self._pending: list[Event] = []
        self._samples = SampleAssembler(self.channels, config.align_s, lambda asset, c: (
            self._missing("missing_channel", f"{asset} sent no {c} for a sample")))
        self._queue: queue.Queue[tuple[str, bytes, float]] = queue.Queue(_QUEUE)
        self._closed = threading.Event()
        self.subscribed = threading.Event()  # the broker accepted every input subscription
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   clean_session=False, protocol=mqtt.MQTTv311)
        if config.username:
            self._client.username_pw_set(config.username, config.password())
        if config.url.startswith("mqtts://"):
            self._client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                                 tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.link = BrokerLink(self._client, logger, host=config.host, port=config.port,
                               client_id=client_id, duplicate_advice=_DUPLICATE_ADVICE,
                               retry_min_s=1, retry_max_s=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._started = False

    # --- paho's thread -------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if not self.link.connected(reason_code):
            return
        # Every connection: the broker may have lost the session.
        client.subscribe([(p.filter, 1) for p, _ in self._topics])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        self.subscribed.clear()
        self.link.disconnected(flags, reason_code)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Properties | None) -> None:
        refused = [str(r) for r in reason_codes if r.is_failure]
        if refused:
            logger.error("broker %s refused the input subscription (%s): no readings will "
                         "arrive on %s; check the broker's ACL", self.link.broker,
                         ", ".join(refused), ", ".join(p.filter for p, _ in self._topics))
        else:
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        item = (msg.topic, bytes(msg.payload), time.time())
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue  # the agent is behind: hold the broker back, lose nothing

    # --- the source ----------------------------------------------------------------------

    def to_epoch_s(self, t: np.ndarray) -> np.ndarray:
        return t

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.link.start()
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self._client.loop_start()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._started:
            self.link.closing()
            self._client.disconnect()
            self._client.loop_stop()

    def events(self) -> list[Event]:
        out, self._pending = self._pending, []
        return out

    def ticks(self) -> Iterator[list[Reading]]:
        self.start()
        while not self._closed.is_set():
            self.link.tick()
            yield self.readings(take(self._queue, _TICK_S, _BATCH))

    def readings(self, batch: Sequence[tuple[str, bytes, float]]) -> list[Reading]:
        """The readings in messages (topic, payload, arrival time), per asset in time order;
        bad messages are counted, logged and reported (module docstring)."""
        samples: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for topic, payload, arrived in batch:
            self.received += 1
            try:
                for asset, t, values in self._parse(topic, payload, arrived):
                    samples.setdefault(asset, []).append((t, values))
                    self._good(asset, float(t[-1]))
            except _Bad as bad:
                self._drop(bad, topic, arrived)
        out = []
        for asset, parts in samples.items():
            t = np.concatenate([p[0] for p in parts])
            values = np.concatenate([p[1] for p in parts])
            if len(parts) > 1:
                order = np.argsort(t, kind="stable")
                t, values = t[order], values[order]
            out.append(Reading(asset, t, values))
        return out

    # --- one message ---------------------------------------------------------------------

    def _parse(self, topic: str, payload: bytes,
               arrived: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
        found = next(((names, config) for pattern, config in self._topics
                      if (names := pattern.match(topic)) is not None), None)
        if found is None:
            raise _Bad("unknown_topic", f"no configured pattern matches topic {topic!r}")
        names, config = found
        asset = self._topic_asset(names, config)
        if len(payload) > self.config.max_payload:
            raise _Bad("oversized", f"{len(payload)} bytes (limit {self.config.max_payload})",
                       asset)
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Bad("not_json", f"not JSON: {exc}", asset) from exc
        fields = config.channels is not None or config.time is not None or config.asset_field
        if fields and not isinstance(data, dict):
            raise _Bad("bad_payload", "the payload is not a JSON object", asset)
        if config.asset_field is not None:
            raw = dig(data, config.asset_field)
            if raw is _MISSING or not isinstance(raw, str | int) or isinstance(raw, bool):
                raise _Bad("missing_field", f"no asset at {config.asset_field!r}")
            asset = str(raw)
        if asset is None or not asset:
            raise _Bad("missing_field", "no asset in the topic or payload")
        if self._allowed is not None and asset not in self._allowed:
            raise _Bad("unknown_asset", f"asset {asset!r} is not in source.assets", None)
        t0 = self._time(data, config, arrived, asset)
        if config.channels is not None:
            raw_values = {c: dig(data, path) for c, path in config.channels.items()}
            if all(v is _MISSING for v in raw_values.values()):
                raise _Bad("missing_field", f"none of the fields "
                           f"{sorted(config.channels.values())} is in the payload", asset)
            return [(asset, *self._block(asset, raw_values, t0, config))]
        channel = names.get("channel", "")
        if channel not in self._index:
            return []  # a channel the model does not read
        if config.value is not None:
            value = dig(data, config.value)
        elif isinstance(data, dict):
            value = data.get("value", _MISSING)
        else:
            value = data
        if value is _MISSING:
            raise _Bad("missing_field", f"no value at {config.value or 'value'!r}", asset)
        if isinstance(value, list):
            return [(asset, *self._block(asset, {channel: value}, t0, config))]
        return self._samples.add(asset, channel, self._number(channel, value), t0)

    def _topic_asset(self, names: dict[str, str], config: MqttTopicConfig) -> str | None:
        if config.asset is not None:
            return config.asset.format(**names)
        return names.get("asset")

    def _time(self, data: Any, config: MqttTopicConfig, arrived: float, asset: str) -> float:
        if config.time is None:
            return arrived
        raw = dig(data, config.time.field)
        if raw is _MISSING:
            raise _Bad("missing_field", f"no time at {config.time.field!r}", asset)
        try:
            t = parse_time(raw, config.time.format)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _Bad("bad_time", f"time {raw!r} is not {config.time.format}: {exc}",
                       asset) from exc
        if not math.isfinite(t):
            raise _Bad("bad_time", f"time {raw!r} is not finite", asset)
        return t

    def _number(self, channel: str, value: Any) -> float:
        """A channel's value; anything that is not a finite number is a missing value."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        kind = "null" if value is None else "wrong_type"
        self._missing(kind, f"{channel} is {json.dumps(value)[:40]}, not a number")
        return math.nan

    def _missing(self, kind: str, detail: str) -> None:
        self.missing_values[kind] = self.missing_values.get(kind, 0) + 1
        if f"value:{kind}" not in self._told:
            self._told.add(f"value:{kind}")
            logger.warning("input value read as missing (%s): %s; the quality monitor counts "
                           "and skips such samples (logged once)", kind, detail)

    def _block(self, asset: str, raw: dict[str, Any], t0: float,
               config: MqttTopicConfig) -> tuple[np.ndarray, np.ndarray]:
        """One sample, or a block when values are arrays; absent channels are missing."""
        lengths = {len(v) for v in raw.values() if isinstance(v, list)}
        if not lengths:
            values = np.full((1, len(self.channels)), np.nan)
            for c, v in raw.items():
                if v is _MISSING:
                    self._missing("missing_field", f"no {c} in a message of {asset}")
                else:
                    values[0, self._index[c]] = self._number(c, v)
            return np.array([t0]), values
        if len(lengths) > 1 or any(not isinstance(v, list) for v in raw.values()):
            raise _Bad("bad_payload", "array values of one message differ in length", asset)
        rate = config.rate_hz or self._rate
        if rate is None:
            raise _Bad("bad_payload", "an array value needs rate_hz (topic or model card)",
                       asset)
        (n,) = lengths
        values = np.full((n, len(self.channels)), np.nan)
        for c, v in raw.items():
            try:
                values[:, self._index[c]] = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise _Bad("bad_payload", f"{c}: not an array of numbers", asset) from exc
        return t0 + np.arange(n) / rate, values

    # --- bookkeeping ---------------------------------------------------------------------

    def _drop(self, bad: _Bad, topic: str, at: float) -> None:
        self.rejected += 1
        self.dropped[bad.kind] = self.dropped.get(bad.kind, 0) + 1
        if bad.kind not in self._told:
            self._told.add(bad.kind)
            logger.warning("input message dropped (%s) on %s: %s; counted in "
                           "rejected_readings, logged once per kind", bad.kind, topic,
                           bad.detail)
        key = (bad.asset, bad.kind)
        if key not in self._open:
            self._open[key] = at
            self._pending.append(Event(
                bad.asset, at, "input", bad.kind, None,
                f"input message dropped ({bad.kind}) on {topic}: {bad.detail}"[:500],
                signal="asset", since_s=at))

    def _good(self, asset: str, at: float) -> None:
        if not self._open:
            return
        for key in [k for k in self._open if k[0] in (asset, None)]:
            del self._open[key]
            self._pending.append(Event(key[0], at, "input", key[1], None,
                                       f"{asset} sends readable input again", state="end",
                                       signal="asset"))
