"""The agent, wired: source -> windows -> features -> model -> monitors -> outbox -> MQTT.

Everything is written to the on-disk outbox before any network call, so a broker outage
or a killed process loses nothing; the publisher drains it in order, and a row leaves the
outbox when the aggregator confirms it stored it (``publish.confirm``). Next to the outbox,
the source's position (``agent.position``) is saved after every flush, so a restarted agent
resumes its replay where the outputs stop instead of scoring it again.

The models come from the model store (``agent.modelstore``: what the registry assigned and
passed its self-test, else ``model.dir``) and change while the agent runs: the rollout thread
(``agent.rollout``) prepares an assignment, and the loop swaps it in between two ticks, all
that depends on the card at once (model, features, drift monitors' calibration, estimator,
threshold, the ModelRef of the messages), after flushing what the old model scored. Every
window is scored once, by the old model or the new one. A shadow model scores the same
windows beside the live one; its predictions and its estimate go out in envelopes of their
own (``ModelRef.role = "shadow"``) and feed none of the live model's monitors.
"""

from __future__ import annotations

import functools
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

from agent import checkpoint
from agent.config import AgentConfig, ReplaySourceConfig, tls_context
from agent.delivery import Confirmation, ModelCommands
from agent.encode import predictions_payload
from agent.estimate import PerformanceEstimator
from agent.features import FeatureExtractor
from agent.inference import OnnxModel
from agent.modelstore import ModelStore, Pointer, choose
from agent.monitors import Event
from agent.monitors.budget import Calibration, calibrate
from agent.monitors.envelope import EnvelopeMonitor
from agent.monitors.quality import QualityMonitor
from agent.monitors.score import ScoreMonitor
from agent.outbox import Outbox
from agent.position import Position, PositionStore, differences
from agent.publisher import Publisher
from agent.rollout import Prepared, Refused, Rollout, download
from agent.sources import Live, Reading, Resumable, open_source
from agent.sources.config import TableSourceConfig
from agent.windows import Batch, Windower, Windows
from contract import wire
from contract.card import CardError, ModelCard
from outage.failures import FailureLog

__all__ = ["Agent", "Predictions", "Progress", "RunReport", "Scored", "run"]

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
    events_sent: int = 0
    rejected_readings: int = 0
    outbox_depth: int = 0
    published: int = 0  # acknowledged by the broker
    confirmed: int = 0  # confirmed stored by the aggregator
    unconfirmed: int = 0  # acknowledged by the broker, not yet confirmed
    unsent: int = 0  # not yet acknowledged by the broker
    connected: bool = False
    models_applied: int = 0  # model assignments swapped in, this process
    models_refused: int = 0  # model assignments refused, this process


@dataclass
class RunReport:
    progress: Progress
    drained: bool
    scored: list[Scored] = field(default_factory=list)


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


@dataclass(frozen=True)
class Predictions:
    """Scored windows as columns, in the order they were scored."""

    assets: list[str]
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    alert: np.ndarray

    def slice(self, lo: int, hi: int) -> Predictions:
        return Predictions(self.assets[lo:hi], self.start[lo:hi], self.end[lo:hi],
                           self.score[lo:hi], self.alert[lo:hi])

    @classmethod
    def join(cls, parts: list[Predictions]) -> Predictions:
        if len(parts) == 1:
            return parts[0]
        return cls([a for p in parts for a in p.assets],
                   *(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("start", "end", "score", "alert")))


