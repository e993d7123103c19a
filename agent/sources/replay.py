"""Replay recorded files as if the machines were running now."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np

from agent.config import ReplaySourceConfig
from agent.datasets import Recording, read_recordings
from agent.errors import SourceError
from agent.sources import Reading
from contract.card import ModelCard

__all__ = ["ReplaySource"]

logger = logging.getLogger(__name__)


class ReplaySource:
    """Replay a recorded file: several assets interleaved in time order, paced by ``speed``.

    Samples are handed over one tick at a time (``tick`` file time units: one C-MAPSS cycle,
    one second of a vibration snapshot), so the pipeline sees what a live gateway would.
    """

    def __init__(self, config: ReplaySourceConfig, card: ModelCard) -> None:
        self.config = config
        self.channels = card.channel_names
        fmt = config.format or card.input.format
        try:
            recordings = read_recordings(config.path, fmt)
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read {config.path} as {fmt}: {exc}") from exc
        if config.assets is not None:
            wanted = set(config.assets)
            unknown = wanted - {r.asset for r in recordings}
            if unknown:
                raise SourceError(f"{config.path} has no assets {sorted(unknown)}")
            recordings = [r for r in recordings if r.asset in wanted]
        if not recordings:
            raise SourceError(f"{config.path} holds no recordings")
        self._schedule = self._plan(recordings)
        self.total_ticks = len(self._schedule)
        self.assets = [r.asset for r in recordings]
        steps = np.concatenate(
            [np.diff(r.t) for r in recordings if len(r.t) > 1] or [np.zeros(0)]
        )
        steps = steps[steps > 0]
        self.sample_interval_s = (
            float(np.median(steps)) * config.step_s if len(steps) else None
        )
        self._t0 = min(float(r.t[0]) for r in recordings if len(r.t))
        start = config.start or datetime.now(UTC)
        self._start_epoch = start.timestamp()

    def _plan(self, recordings: list[Recording]) -> list[tuple[int, list[Reading]]]:
        t0 = min(float(r.t[0]) for r in recordings if len(r.t))
        by_tick: dict[int, list[Reading]] = defaultdict(list)
        for rec in recordings:
            missing = [c for c in self.channels if c not in rec.channels]
            if missing:
                raise SourceError(f"{rec.asset}: the recording lacks channels {missing}")
            cols = [rec.channels.index(c) for c in self.channels]
            values = rec.values[:, cols]
            ticks = np.floor((rec.t - t0) / self.config.tick).astype(np.int64)
            bounds = np.flatnonzero(np.diff(ticks)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ticks)], strict=True):
                by_tick[int(ticks[lo])].append(Reading(rec.asset, rec.t[lo:hi], values[lo:hi]))
        return sorted(by_tick.items())

    def to_epoch_s(self, t: np.ndarray) -> np.ndarray:
        return self._start_epoch + (np.asarray(t, dtype=np.float64) - self._t0) * self.config.step_s

    def ticks(self) -> Iterator[list[Reading]]:
        while True:
            began = time.monotonic()
            for tick, readings in self._schedule:
                if self.config.speed > 0:
                    due = began + tick * self.config.tick * self.config.step_s / self.config.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield [Reading(r.asset, self.to_epoch_s(r.t), r.values) for r in readings]
            if not self.config.loop:
                return
            # A looped replay continues in plant time after the last sample.
            span = (self._schedule[-1][0] + 1) * self.config.tick * self.config.step_s
            self._start_epoch += span
