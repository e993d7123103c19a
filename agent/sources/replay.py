"""Replay recorded files as if the machines were running now.

What is replayed: a plant's CSV or Parquet files through its column mapping
(``type: table``, ``agent.sources.table``), or a shipped data set's format (``type: replay``
with ``format:``, or the model card's): C-MAPSS and AI4I are shorthands for their mappings,
IMS snapshots have their own reader (``agent.datasets``).
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agent.config import ReplaySourceConfig
from agent.datasets import Recording, read_recordings
from agent.errors import SourceError
from agent.position import Position
from agent.sources import Reading
from agent.sources.config import TableSourceConfig
from agent.sources.table import files_of, preset, read_table
from contract.card import ModelCard

__all__ = ["ReplaySource"]

logger = logging.getLogger(__name__)


class ReplaySource:
    """Replay a recorded file: several assets interleaved in time order, paced by ``speed``.

    Samples are handed over one tick at a time (``tick`` file time units: one C-MAPSS cycle,
    one second of a vibration snapshot), so the pipeline sees what a live gateway would.

    The replay can be resumed: ``position`` is where it has got to (the last tick handed
    over), ``seek()`` makes ``ticks()`` continue after a saved position with the plant
    times the first run gave, and ``warmup()`` hands over the samples just before it.
    """

    def __init__(self, config: ReplaySourceConfig | TableSourceConfig,
                 card: ModelCard) -> None:
        self.config = config
        self.channels = card.channel_names
        if isinstance(config, TableSourceConfig):
            fmt: str | None = None
            recordings = read_table(config.path, config.table, card)
        else:
            fmt = config.format or card.input.format
            if fmt is None:
                raise SourceError("the model card names no recorded format (input.format): "
                                  "set source.format to cmapss, ai4i or ims for a replay, or "
                                  "use a table source")
            mapping = preset(fmt)
            if mapping is not None:
                # A shipped format carries every channel it has; a model may read fewer.
                wanted = {c.name for c in card.input.channels}
                mapping = mapping.model_copy(update={"channels": {
                    k: v for k, v in mapping.channels.items() if k in wanted}})
            try:
                recordings = (read_recordings(config.path, fmt) if mapping is None
                              else read_table(config.path, mapping, card))
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
        # Now, to the whole second: plant times stay exact in floating point (and in a
        # saved position), as with a configured start.
        start = config.start or datetime.now(UTC).replace(microsecond=0)
        # Plant time of file time t0 in the first pass; pass p is `p * _span` later.
        self._start_epoch = start.timestamp()
        self._span = (self._schedule[-1][0] + 1) * config.tick * config.step_s
        self._fingerprint = self._identity(fmt)
        self._index = self._by_asset()
        self._pass = 0  # where ticks() begins: pass and index into the schedule
        self._next = 0
        self.position: Position | None = None

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

    def _by_asset(self) -> dict[str, tuple[list[int], list[Reading], np.ndarray]]:
        """Per asset: the schedule indices holding its readings, the readings, and how many
        of its samples come before each of them."""
        found: dict[str, tuple[list[int], list[Reading]]] = {}
        for i, (_, readings) in enumerate(self._schedule):
            for r in readings:
                idx, rs = found.setdefault(r.asset, ([], []))
                idx.append(i)
                rs.append(r)
        return {a: (idx, rs, np.cumsum([0] + [len(r.t) for r in rs]))
                for a, (idx, rs) in found.items()}

    def _identity(self, fmt: str | None) -> dict[str, Any]:
        """What a saved position must match: the same data, replayed the same way.

        A file is known by its content (size and SHA-256: a copy, a checkout or a touch
        that leaves it as it was still matches); a directory of snapshots (IMS, often a GB)
        or the files a glob matches by their number, total size and latest mtime."""
        path = self.config.path if glob.has_magic(str(self.config.path)) \
            else self.config.path.resolve()
        identity: dict[str, Any] = {"source": "replay", "path": str(path)}
        try:
            if path.is_dir() or glob.has_magic(str(path)):
                files = ([e.stat() for e in os.scandir(path) if e.is_file()] if path.is_dir()
                         else [p.stat() for p in files_of(path)])
                identity |= {"files": len(files), "size": sum(s.st_size for s in files),
                             "mtime_ns": max((s.st_mtime_ns for s in files), default=0)}
            else:
                digest = hashlib.sha256()
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                identity |= {"size": path.stat().st_size, "sha256": digest.hexdigest()}
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
        start = self.config.start
        if isinstance(self.config, TableSourceConfig):
            identity["table"] = self.config.table.model_dump(mode="json")
        else:
            identity["format"] = fmt
        return identity | {"assets": list(self.assets),
                           "tick": self.config.tick, "step_s": self.config.step_s,
                           "start": None if start is None else start.timestamp()}

    # --- resuming --------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """The replay's identity, as saved with its position."""
        return dict(self._fingerprint)

    def seek(self, position: Position) -> None:
        """Continue after ``position`` (saved by an earlier run of this same replay): its
        plant times, pass and tick. At the end of a pass, a looping replay goes on with the
        next pass and one that does not loop has nothing left."""
        self._start_epoch = position.start_epoch
        self._pass, self._next = position.loop, min(position.tick, self.total_ticks)
        if self._next >= self.total_ticks and self.config.loop:
            self._pass, self._next = self._pass + 1, 0
        self.position = position

    def start_position(self) -> Position:
        """Where ``ticks()`` begins (nothing done yet in a fresh replay)."""
        plant_time = None
        if self._next:
            _, readings = self._schedule[self._next - 1]
            plant_time = max(float(r.t[-1]) for r in readings)
            plant_time = float(self._epoch(self._pass, np.array(plant_time)))
        return Position(self._fingerprint, self._start_epoch, self._pass, self._next,
                        self.total_ticks, plant_time)

    def warmup(self, samples: int, hop: int = 1) -> list[Reading]:
        """Per asset, the last ``samples`` or more samples before where ``ticks()`` begins
        (across passes when the replay loops), in plant time: to refill the windows. As
        many more as it takes for the samples before them to be a multiple of ``hop``, so
        windows start where they started in the first run (exact unless readings were
        rejected earlier in a replay whose windows hop by more than one sample).
        Nothing when the replay starts from the beginning or has nothing left."""
        out: list[Reading] = []
        if self._next >= self.total_ticks and not self.config.loop:
            return out
        for asset, (idx, readings, before) in self._index.items():
            per_pass = int(before[-1])
            cut = bisect.bisect_left(idx, self._next)  # its readings before the point
            have = self._pass * per_pass + int(before[cut])  # its samples before the point
            first = max(0, have - samples) // hop * hop
            need = have - first
            parts: list[tuple[np.ndarray, np.ndarray]] = []
            p, k = self._pass, cut
            while need > 0:
                for r in reversed(readings[:k]):
                    take = min(need, len(r.t))
                    parts.append((self._epoch(p, r.t[-take:]), r.values[-take:]))
                    need -= take
                    if need == 0:
                        break
                p, k = p - 1, len(readings)
            if parts:
                parts.reverse()
                out.append(Reading(asset, np.concatenate([t for t, _ in parts]),
                                   np.concatenate([v for _, v in parts])))
        return out

    # --- replaying -------------------------------------------------------------------------

    def _epoch(self, p: int, t: np.ndarray) -> np.ndarray:
        offset = self._start_epoch + p * self._span
        return offset + (np.asarray(t, dtype=np.float64) - self._t0) * self.config.step_s

    def to_epoch_s(self, t: np.ndarray) -> np.ndarray:
        return self._epoch(self._pass, t)

    def ticks(self) -> Iterator[list[Reading]]:
        unit = self.config.tick * self.config.step_s
        while self._next < self.total_ticks:
            # Paced from the first tick handed over in this pass (the resumed one too).
            began, offset = time.monotonic(), self._schedule[self._next][0]
            for i in range(self._next, self.total_ticks):
                tick, readings = self._schedule[i]
                if self.config.speed > 0:
                    due = began + (tick - offset) * unit / self.config.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                out = [Reading(r.asset, self._epoch(self._pass, r.t), r.values)
                       for r in readings]
                self.position = Position(self._fingerprint, self._start_epoch, self._pass,
                                         i + 1, self.total_ticks,
                                         max(float(r.t[-1]) for r in out))
                yield out
            if not self.config.loop:
                self._next = self.total_ticks
                return
            # A looped replay continues in plant time after the last sample.
            self._pass, self._next = self._pass + 1, 0