class _Batcher:
    """Collect items per kind; wrap them in envelopes and write them to the outbox."""

    def __init__(self, config: AgentConfig, outbox: Outbox, model: wire.ModelRef,
                 notify: Callable[[], None]) -> None:
        self._config = config
        self._outbox = outbox
        self._model = model
        self._notify = notify
        self._items: dict[str, list[wire.Item]] = {"predictions": [], "drift": [], "health": []}
        # Predictions as columns (one chunk per tick), encoded without an object per window.
        self._predictions: list[Predictions] = []
        self._waiting = 0
        self._since = time.monotonic()
        a = config.agent
        self._topics = {k: wire.topic(a.site, a.line, a.id, k) for k in self._items}

    def use(self, model: wire.ModelRef) -> None:
        """Name another model in the envelopes from now on; what waits goes out first, under
        the model that produced it."""
        self.flush()
        self._model = model

    def add(self, kind: str, items: Sequence[wire.Item]) -> None:
        self._items[kind].extend(items)
        if len(self._items[kind]) >= self._config.publish.max_items:
            self.flush(kind)

    def add_predictions(self, chunk: Predictions) -> None:
        self._predictions.append(chunk)
        self._waiting += len(chunk.score)
        if self._waiting >= self._config.publish.max_items:
            self.flush("predictions")

    def due(self) -> bool:
        return time.monotonic() - self._since >= self._config.publish.flush_interval_s

    def flush(self, kind: str | None = None) -> None:
        for k in [kind] if kind else list(self._items):
            items, limit = self._items[k], self._config.publish.max_items
            if k == "predictions" and self._predictions:
                self._write_predictions(Predictions.join(self._predictions), limit)
                self._predictions, self._waiting = [], 0
            while items:
                chunk, items = items[:limit], items[limit:]
                self._write(k, chunk)
            self._items[k] = []
        if kind is None:
            self._since = time.monotonic()
        self._notify()

    def _write_predictions(self, p: Predictions, limit: int) -> None:
        for lo in range(0, len(p.score), limit):
            self._write_columns(p.slice(lo, lo + limit))

    def _write_columns(self, p: Predictions) -> None:
        seq = self._outbox.allocate_seq()
        try:
            msg_id, ts, payload = predictions_payload(
                self._config.agent.id, seq, self._model, p.assets, p.start, p.end, p.score,
                p.alert)
        except wire.WireError as exc:
            if exc.reason != "too_large" or len(p.score) == 1:
                raise
            half = len(p.score) // 2  # as in _write
            self._write_columns(p.slice(0, half))
            self._write_columns(p.slice(half, len(p.score)))
            return
        # A shadow model's alerts open no ticket: its rows are telemetry, dropped first.
        self._outbox.put(seq, str(msg_id), self._topics["predictions"], "predictions",
                         payload, droppable=self._model.shadow or not p.alert.any(),
                         make_room=True,
                         windows=len(p.score), ts=ts)

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
        # Alerts, drift events and the health reports that tell the aggregator which
        # messages it will never get must survive a full outbox; plain telemetry may not.
        droppable = self._model.shadow or (
            kind == "health" and not any(cast(wire.Health, i).undeliverable for i in items)
        ) or (
            kind == "predictions" and not any(cast(wire.Prediction, i).alert for i in items)
        )
        tells_losses = kind == "health" and not droppable
        self._outbox.put(seq, str(env.msg_id), self._topics[kind], kind, payload,
                         droppable=droppable, make_room=not tells_losses,
                         windows=len(items) if kind == "predictions" else 0, ts=env.ts)


