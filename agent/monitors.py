"""Watch the agent's own inputs and outputs.

`QualityMonitor` checks readings (NaN, infinite) and features (outside what training saw)
before they reach the model. `DriftMonitor` runs a River detector over the stream of
model scores. Both report *events*: a condition is reported once when it starts, not on
every sample while it lasts, so a dead sensor is one event, not ten thousand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from river import drift

from contract.card import ModelCard

__all__ = ["DriftMonitor", "Event", "QualityMonitor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    asset: str | None
    at_s: float
    monitor: str
    detector: str
    value: float | None
    detail: str


class QualityMonitor:
    """Reject non-finite readings and flag features outside the training range.

    Parameters
    ----------
    card
        The model card: channel names, and each feature's training range.
    range_margin
        A feature is out of range beyond [min, max] widened by this fraction of max - min.
    stuck_samples
        A channel the model reads is stuck after this many identical samples in a row;
        0 disables the check.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> card = S(channel_names=["t"], features=[S(name="t.mean", range=(0.0, 1.0))])
    >>> q = QualityMonitor(card, range_margin=0.0)
    >>> t, v = q.clean("a", np.array([1.0, 2.0]), np.array([[0.5], [np.nan]]))
    >>> v.tolist(), q.rejected_readings, [e.detector for e in q.events()]
    ([[0.5]], 1, ['nan'])
    >>> _ = q.check_features(["a"], np.array([[3.0]]), np.array([2.0]))
    >>> [(e.monitor, e.detector) for e in q.events()]
    [('t.mean', 'range')]
    """

    def __init__(self, card: ModelCard, range_margin: float = 0.5, stuck_samples: int = 0) -> None:
        if range_margin < 0:
            raise ValueError(f"range_margin must be >= 0, got {range_margin}")
        if stuck_samples < 0:
            raise ValueError(f"stuck_samples must be >= 0, got {stuck_samples}")
        self.card = card
        self.range_margin = range_margin
        self.stuck_samples = stuck_samples
        self.channels = list(card.channel_names)
        # Only channels the model reads: a constant channel it ignores is not a fault.
        used = {c for f in card.features for c in getattr(f, "inputs", ())}
        self._watched = [j for j, c in enumerate(self.channels) if c in used]
        names, lo, hi = [], [], []
        for f in card.features:
            names.append(f.name)
            a, b = f.range if f.range is not None else (-np.inf, np.inf)
            span = (b - a) if np.isfinite(b - a) else 0.0
            lo.append(a - range_margin * span)
            hi.append(b + range_margin * span)
        self._names, self._lo, self._hi = names, np.array(lo), np.array(hi)
        self._reset()

    def _reset(self) -> None:
        self.rejected_readings = 0
        self.out_of_range = 0
        self._active: set[tuple[str, str, str]] = set()
        self._pending: list[Event] = []
        self._runs: dict[tuple[str, int], tuple[float, int]] = {}  # last value, run length

    def _raise_once(self, key: tuple[str, str, str], event: Event) -> None:
        if key not in self._active:
            self._active.add(key)
            self._pending.append(event)
            logger.warning("%s %s on %s: %s", event.detector, event.monitor, event.asset,
                           event.detail)

    def clean(self, asset: str, t: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drop samples with a non-finite value; return the finite ones."""
        finite = np.isfinite(values)
        ok = finite.all(axis=1)
        for j, channel in enumerate(self.channels):
            key = (asset, channel, "nan")
            if not finite[:, j].all():
                bad_at = float(t[np.argmin(finite[:, j])])
                self._raise_once(key, Event(asset, bad_at, channel, "nan", None,
                                            f"non-finite value in {channel}; sample skipped"))
            elif key in self._active:
                self._active.discard(key)
        n_bad = int(len(ok) - ok.sum())
        if n_bad:
            self.rejected_readings += n_bad
            t, values = t[ok], values[ok]
        if self.stuck_samples and len(t):
            self._check_stuck(asset, t, values)
        return t, values

    def _check_stuck(self, asset: str, t: np.ndarray, values: np.ndarray) -> None:
        n = len(t)
        pos = np.arange(n)
        for j in self._watched:
            col = values[:, j]
            last, run = self._runs.get((asset, j), (np.nan, 0))
            starts = np.diff(np.r_[last, col]) != 0  # True where a new run begins
            begun = np.maximum.accumulate(np.where(starts, pos, -1))
            # Length of the run each sample belongs to, up to and including it.
            run_at = np.where(begun >= 0, pos - begun + 1, run + pos + 1)
            self._runs[(asset, j)] = (float(col[-1]), int(run_at[-1]))
            key = (asset, self.channels[j], "stuck")
            for p in np.flatnonzero(run_at == self.stuck_samples):
                self._active.discard(key)  # a run that reaches the limit is a new stretch
                self._raise_once(key, Event(
                    asset, float(t[p]), self.channels[j], "stuck", float(col[p]),
                    f"{self.channels[j]} has read {col[p]:.6g} for {self.stuck_samples} "
                    "samples in a row"))
            if run_at[-1] < self.stuck_samples:
                self._active.discard(key)

    def check_features(self, assets: Sequence[str], x: np.ndarray, at_s: np.ndarray) -> np.ndarray:
        """Flag features outside the training range; return a per-row 'all in range' mask."""
        outside = (x < self._lo) | (x > self._hi)
        rows = cast(np.ndarray, outside.any(axis=1))
        self.out_of_range += int(rows.sum())
        for i in np.flatnonzero(rows):
            for j in np.flatnonzero(outside[i]):
                name = self._names[j]
                self._raise_once(
                    (assets[int(i)], name, "range"),
                    Event(assets[int(i)], float(at_s[i]), name, "range", float(x[i, j]),
                          f"{name}={x[i, j]:.4g} outside training range "
                          f"[{self._lo[j]:.4g}, {self._hi[j]:.4g}] (margin included)"),
                )
        for i in np.flatnonzero(~rows):
            for name in self._names:
                self._active.discard((assets[int(i)], name, "range"))
        return ~rows

    def events(self) -> list[Event]:
        """Events raised since the last call."""
        out, self._pending = self._pending, []
        return out


