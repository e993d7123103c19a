"""The agent, wired: source -> windows -> features -> model -> monitors -> outbox -> MQTT.

Everything is written to the on-disk outbox before any network call, so a broker outage
or a killed process loses nothing; the publisher drains it in order.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import numpy as np

from agent.config import AgentConfig
from agent.features import FeatureExtractor
from agent.inference import OnnxModel
from agent.monitors import DriftMonitor, Event, QualityMonitor
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.sources import Reading, open_source
from agent.windows import Windower, Windows
from contract import wire

__all__ = ["Agent", "Progress", "RunReport", "Scored", "run"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    asset: str
    window_end: datetime
    score: float


@dataclass
class Progress:
    ticks: int = 0
    total_ticks: int | None = None
    windows_scored: int = 0
    alerts: int = 0
    drift_events: int = 0
    quality_events: int = 0
    rejected_readings: int = 0
    outbox_depth: int = 0
    published: int = 0
    connected: bool = False


@dataclass
class RunReport:
    progress: Progress
    drained: bool
    scored: list[Scored] = field(default_factory=list)


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class _Batcher:
    """Collect items per kind; wrap them in envelopes and write them to the outbox."""

    def __init__(self, config: AgentConfig, outbox: Outbox, model: wire.ModelRef,
                 notify: Callable[[], None]) -> None:
        self._config = config
        self._outbox = outbox
        self._model = model
        self._notify = notify
        self._items: dict[str, list[wire.Item]] = {"predictions": [], "drift": [], "health": []}
        self._since = time.monotonic()
        a = config.agent
        self._topics = {k: wire.topic(a.site, a.line, a.id, k) for k in self._items}

    def add(self, kind: str, items: Sequence[wire.Item]) -> None:
        self._items[kind].extend(items)
        if len(self._items[kind]) >= self._config.publish.max_items:
            self.flush(kind)

    def due(self) -> bool:
        return time.monotonic() - self._since >= self._config.publish.flush_interval_s

    def flush(self, kind: str | None = None) -> None:
        for k in [kind] if kind else list(self._items):
            items, limit = self._items[k], self._config.publish.max_items
            while items:
                chunk, items = items[:limit], items[limit:]
                self._write(k, chunk)
            self._items[k] = []
        if kind is None:
            self._since = time.monotonic()
        self._notify()

    def _write(self, kind: str, items: list[wire.Item]) -> None:
        seq = self._outbox.allocate_seq()
        env = wire.Envelope.build(self._config.agent.id, seq, self._model, items)
        try:
            payload = wire.encode(env)
        except wire.WireError as exc:
            if exc.reason != "too_large" or len(items) == 1:
                raise
            # Long detail texts can push a full batch past the payload limit: halve it.
            # The seq left unused is a gap the aggregator can see, not a loss.
            half = len(items) // 2
            self._write(kind, items[:half])
            self._write(kind, items[half:])
            return
        # Alerts and drift events must survive a full outbox; plain telemetry may not.
        droppable = kind == "health" or (
            kind == "predictions" and not any(cast(wire.Prediction, i).alert for i in items)
        )
        self._outbox.put(seq, str(env.msg_id), self._topics[kind], kind, payload,
                         droppable=droppable)


class Agent:
    """One gateway agent. ``run()`` replays the source to its end (or until ``stop()``)."""

    def __init__(self, config: AgentConfig, *, record: bool = False) -> None:
        self.config = config
        self.model = OnnxModel(config.model.dir)
        card = self.model.card
        self.source = open_source(config.source, card)
        self.windower = Windower(card.window.size, card.window.hop, len(card.channel_names))
        self.extractor = FeatureExtractor(card.features, card.channel_names)
        self.quality = QualityMonitor(card, config.monitors.range_margin,
                                      config.monitors.stuck_samples)
        self.drift = DriftMonitor(config.monitors.score_detector, config.monitors.adwin_delta)
        self.threshold = card.threshold.value
        self.model_ref = wire.ModelRef(
            name=card.name, version=card.version, sha256=card.sha256.model,
            threshold=self.threshold,
        )
        self.outbox = Outbox(config.outbox_path, config.outbox.max_rows)
        if config.mqtt.username and config.mqtt.username != config.agent.id:
            # With the shipped ACL (configs/mosquitto/acl) a user may write only under its own
            # name; over MQTT 3.1.1 a refused publish is still acknowledged, so it is lost.
            logger.warning("mqtt.username %r differs from agent.id %r: the shipped broker ACL "
                           "will refuse this agent's messages", config.mqtt.username,
                           config.agent.id)
        a = config.agent
        status = wire.topic(a.site, a.line, a.id, "status")
        self.publisher = Publisher(
            config.mqtt, self.outbox,
            client_id=config.mqtt.client_id or f"linewatch-agent-{a.id}",
            status_topic=status,
            online=wire.encode(self._status("online")),
            offline=wire.encode(self._status("offline")),
        )
        self.batcher = _Batcher(config, self.outbox, self.model_ref, self.publisher.notify)
        self.progress = Progress(total_ticks=self.source.total_ticks)
        self._record = record
        self._scored: list[Scored] = []
        self._latency_ms: deque[float] = deque(maxlen=500)
        self._stop = threading.Event()
        self._last_health = time.monotonic()

    def _status(self, state: str) -> wire.Status:
        return wire.Status.build(self.config.agent.id, state, self.model_ref)

    def stop(self) -> None:
        self._stop.set()

    # --- one tick --------------------------------------------------------------------------

    def _window(self, readings: list[Reading]) -> list[Windows]:
        ready = []
        for r in readings:
            t, values = self.quality.clean(r.asset, r.t, r.values)
            if len(t):
                w = self.windower.update(r.asset, t, values)
                if w is not None:
                    ready.append(w)
        return ready

    def _score(self, ready: list[Windows]) -> None:
        # One feature pass and one model call for every window ready at this tick.
        x = self.extractor.transform(np.concatenate([w.values for w in ready]))
        assets = [w.asset for w in ready for _ in range(len(w))]
        ends = np.concatenate([w.end for w in ready])
        starts = np.concatenate([w.start for w in ready])
        self.quality.check_features(assets, x, ends)
        began = time.perf_counter()
        scores = self.model.run(x)
        self._latency_ms.append((time.perf_counter() - began) * 1e3)
        items = []
        for asset, s0, s1, score in zip(assets, starts, ends, scores, strict=True):
            alert = bool(score >= self.threshold)
            items.append(wire.Prediction(asset=asset, window_start=_dt(s0), window_end=_dt(s1),
                                         score=float(score), alert=alert))
            self.drift.update(float(score), float(s1))
            self.progress.alerts += alert
            if self._record:
                self._scored.append(Scored(asset, _dt(s1), float(score)))
        self.progress.windows_scored += len(items)
        self.batcher.add("predictions", items)

    def _events(self) -> None:
        quality: list[Event] = self.quality.events()
        drift = self.drift.events()
        self.progress.quality_events += len(quality)
        self.progress.drift_events += len(drift)
        items = [
            wire.DriftEvent(asset=e.asset, at=_dt(e.at_s), monitor=e.monitor,
                            detector=e.detector, value=e.value, detail=e.detail)
            for e in quality + drift
        ]
        if items:
            self.batcher.add("drift", items)

    def _health(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_health < self.config.publish.health_interval_s:
            return
        self._last_health = now
        median = statistics.median(self._latency_ms) if self._latency_ms else None
        self.batcher.add("health", [wire.Health(
            at=datetime.now(UTC), windows_scored=self.progress.windows_scored,
            outbox_depth=self.outbox.depth, outbox_dropped=self.outbox.dropped,
            rejected_readings=self.quality.rejected_readings, inference_ms_median=median,
        )])

    def _update_progress(self) -> None:
        p = self.progress
        p.rejected_readings = self.quality.rejected_readings
        p.outbox_depth = self.outbox.depth
        p.published = self.publisher.published
        p.connected = self.publisher.connected

    # --- the loop --------------------------------------------------------------------------

    def run(self, *, drain_timeout_s: float = 60.0) -> RunReport:
        """Replay the source, then wait up to ``drain_timeout_s`` for the outbox to empty."""
        self.publisher.start()
        try:
            for readings in self.source.ticks():
                ready = self._window(readings)
                if ready:
                    self._score(ready)
                self._events()
                self._health()
                if self.batcher.due():
                    self.batcher.flush()
                self.progress.ticks += 1
                self._update_progress()
                if self._stop.is_set():
                    break
            self._health(force=True)
            self.batcher.flush()
            # Stopped by a signal: do not hold up a service manager; the outbox keeps the rest.
            drained = self.publisher.flush(min(drain_timeout_s, 5.0) if self._stop.is_set()
                                           else drain_timeout_s)
            self._update_progress()
            if not drained:
                logger.warning("%d messages still in the outbox after %.0f s; they are kept "
                               "for the next start", self.outbox.depth, drain_timeout_s)
            return RunReport(self.progress, drained, self._scored)
        finally:
            self.publisher.close()
            self.outbox.close()


def run(config: AgentConfig, *, record: bool = False) -> RunReport:
    return Agent(config, record=record).run()
