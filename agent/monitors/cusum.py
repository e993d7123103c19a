"""One-sided CUSUM against a fixed reference.

River's detectors (ADWIN, Page-Hinkley, KSWIN) compare a stream with its own past. That is
the wrong question for a machine that degrades: its own past is healthier than its present,
by design. The question here is "has this stream left what the reference allows?", so the
statistic accumulates only what exceeds an allowance ``k`` that in-distribution data stays
under, and is anchored at zero from the first sample (no warm-up: an asset that is foreign
from its first window is caught at its first window):

    S_t = max(0, S_{t-1} + x_t - k),    alarm when S_t > h.

The last time ``S`` left zero is the classic estimate of when the change began, which is
what an event reports as ``since``. :class:`ReferenceCusum` is the River detector for one
stream; :func:`step` and :func:`excursion_peaks` are the same recursion over arrays (many
assets and signals per tick, and whole recorded lives when calibrating thresholds).
"""

from __future__ import annotations

import numpy as np
from river.base import DriftDetector

__all__ = ["ReferenceCusum", "excursion_peaks", "step"]


def step(s: np.ndarray, x: np.ndarray, k: float | np.ndarray) -> np.ndarray:
    """One CUSUM update of every stream at once.

    >>> step(np.array([0.0, 1.0]), np.array([0.2, 0.0]), 0.5).tolist()
    [0.0, 0.5]
    """
    return np.asarray(np.maximum(0.0, s + x - k))


def excursion_peaks(x: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of every excursion of the CUSUM of each column of ``x`` (time on axis 0).

    Returns ``(column, peak)`` arrays: one entry per excursion (``S`` leaving zero and
    coming back, or the record ending first), used to calibrate thresholds on recorded
    in-distribution data.

    >>> cols, peaks = excursion_peaks(np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.7]]), 0.5)
    >>> cols.tolist(), peaks.round(6).tolist()
    ([0, 0, 1], [0.5, 1.5, 0.2])
    """
    s = np.zeros(x.shape[1])
    peak = np.zeros(x.shape[1])
    cols: list[np.ndarray] = []
    peaks: list[np.ndarray] = []
    for row in x:
        s = step(s, row, k)
        peak = np.maximum(peak, s)
        ended = (s == 0) & (peak > 0)
        if ended.any():
            cols.append(np.flatnonzero(ended))
            peaks.append(peak[ended])
            peak[ended] = 0.0
    if (peak > 0).any():
        cols.append(np.flatnonzero(peak > 0))
        peaks.append(peak[peak > 0])
    if not cols:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    order = np.argsort(np.concatenate(cols), kind="stable")
    return np.concatenate(cols)[order], np.concatenate(peaks)[order]


class ReferenceCusum(DriftDetector):
    """A one-sided CUSUM against a fixed reference, as a River drift detector.

    ``drift_detected`` is True on the update where the statistic first passes
    ``threshold``; ``in_alarm`` stays True until it is back at zero (the condition is over),
    and ``onset`` is the index of the update that began the excursion.

    Parameters
    ----------
    allowance
        What the input may exceed each update without accumulating (``k``).
    threshold
        The alarm level ``h``; calibrated to a false-alarm budget by ``monitors.budget``.

    Examples
    --------
    >>> d = ReferenceCusum(allowance=0.5, threshold=2.0)
    >>> for x in [0.0, 0.3, 1.5, 1.5, 1.5, 0.0, 0.0, 0.0]:
    ...     d.update(x)
    ...     print(int(d.drift_detected), end="")
    00001000
    >>> d.onset, d.in_alarm, d.statistic
    (2, True, 1.5)
    >>> for x in [0.0, 0.0, 0.0]:
    ...     d.update(x)
    >>> d.in_alarm
    False
    """

    def __init__(self, allowance: float, threshold: float) -> None:
        super().__init__()
        if not allowance >= 0:
            raise ValueError(f"allowance must be >= 0, got {allowance}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.allowance = allowance
        self.threshold = threshold
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self.statistic = 0.0
        self.in_alarm = False
        self.onset: int | None = None
        self._n = 0

    def update(self, x: int | float) -> None:
        was_zero = self.statistic == 0.0
        self.statistic = max(0.0, self.statistic + float(x) - self.allowance)
        if was_zero and self.statistic > 0:
            self.onset = self._n
        self._drift_detected = not self.in_alarm and self.statistic > self.threshold
        self.in_alarm = self.statistic > 0 and (self.in_alarm or self._drift_detected)
        self._n += 1
