"""Features against the training envelope, per asset: has this asset left what the model
was trained on?

For each feature the card names, a window's *exceedance* is how far the feature stands
beyond the range the training data covered, in reference standard deviations (zero
inside). Whole training lives, failures included, lie inside that range, so a degrading
machine stays near zero while another operating regime, a fault mode the training lacked
or a drifting sensor does not. A one-sided CUSUM per (asset, feature) accumulates what
exceeds the allowance ``k`` and raises a condition when it passes the feature's calibrated
threshold; the condition ends when the CUSUM is back at zero (the asset is inside again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from agent.monitors import Event
from agent.monitors.cusum import step
from contract.card import ModelCard

__all__ = ["EnvelopeMonitor", "exceedance"]

logger = logging.getLogger(__name__)


def exceedance(x: np.ndarray, low: np.ndarray, high: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """How far each value stands outside [low, high], in units of ``scale``; 0 inside.

    >>> exceedance(np.array([[0.5, 3.0, -2.0]]), np.zeros(3), np.ones(3), np.full(3, 2.0))
    array([[0., 1., 1.]])
    """
    return np.asarray(np.maximum(0.0, np.maximum(x - high, low - x)) / scale)


def _scale(std: float, low: float, high: float) -> float:
    # A feature constant in training has no spread to measure against: use a sliver of its
    # magnitude, so any real change of it counts as far outside.
    if std > 0:
        return std
    return max(abs(high - low), abs(high) * 1e-3, 1e-9)


class EnvelopeMonitor:
    """CUSUM of each feature's exceedance beyond the training range, per asset.

    Parameters
    ----------
    names, units
        Feature names and units, in the order of the feature matrix's columns.
    low, high, mean, scale
        Training range, mean and standard deviation of each feature.
    channels
        The raw channels each feature reads (reported with its events).
    allowance
        Exceedance (in ``scale`` units) a window may have without accumulating.
    thresholds
        Calibrated CUSUM threshold of each feature.

    Examples
    --------
    >>> m = EnvelopeMonitor(["t.mean"], [""], low=[0.0], high=[1.0], mean=[0.5],
    ...                     scale=[0.25], channels=[("t",)], allowance=2.0, thresholds=[3.0])
    >>> for i, v in enumerate([0.9, 1.1, 2.0, 2.0, 0.5, 0.5, 0.5]):
    ...     m.update(["a"], np.array([[v]]), np.array([float(i)]))
    >>> [(e.state, e.at_s, e.since_s) for e in m.events()]
    [('start', 3.0, 2.0), ('end', 5.0, 2.0)]
    """

    def __init__(
        self,
        names: Sequence[str],
        units: Sequence[str],
        *,
        low: Sequence[float],
        high: Sequence[float],
        mean: Sequence[float],
        scale: Sequence[float],
        channels: Sequence[tuple[str, ...]],
        allowance: float,
        thresholds: Sequence[float] | np.ndarray,
    ) -> None:
        m = len(names)
        if not all(len(a) == m for a in (units, low, high, mean, scale, channels, thresholds)):
            raise ValueError("every per-feature argument needs one value per feature")
        if allowance < 0:
            raise ValueError(f"allowance must be >= 0, got {allowance}")
        if any(not h > 0 for h in thresholds) or any(not s > 0 for s in scale):
            raise ValueError("thresholds and scales must be > 0")
        self.names = list(names)
        self.units = list(units)
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.channels = [tuple(c) for c in channels]
        self.allowance = allowance
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self._reset()

    @classmethod
    def from_card(
        cls, card: ModelCard, thresholds: Sequence[float] | np.ndarray, allowance: float
    ) -> EnvelopeMonitor:
        low, high, mean, scale = [], [], [], []
        for f in card.features:
            ref = card.reference.features.get(f.name)
            lo, hi = f.range if f.range is not None else (
                (ref.min, ref.max) if ref is not None else (-np.inf, np.inf))
            low.append(lo)
            high.append(hi)
            mean.append(ref.mean if ref is not None else (lo + hi) / 2)
            scale.append(_scale(ref.std if ref is not None else 0.0, lo, hi))
        return cls(card.feature_names, [f.unit for f in card.features], low=low, high=high,
                   mean=mean, scale=scale, channels=[tuple(f.inputs) for f in card.features],
                   allowance=allowance, thresholds=thresholds)

    def _reset(self) -> None:
        m = len(self.names)
        self._rows: dict[str, int] = {}
        self._s = np.zeros((0, m))
        self._onset = np.zeros((0, m))
        self._sum = np.zeros((0, m))
        self._count = np.zeros((0, m))
        self._alarm = np.zeros((0, m), dtype=bool)
        self._pending: list[Event] = []
        self.alarms = 0

    def _row(self, asset: str) -> int:
        row = self._rows.get(asset)
        if row is None:
            row = self._rows[asset] = len(self._rows)
            if row >= len(self._s):
                grow = max(16, len(self._s))
                self._s, self._onset, self._sum, self._count = (
                    np.vstack([a, np.zeros((grow, a.shape[1]))])
                    for a in (self._s, self._onset, self._sum, self._count))
                self._alarm = np.vstack([self._alarm, np.zeros((grow, len(self.names)), bool)])
        return row

    def update(self, assets: Sequence[str], x: np.ndarray, at_s: np.ndarray) -> None:
        """Feed windows (rows of ``x``, in time order per asset) ending at ``at_s``."""
        e = exceedance(np.asarray(x, dtype=np.float64), self.low, self.high, self.scale)
        rows = np.array([self._row(a) for a in assets], dtype=np.int64)
        # Several windows of one asset in one call run one after another; the common case
        # (one window per asset per tick) is a single vectorised step.
        rank = np.zeros(len(rows), dtype=np.int64)
        if len(np.unique(rows)) < len(rows):
            seen: dict[int, int] = {}
            for i, r in enumerate(rows.tolist()):
                rank[i] = seen[r] = seen.get(r, -1) + 1
        for r in range(int(rank.max(initial=-1)) + 1):
            sel = np.flatnonzero(rank == r)
            self._step(rows[sel], x[sel], e[sel], np.asarray(at_s)[sel], assets, sel)

    def _step(self, rows: np.ndarray, x: np.ndarray, e: np.ndarray, at: np.ndarray,
              assets: Sequence[str], sel: np.ndarray) -> None:
        before = self._s[rows]
        if not (e > self.allowance).any() and not before.any():
            return  # in-distribution: nothing accumulates, nothing to do
        after = step(before, e, self.allowance)
        started = (before == 0) & (after > 0)
        onset = np.where(started, at[:, None], self._onset[rows])
        active = after > 0
        total = np.where(started, 0.0, self._sum[rows]) + np.where(active, x, 0.0)
        count = np.where(started, 0.0, self._count[rows]) + active
        alarm = self._alarm[rows]
        fire = ~alarm & (after > self.thresholds)
        end = alarm & ~active
        for i, j in zip(*np.nonzero(fire | end), strict=True):
            level = float(total[i, j] / count[i, j]) if count[i, j] else float(x[i, j])
            self._event(assets[int(sel[i])], int(j), float(at[i]), float(onset[i, j]),
                        level, float(after[i, j]), "start" if fire[i, j] else "end")
        self._s[rows], self._onset[rows], self._sum[rows], self._count[rows] = (
            after, onset, total, count)
        self._alarm[rows] = (alarm | fire) & active

    def _event(self, asset: str, j: int, at: float, since: float, level: float,
               statistic: float, state: Literal["start", "end"]) -> None:
        name, unit = self.names[j], self.units[j]
        lo, hi = float(self.low[j]), float(self.high[j])
        if state == "start":
            self.alarms += 1
            where = "above" if level > hi else "below" if level < lo else "around"
            detail = (f"{name} has been {where} the training range [{lo:.4g}, {hi:.4g}] {unit} "
                      f"since {_clock(since)}: {level:.4g} {unit} on average".rstrip())
        else:
            detail = f"{name} is back inside the training range [{lo:.4g}, {hi:.4g}] {unit}"
        event = Event(asset, at, name, "envelope", statistic, detail, state=state,
                      signal="feature", channels=self.channels[j], since_s=since,
                      reference=(lo, hi, float(self.mean[j])), current=level,
                      threshold=float(self.thresholds[j]))
        self._pending.append(event)
        if state == "start":
            logger.info("%s: %s", asset, detail)

    def outside(self, asset: str) -> list[str]:
        """Features of the asset that are in an envelope condition now."""
        row = self._rows.get(asset)
        return [] if row is None else [self.names[j] for j in np.flatnonzero(self._alarm[row])]

    def events(self) -> list[Event]:
        """Conditions started or ended since the last call."""
        out, self._pending = self._pending, []
        return out


def _clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