class DriftMonitor:
    """A River drift detector over the fleet's stream of model scores.

    Parameters
    ----------
    detector
        ``"adwin"`` (adaptive window: changes in the mean score) or ``"page_hinkley"``.
    delta
        ADWIN's confidence; smaller means fewer false alarms and later detection.

    Examples
    --------
    >>> rng = np.random.default_rng(7)
    >>> m = DriftMonitor("adwin", delta=0.002)
    >>> for s in np.r_[rng.uniform(0, 0.1, 500), rng.uniform(0.6, 0.9, 500)]:
    ...     m.update(float(s), at_s=0.0)
    >>> m.detections >= 1
    True
    """

    def __init__(self, detector: str = "adwin", delta: float = 0.002) -> None:
        if detector not in ("adwin", "page_hinkley"):
            raise ValueError(f"detector must be 'adwin' or 'page_hinkley', got {detector!r}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.detector = detector
        self.delta = delta
        self._reset()

    def _reset(self) -> None:
        # river leaves ADWIN.__init__ and ADWIN.update unannotated.
        self._river = (
            drift.ADWIN(delta=self.delta)  # type: ignore[no-untyped-call]
            if self.detector == "adwin"
            else drift.PageHinkley()
        )
        self.detections = 0
        self._pending: list[Event] = []
        self._name = type(self._river).__name__

    def update(self, score: float, at_s: float) -> None:
        self._river.update(score)  # type: ignore[no-untyped-call]
        if self._river.drift_detected:
            self.detections += 1
            estimate = getattr(self._river, "estimation", None)
            self._pending.append(
                Event(None, at_s, "score", self._name,
                      None if estimate is None else float(estimate),
                      "the distribution of model scores changed"
                      + ("" if estimate is None else f"; mean score now {estimate:.3f}"))
            )

    def events(self) -> list[Event]:
        out, self._pending = self._pending, []
        return out
