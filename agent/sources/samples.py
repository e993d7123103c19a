"""Samples assembled from values that arrive one channel at a time (an MQTT topic per
sensor, an OPC UA node per channel)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SampleAssembler", "take"]


@dataclass
class _Row:
    t: float
    values: dict[str, float] = field(default_factory=dict)


class SampleAssembler:
    """Values of one asset within ``align_s`` of the first one form one sample. A sample
    is handed over as soon as every channel has a value; a value for a channel it already
    has, or one further away in time, hands it over with the channels it lacks as NaN (a
    missing value, which the quality monitor counts and skips) and starts the next.

    >>> a = SampleAssembler(["p", "t"], align_s=0.5)
    >>> a.add("m", "p", 1.0, 10.0), a.add("m", "t", 2.0, 10.2)[0][2].tolist()
    ([], [[1.0, 2.0]])
    >>> a.add("m", "p", 3.0, 11.0), a.add("m", "p", 4.0, 12.0)[0][2].tolist()
    ([], [[3.0, nan]])
    """

    def __init__(self, channels: Sequence[str], align_s: float,
                 on_missing: Callable[[str, str], None] | None = None) -> None:
        self.channels = list(channels)
        self._index = {c: j for j, c in enumerate(self.channels)}
        self.align_s = align_s
        self._on_missing = on_missing
        self._rows: dict[str, _Row] = {}

    def add(self, asset: str, channel: str, value: float,
            t: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The samples this value completes: (asset, t (1,), values (1, n_channels))."""
        out = []
        row = self._rows.get(asset)
        if row is not None and (channel in row.values or abs(t - row.t) > self.align_s):
            out.append(self._emit(asset, row))
            row = None
        if row is None:
            row = self._rows[asset] = _Row(t)
        row.values[channel] = value
        if len(row.values) == len(self.channels):
            out.append(self._emit(asset, row))
        return out

    def _emit(self, asset: str, row: _Row) -> tuple[str, np.ndarray, np.ndarray]:
        self._rows.pop(asset, None)
        values = np.full((1, len(self.channels)), np.nan)
        for c, v in row.values.items():
            values[0, self._index[c]] = v
        absent = [c for c in self.channels if c not in row.values]
        if absent and self._on_missing is not None:
            self._on_missing(asset, absent[0])
        return asset, np.array([row.t]), values


def take(q: queue.Queue[Any], wait_s: float, most: int) -> list[Any]:
    """What a live source's receiving thread queued, for one tick: up to ``most`` items,
    waiting at most ``wait_s`` for the first (none: an empty tick, so the agent can stop).

    >>> q: queue.Queue[int] = queue.Queue()
    >>> for i in range(5):
    ...     q.put(i)
    >>> take(q, 0.01, 3), take(q, 0.01, 3), take(q, 0.01, 3)
    ([0, 1, 2], [3, 4], [])
    """
    try:
        batch = [q.get(timeout=wait_s)]
    except queue.Empty:
        return []
    while len(batch) < most:
        try:
            batch.append(q.get_nowait())
        except queue.Empty:
            break
    return batch