class Agent:
    """One gateway agent. ``run()`` replays the source to its end (or until ``stop()``)."""

    def __init__(self, config: AgentConfig, *, record: bool = False) -> None:
        self.config = config
        # Built first: a CA file that cannot be loaded is a config error, said before any
        # model loads or file is written. The brokers' CA files are loaded by paho later,
        # where a bad one would be a start failure that does not name the key.
        downloads = tls_context(config.model.ca_file, "model.ca_file")
        for key, ca_file in (("mqtt.ca_file", config.mqtt.ca_file),
                             ("source.ca_file", getattr(config.source, "ca_file", None))):
            if ca_file is not None:
                tls_context(ca_file, key)
        self.store = ModelStore(config.model_store)
        start = choose(self.store, config.model.dir)
        # A store filled before pruning existed, or left by a swap killed before its prune.
        self._prune()
        card = start.live.card
        self.source = open_source(config.source, card, agent_id=config.agent.id)
        self.windower = Windower(card.window.size, card.window.hop, len(card.channel_names))
        live = self._live(start.live)
        self.quality = QualityMonitor(card.channel_names, live.calibration.limits,
                                      step_window=live.calibration.step_window)
        self._use_live(live)
        self.outbox = Outbox(config.outbox_path, config.outbox.max_rows)
        self.positions = PositionStore(config.outbox_path)
        self._identity = self._make_identity()
        self._restored = False  # windows and monitors continue from a checkpoint
        self._resumed_tick = self._seek()
        if config.mqtt.username and config.mqtt.username != config.agent.id:
            # With the shipped ACL (configs/mosquitto/acl) a user may write only under its own
            # name; over MQTT 3.1.1 a refused publish is still acknowledged, so it is lost.
            logger.warning("mqtt.username %r differs from agent.id %r: the shipped broker ACL "
                           "will refuse this agent's messages", config.mqtt.username,
                           config.agent.id)
        a, pub = config.agent, config.publish
        self.rollout = Rollout(
            self.store, config.model.trusted_keys, card, agent_id=a.id,
            done=None if start.pointer is None else start.pointer.assignment,
            timeout_s=config.model.fetch_timeout_s, attempts=config.model.fetch_attempts,
            retry_s=config.model.fetch_retry_s,
            fetch=functools.partial(download, context=downloads))
        status = wire.topic(a.site, a.line, a.id, "status")
        self.publisher = Publisher(
            config.mqtt, self.outbox,
            client_id=config.mqtt.client_id or f"linewatch-agent-{a.id}",
            status_topic=status,
            status=lambda state, ts: wire.encode(self._status(state, ts)),
            confirmation=None if pub.confirm == "broker" else Confirmation(
                site=a.site, line=a.line, agent=a.id, timeout_s=pub.confirm_timeout_s),
            models=ModelCommands(site=a.site, line=a.line, agent=a.id,
                                 handler=self.rollout.submit),
        )
        self.batcher = _Batcher(config, self.outbox, self.model_ref, self.publisher.notify)
        self.shadow = None if start.shadow is None else self._shadow(start.shadow)
        self.deployment = self._start_deployment(start.pointer, start.tried, start.problem)
        self._refusals = FailureLog(logger)
        self.progress = Progress(total_ticks=self.source.total_ticks)
        self._record = record
        self._scored: list[Scored] = []
        self._latency_ms: deque[float] = deque(maxlen=500)
        self._stop = threading.Event()
        # Per pattern of assets in a tick: their rows in the quality monitor and windower.
        self._rows: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._last_health = time.monotonic()
        self._spans_told = 0  # the outbox's spans_made in the last health report

    # --- what depends on the model card ------------------------------------------------------

    def _live(self, model: OnnxModel) -> _Live:
        """Everything a live model needs, built beside the running one."""
        card = model.card
        cal = self._calibrate(card)
        return _Live(
            model=model, extractor=FeatureExtractor(card.features, card.channel_names),
            calibration=cal, envelope=EnvelopeMonitor.from_card(card, cal.envelope,
                                                                 cal.allowance),
            score_monitor=None if cal.score is None else ScoreMonitor(*cal.score),
            estimator=self._estimator(card), ref=_ref(card))

    def _use_live(self, live: _Live) -> None:
        self.model = live.model
        self.extractor = live.extractor
        self.calibration = live.calibration
        self.envelope = live.envelope
        self.score_monitor = live.score_monitor
        self.threshold = live.model.card.threshold.value
        self.estimator = live.estimator
        self.model_ref = live.ref

    def _shadow(self, model: OnnxModel, live: OnnxModel | None = None) -> _Shadow:
        card, features = model.card, (live or self.model).card.features
        ref = _ref(card, role="shadow")
        return _Shadow(
            model=model, ref=ref, estimator=self._estimator(card),
            # The same features as the live model's: computed once for both.
            extractor=None if card.features == features else FeatureExtractor(
                card.features, card.channel_names),
            batcher=_Batcher(self.config, self.outbox, ref, self.publisher.notify))

    def _estimator(self, card: ModelCard) -> PerformanceEstimator:
        # The card's horizon in plant seconds, where the source says what a time unit of
        # the data is (file replays); live sources leave the aggregator's check without it.
        horizon, step = card.output.horizon, getattr(self.config.source, "step_s", None)
        return PerformanceEstimator(
            card, window=self.config.estimate.window, draws=self.config.estimate.draws,
            horizon_s=None if horizon is None or step is None else horizon * float(step))

    def _make_identity(self) -> str:
        card = self.model.card
        return checkpoint.identity({
            "model": [card.name, card.version, card.sha256.model], "window": card.window,
            "channels": card.channel_names, "thresholds": self.calibration.report,
            "estimate": self.config.estimate, "source": self._fingerprint()})

    def _start_deployment(self, pointer: Pointer | None, tried: Pointer | None,
                          problem: str) -> wire.Deployment | None:
        """What the health reports say about the models at start: the assignment the
        store's pointer names, or why it was not used (None: never assigned one)."""
        if pointer is None and tried is None and not problem:
            return None
        shadow = None if self.shadow is None else self.shadow.ref
        if pointer is not None:
            return wire.Deployment(assignment=pointer.assignment, state="applied",
                                   at=pointer.at, live=self.model_ref, shadow=shadow,
                                   reason=problem[:1000])
        return wire.Deployment(assignment=None if tried is None else tried.assignment,
                               state="refused", at=datetime.now(UTC), live=self.model_ref,
                               shadow=shadow, reason=problem[:1000])

    def _calibrate(self, card: ModelCard) -> Calibration:
        mon = self.config.monitors
        per_day = mon.windows_per_day
        interval = self.source.sample_interval_s
        if per_day is None and interval:
            per_day = 86400.0 / (interval * card.window.hop)
        if per_day is None:
            per_day = 86400.0 / card.window.hop  # one sample a second, said in the log
            logger.warning("the source does not say how often it samples: the false-alarm "
                           "budget assumes one sample a second; set monitors.windows_per_day")
        budget = wire.Budget(alarms=mon.budget.alarms, per_days=mon.budget.per_days,
                             windows_per_day=per_day)
        assets = len(self.source.assets or ()) or 1
        cal = calibrate(card, budget, assets, stuck_samples=mon.stuck_samples)
        logger.info("monitors: at most %g false drift alarms per %g days over %d assets and "
                    "%d signals at %.4g windows a day; envelope thresholds %.3g-%.3g",
                    budget.alarms, budget.per_days, assets, cal.report.signals, per_day,
                    float(cal.envelope.min()), float(cal.envelope.max()))
        return cal

    def _status(self, state: str, ts: datetime) -> wire.Status:
        return wire.Status(schema_=wire.SCHEMA, agent=self.config.agent.id, state=state,
                           ts=ts, model=self.model_ref)

    def stop(self) -> None:
        self._stop.set()

    # --- model assignments, between two ticks ---------------------------------------------

    def _take_models(self) -> None:
        swapped = False
        for outcome in self.rollout.outcomes():
            if isinstance(outcome, Prepared):
                swapped = self._swap(outcome) or swapped
            else:
                self._refuse(outcome)
        if swapped:
            # After the whole batch: a version prepared later in it is no longer held, and
            # not pointed to before its own swap.
            self._prune()

    def _prune(self) -> None:
        try:
            self.store.prune()
        except OSError as exc:
            # What runs is not affected: the next swap tries again.
            logger.warning("model store: could not remove the versions no pointer names: %s",
                           exc)

    def _swap(self, new: Prepared) -> bool:
        """Put a prepared assignment in place of what runs, all at once. Whatever fails
        before the pointer is written leaves the old models scoring, reported as refused;
        True when the new ones run."""
        assignment, began = new.assignment, time.perf_counter()
        try:
            live = self._live(new.live)
            shadow = None if new.shadow is None else self._shadow(new.shadow, new.live)
        except (CardError, ValueError) as exc:
            self._refuse(Refused(assignment, "card", f"card of {assignment.live.name} "
                                 f"{assignment.live.version} unusable here: {exc}"))
            return False
        # What the old model scored leaves under its name, and the source's position is
        # saved with its monitors' state, before anything changes.
        self._flush()
        self._save_position()
        now = datetime.now(UTC)
        try:
            self.store.point(Pointer(live=new.live_dir, shadow=new.shadow_dir,
                                     assignment=assignment.id, at=now))
        except OSError as exc:
            self._refuse(Refused(assignment, "store", f"store: cannot write the model "
                                 f"pointer in {self.store.root}: {exc}"))
            return False
        old = self.model_ref
        self._use_live(live)
        limits = live.calibration
        if (limits.limits, limits.step_window) != (self.quality.limits,
                                                   self.quality.step_window):
            self.quality = self.quality.handover(limits.limits,
                                                 step_window=limits.step_window)
            self._rows.clear()  # the quality rows it caches were the old monitor's
        self.batcher.use(self.model_ref)
        self.shadow = shadow
        self._identity = self._make_identity()
        self.deployment = wire.Deployment(
            assignment=assignment.id, state="applied", at=now, live=self.model_ref,
            shadow=None if shadow is None else shadow.ref)
        self.progress.models_applied += 1
        self._refusals.recovered(f"model assignment {assignment.id} applied")
        self._health(force=True)
        self._flush()
        logger.info("model assignment %s applied (%s): %s %s replaces %s %s%s; scoring paused "
                    "%.0f ms between two ticks", assignment.id, assignment.stage,
                    self.model_ref.name, self.model_ref.version, old.name, old.version,
                    "" if shadow is None else f"; shadow {shadow.ref.name} {shadow.ref.version}",
                    (time.perf_counter() - began) * 1e3)
        return True

    def _refuse(self, refused: Refused) -> None:
        """Report a refused assignment at once; the running models keep scoring."""
        self.progress.models_refused += 1
        # Said with the reason: on the models page a refusal that will pass by itself must
        # not read like one that needs someone to act.
        then = "; the download is tried again in the background" if refused.retry else ""
        reason = refused.reason[:1000 - len(then)] + then
        self._refusals.failed(refused.cause, f"model assignment {refused.assignment.id} "
                              f"refused, the running model keeps scoring: {reason}")
        self.deployment = wire.Deployment(
            assignment=refused.assignment.id, state="refused", at=datetime.now(UTC),
            live=self.model_ref, shadow=None if self.shadow is None else self.shadow.ref,
            reason=reason)
        self._health(force=True)
        self._flush()

    def _flush(self, kind: str | None = None) -> None:
        self.batcher.flush(kind)
        if self.shadow is not None:
            self.shadow.batcher.flush(kind)

    # --- where the source starts -----------------------------------------------------------

    def _seek(self) -> int:
        """Continue the source after its saved position if it is the same source (same
        file, unchanged, same assets, tick, step and start); else start it afresh and save
        that start at once, so a run killed before its first save resumes with the same
        plant times. Returns the ticks of the pass already done."""
        source, cfg = self.source, self.config.source
        if not isinstance(source, Resumable) or not isinstance(
                cfg, ReplaySourceConfig | TableSourceConfig):
            return 0
        saved = self.positions.load()
        current = source.fingerprint()
        if saved is not None and not cfg.resume:
            logger.info("source.resume is false: the saved position (tick %d) is discarded",
                        saved.tick)
            saved = None
        elif saved is not None and saved.fingerprint != current:
            logger.info("the saved position is for another replay (%s differ): it is "
                        "discarded", ", ".join(differences(saved.fingerprint, current)))
            saved = None
        if saved is None:
            start = source.start_position()
            logger.info("starting replay of %s (%s ticks from plant time %s)", cfg.path,
                        start.total_ticks, _dt(start.start_epoch).isoformat())
            self.positions.save(start, self._checkpoint())
            return 0
        source.seek(saved)
        self._restore(saved)
        where = f"tick {saved.tick} of {saved.total_ticks}"
        if saved.loop:
            where += f" in pass {saved.loop + 1}"
        if saved.plant_time is not None:
            where += f" (plant time {_dt(saved.plant_time).isoformat()})"
        if saved.at_end and not cfg.loop:
            logger.info("replay already complete at tick %d; nothing to do (to replay %s "
                        "again: --from-start, or source.resume: false)", saved.tick, cfg.path)
        else:
            logger.info("resuming replay of %s at %s", cfg.path, where)
        return saved.tick

    def _fingerprint(self) -> dict[str, object] | None:
        return self.source.fingerprint() if isinstance(self.source, Resumable) else None

    def _checkpoint(self) -> tuple[str, bytes]:
        return self._identity, checkpoint.snapshot(self)

    def _restore(self, position: Position) -> None:
        """Continue the windows and monitors from the checkpoint saved with ``position``
        when it is this agent's (same model, thresholds, settings and replay)."""
        saved = self.positions.load_state(position)
        if saved is None:
            logger.info("no monitor state saved at tick %d: the monitors start afresh",
                        position.tick)
            return
        if saved[0] != self._identity:
            logger.info("the saved monitor state is for another model, configuration or "
                        "replay: it is ignored and the monitors start afresh")
            return
        try:
            checkpoint.restore(self, saved[1])
        except ValueError as exc:
            logger.warning("the saved monitor state is ignored (%s): the monitors start "
                           "afresh", exc)
            return
        self._restored = True
        logger.info("windows and monitors continue from their state at tick %d",
                    position.tick)

    def _warm_up(self) -> None:
        """After a resume, refill the windows: the samples just before the resume point go
        through the quality checks and the windower again, and the windows they complete
        (all in the outbox before the restart) are dropped, so the first window scored is
        the first one the last run did not finish. The quality checks' events and log lines
        for those samples were reported the first time and are dropped too.

        Only without a usable checkpoint (``agent.checkpoint``; with one, the windows and
        monitors are restored as they were and nothing is re-fed). Not restored then: the
        drift monitors' statistics (the envelope's and the score's CUSUMs start again from
        zero, which can only delay an alarm, never invent one), and quality state older
        than the samples re-fed (a stuck channel is seen stuck again only after
        ``stuck_samples`` more samples).
        """
        if not isinstance(self.source, Resumable) or self._restored:
            return
        w = self.windower
        readings = self.source.warmup(2 * w.size + 2 * self.quality.step_window + 16, w.hop)
        if not readings:
            return
        rejected = self.quality.rejected_readings
        quality_log = logging.getLogger("agent.monitors.quality")
        quality_log.addFilter(_drop)
        try:
            self._window(readings)
        finally:
            quality_log.removeFilter(_drop)
        self.quality.events()
        self.quality.rejected_readings = rejected

    def _save_position(self) -> None:
        # Called right after a full flush: every output of the ticks up to the source's
        # position is in the outbox. A process killed between that flush and this save
        # resumes from the position saved before: the ticks in between are scored again,
        # with the same window_end, and every store keeps such a window once.
        # The windows' and monitors' state goes with it, in the same transaction.
        position = self.source.position if isinstance(self.source, Resumable) else None
        if position is not None and position != self.positions.last:
            self.positions.save(position, self._checkpoint())

    # --- one tick --------------------------------------------------------------------------

    def _window(self, readings: list[Reading]) -> Batch:
        """Quality checks and windows of one tick; the windows it completes."""
        w = self.windower
        # A live source's quiet tick has no readings: nothing to window.
        if readings and all(len(r.t) == 1 for r in readings):
            assets = [r.asset for r in readings]
            key = tuple(assets)
            rows = self._rows.get(key)
            if rows is None:
                if len(set(key)) < len(key):
                    return self._window_each(readings)
                rows = (np.array([self.quality.row(a) for a in assets], dtype=np.int64),
                        np.array([w.row(a) for a in assets], dtype=np.int64))
                if len(self._rows) < 64:  # a source's few patterns of assets per tick
                    self._rows[key] = rows
            t = np.concatenate([r.t for r in readings]).astype(np.float64, copy=False)
            values = np.concatenate([r.values for r in readings]).astype(np.float64,
                                                                         copy=False)
            keep = self.quality.clean_tick(assets, rows[0], t, values)
            if not keep.all():
                return w.update_tick(rows[1][keep], t[keep], values[keep])
            return w.update_tick(rows[1], t, values)
        return self._window_each(readings)

    def _window_each(self, readings: list[Reading]) -> Batch:
        ready: list[Windows | Batch] = []
        for r in readings:
            t, values = self.quality.clean(r.asset, r.t, r.values)
            if len(t):
                w = self.windower.update(r.asset, t, values)
                if w is not None:
                    ready.append(w)
        return Batch.of(ready, self.windower.size, self.windower.n_channels)

    def _score(self, ready: Batch) -> None:
        # One feature pass and one model call for every window ready at this tick.
        x = self.extractor.transform(ready.values)
        assets, ends, starts = ready.assets, ready.end, ready.start
        self.envelope.update(assets, x, ends)
        began = time.perf_counter()
        scores = self.model.run(x)
        self._latency_ms.append((time.perf_counter() - began) * 1e3)
        alerts = scores >= self.threshold
        self.estimator.update(scores)
        if self.score_monitor is not None:
            order = np.argsort(ends, kind="stable")
            self.score_monitor.update(alerts[order], ends[order])
        self.progress.alerts += int(alerts.sum())
        if self._record:
            self._scored.extend(Scored(a, _dt(s1), float(score)) for a, s1, score in zip(
                assets, ends.tolist(), scores.tolist(), strict=True))
        self.progress.windows_scored += len(scores)
        self.batcher.add_predictions(Predictions(assets, starts, ends, scores, alerts))
        if self.shadow is not None:
            self._score_shadow(self.shadow, ready, x)

    def _score_shadow(self, shadow: _Shadow, ready: Batch, x: np.ndarray) -> None:
        """The shadow model on the very same windows; it feeds only its own estimator."""
        if shadow.extractor is not None:
            x = shadow.extractor.transform(ready.values)
        scores = shadow.model.run(x)
        shadow.estimator.update(scores)
        shadow.windows_scored += len(scores)
        shadow.batcher.add_predictions(Predictions(
            ready.assets, ready.start, ready.end, scores, scores >= shadow.ref.threshold))

    def _events(self) -> None:
        quality: list[Event] = self.quality.events()
        if isinstance(self.source, Live):
            quality += self.source.events()
        drift = self.envelope.events()
        if self.score_monitor is not None:
            drift += self.score_monitor.events()
        self.progress.quality_events += sum(e.state == "start" for e in quality)
        self.progress.drift_events += sum(e.state == "start" for e in drift)
        items = [_drift_item(e) for e in quality + drift]
        self.progress.events_sent += len(items)
        if items:
            self.batcher.add("drift", items)

    def _health(self, force: bool = False) -> None:
        now, pub = time.monotonic(), self.config.publish
        since = now - self._last_health
        # Messages newly known lost are told within a flush interval, not a health interval:
        # the aggregator waits for that report before it moves past the gap.
        news = self.outbox.spans_made != self._spans_told and since >= pub.flush_interval_s
        if not force and not news and since < pub.health_interval_s:
            return
        self._last_health = now
        self._spans_told = self.outbox.spans_made
        median = statistics.median(self._latency_ms) if self._latency_ms else None
        self.batcher.add("health", [wire.Health(
            at=datetime.now(UTC), windows_scored=self.progress.windows_scored,
            outbox_depth=self.outbox.depth, outbox_dropped=self.outbox.dropped,
            rejected_readings=self._rejected(), inference_ms_median=median,
            monitoring=self.calibration.report,
            estimate=self.estimator.estimate(),
            undeliverable=self.outbox.undeliverable(tell=True) or None,
            deployment=self.deployment,
        )])
        if self.shadow is not None:
            # The shadow's own estimate, under its own ModelRef, stored per version.
            self.shadow.batcher.add("health", [wire.Health(
                at=datetime.now(UTC), windows_scored=self.shadow.windows_scored,
                outbox_depth=self.outbox.depth, estimate=self.shadow.estimator.estimate(),
            )])

    def _rejected(self) -> int:
        """Readings the quality checks skipped, and input a live source dropped."""
        dropped = self.source.rejected if isinstance(self.source, Live) else 0
        return self.quality.rejected_readings + dropped

    def _update_progress(self) -> None:
        p = self.progress
        p.rejected_readings = self._rejected()
        p.outbox_depth = self.outbox.depth
        p.published = self.publisher.published
        p.confirmed = self.publisher.confirmed
        p.unconfirmed = self.outbox.unconfirmed
        p.unsent = self.outbox.unsent
        p.connected = self.publisher.connected

    # --- the loop --------------------------------------------------------------------------

    def _drain(self, timeout_s: float) -> bool:
        """Wait until every message left the outbox. Seqs the aggregator asks for that this
        agent no longer holds are told at once in a health report: it waits for that report
        to move past them."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.outbox.spans_made != self._spans_told:
                self._health(force=True)
                self._flush()
            drained = self.publisher.flush(max(0.0, deadline - time.monotonic()))
            if (drained or time.monotonic() >= deadline
                    or self.outbox.spans_made == self._spans_told):
                return drained

    def run(self, *, drain_timeout_s: float = 60.0) -> RunReport:
        """Replay the source, then wait up to ``drain_timeout_s`` for the outbox to empty:
        every message confirmed by the aggregator (``publish.confirm: aggregator``) or
        acknowledged by the broker (``broker``)."""
        self.publisher.start()
        self.rollout.start()
        try:
            self.progress.ticks = self._resumed_tick
            self._warm_up()
            if self.deployment is not None:
                self._health(force=True)  # what runs since the last assignment, at once
            for readings in self.source.ticks():
                self._take_models()
                ready = self._window(readings)
                if len(ready):
                    self._score(ready)
                self._events()
                self._health()
                if self.batcher.due():
                    self._flush()
                    self._save_position()
                self.progress.ticks += 1
                self._update_progress()
                if self._stop.is_set():
                    break
            # Everything scored goes in first, so that the last health report counts it and
            # names every message dropped to make room for it.
            self._flush()
            self._health(force=True)
            self._flush()
            self._save_position()
            # Stopped by a signal: do not hold up a service manager; the outbox keeps the rest.
            drained = self._drain(min(drain_timeout_s, 5.0) if self._stop.is_set()
                                  else drain_timeout_s)
            self._update_progress()
            if not drained:
                waiting = ("" if self.publisher.confirmation is None else
                           f" ({self.outbox.unconfirmed} handed to the broker but not "
                           "confirmed by the aggregator)")
                logger.warning("%d messages still in the outbox after %.0f s%s; they are "
                               "kept for the next start", self.outbox.depth, drain_timeout_s,
                               waiting)
            return RunReport(self.progress, drained, self._scored)
        finally:
            self.rollout.close()
            if isinstance(self.source, Live):
                self.source.close()
            self.publisher.close()
            self.outbox.close()
            self.positions.close()


@dataclass
class _Live:
    """What one live model brings: its features, drift monitors and estimator."""

    model: OnnxModel
    extractor: FeatureExtractor
    calibration: Calibration
    envelope: EnvelopeMonitor
    score_monitor: ScoreMonitor | None
    estimator: PerformanceEstimator
    ref: wire.ModelRef


@dataclass
class _Shadow:
    """A model scoring beside the live one: ``extractor`` None when its features are the
    live model's; its envelopes (``batcher``) name it with ``role="shadow"``."""

    model: OnnxModel
    ref: wire.ModelRef
    estimator: PerformanceEstimator
    extractor: FeatureExtractor | None
    batcher: _Batcher
    windows_scored: int = 0


def _ref(card: ModelCard, role: str | None = None) -> wire.ModelRef:
    return wire.ModelRef(name=card.name, version=card.version, sha256=card.sha256.model,
                         threshold=card.threshold.value,
                         role="shadow" if role == "shadow" else None)


def _drop(record: logging.LogRecord) -> bool:
    return False


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _drift_item(e: Event) -> wire.DriftEvent:
    reference = None
    if e.reference is not None and all(np.isfinite(e.reference[:2])):
        reference = wire.Range(low=e.reference[0], high=e.reference[1],
                               mean=_finite(e.reference[2]))
    return wire.DriftEvent(
        asset=e.asset, at=_dt(e.at_s), monitor=e.monitor, detector=e.detector,
        value=_finite(e.value), detail=e.detail, state=e.state,
        signal=e.signal,
        channels=list(e.channels) or None,
        since=None if e.since_s is None else _dt(e.since_s), reference=reference,
        current=_finite(e.current), threshold=_finite(e.threshold),
    )


def run(config: AgentConfig, *, record: bool = False) -> RunReport:
    return Agent(config, record=record).run()
