"""How good are the agent's alerts right now? An estimate without labels.

Truth about a window (did the machine fail within the horizon?) arrives weeks later, if at
all; the model's probabilities are here now. Confidence-based performance estimation
(CBPE, as in NannyML) reads the expected confusion matrix off calibrated probabilities:
over the last ``window`` scored windows (all of the agent's assets together), with
calibrated probability ``p_i`` of window ``i`` and the card's threshold ``t`` on its score,

- expected true positives  ``TP = sum of p_i over the alerting windows (score >= t)``,
- expected false positives ``FP = sum of 1 - p_i over the alerting windows``,
- expected false negatives ``FN = sum of p_i over the other windows``,

and precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, F1 ``2 TP / (2 TP + FP + FN)``.
A window alerts on the model's own score, as the agent publishes it; ``p_i`` is that score
read through the card's calibration map (``calibration.map``, a monotone function, so the
model's ranking is untouched), or the score itself when the card found it calibrated as is.

**Uncertainty.** Even with exact probabilities the realised figures scatter: each window's
true label is a coin flip with its own ``p_i`` (a Poisson-binomial count of positives).
:meth:`PerformanceEstimator.estimate` draws every window's label ``draws`` times (fixed
seed, vectorised; windows with ``p_i`` of exactly 0 or 1 are certain and not drawn) and
reports the 2.5-97.5 % range of each figure. That range treats windows as independent and
the calibration as exact: it holds neither the error of the map itself nor the way
consecutive windows of one machine share their fate, so read it as the least uncertainty
there is, not the most.

**What CBPE assumes.** That the card's calibration still holds on the data the agent sees:
that P(positive | inputs) is what it was in training. Under *covariate shift inside the
training range* (more worn machines than in training, another mix of operating points the
model has seen) it holds, and the estimate follows the new mix: this is what it is for.
Under *concept drift* (the same readings now mean something else: a new failure mode,
another maintenance policy, a recalibrated sensor) or with *inputs outside the training
range* (the model extrapolates, and so does its calibration) it does not, and the
estimate can be confidently wrong. The agent's monitors watch exactly those conditions:
trust the estimate only while the envelope and data-quality monitors are quiet, and check
it against the realised figures when outcomes arrive.

A card whose probabilities are not calibrated (no ``calibration`` block, as older cards and
regressors, or ``calibrated: false``) yields ``calibrated: false`` and no numbers.

numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from contract import wire
from contract.card import CalibrationMap, ModelCard

__all__ = ["DRAWS", "SEED", "WINDOW", "PerformanceEstimator", "apply_map"]

WINDOW = 2000  # scored windows the estimate is over (config: estimate.window)
DRAWS = 400  # simulated label sets per estimate (config: estimate.draws)
SEED = 20260302
_CELLS = 1 << 20  # random numbers drawn at once, at most (8 MiB of float64)


def apply_map(m: CalibrationMap | None, scores: np.ndarray) -> np.ndarray:
    """Scores read through calibration map ``m`` (as they are without one).

    >>> apply_map(CalibrationMap(x=[0.2, 0.6], y=[0.0, 0.8]), np.array([0.1, 0.4, 0.9]))
    array([0. , 0.4, 0.8])
    """
    p = np.asarray(scores, dtype=np.float64)
    return p if m is None else np.interp(p, m.x, m.y)


class PerformanceEstimator:
    """CBPE over a sliding window of the last ``window`` scored windows.

    >>> from pathlib import Path
    >>> card = ModelCard.load(Path(__file__).parents[1] / "models" / "cmapss_fd001")
    >>> est = PerformanceEstimator(card, window=4)
    >>> est.update(np.array([0.0, 0.01, 0.99, 0.999, 1.0]))
    >>> e = est.estimate()
    >>> e.windows, e.alerts, e.calibrated
    (4, 3, True)
    """

    def __init__(self, card: ModelCard, *, window: int = WINDOW, draws: int = DRAWS,
                 seed: int = SEED, horizon_s: float | None = None) -> None:
        if window < 1 or draws < 1:
            raise ValueError("window and draws must be at least 1")
        self.threshold = card.threshold.value
        cal = card.calibration
        self.calibrated = cal is not None and cal.calibrated
        self._map = None if cal is None else cal.map
        self.window = window
        self.draws = draws
        self.seed = seed
        self.horizon_s = horizon_s
        self._p = np.zeros(window, dtype=np.float64)
        self._alert = np.zeros(window, dtype=bool)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def update(self, scores: np.ndarray) -> None:
        """Add the model's scores of newly scored windows (oldest first)."""
        s = np.asarray(scores, dtype=np.float64).ravel()[-self.window:]
        if not len(s):
            return
        at = (self._next + np.arange(len(s))) % self.window
        self._p[at] = apply_map(self._map, s)
        self._alert[at] = s >= self.threshold
        self._next = int(at[-1] + 1) % self.window
        self._count = min(self._count + len(s), self.window)

    def estimate(self) -> wire.Estimate:
        """The estimate over the windows held now (the same windows give the same bytes)."""
        n = self._count
        alert = self._alert[:n]
        alerts = int(alert.sum())
        if not self.calibrated:
            return wire.Estimate(windows=n, calibrated=False, alerts=alerts,
                                 horizon_s=self.horizon_s)
        p = self._p[:n]
        tp, fn = float(p[alert].sum()), float(p[~alert].sum())
        fp = alerts - tp
        # Each draw's true positives among the alerts and missed positives among the rest.
        rng = np.random.default_rng(self.seed)
        tp_d = _draw_positives(p[alert], self.draws, rng)
        fn_d = _draw_positives(p[~alert], self.draws, rng)
        fp_d = alerts - tp_d
        return wire.Estimate(
            windows=n, calibrated=True, alerts=alerts,
            expected_positives=round(tp + fn, 3),
            precision=_interval(tp, tp + fp, tp_d, tp_d + fp_d),
            recall=_interval(tp, tp + fn, tp_d, tp_d + fn_d),
            f1=_interval(2 * tp, 2 * tp + fp + fn, 2 * tp_d, 2 * tp_d + fp_d + fn_d),
            horizon_s=self.horizon_s,
        )


def _draw_positives(p: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """How many of the windows with probabilities ``p`` are positive, ``draws`` times."""
    certain = int(np.sum(p >= 1.0))
    open_ = p[(p > 0.0) & (p < 1.0)]
    out = np.full(draws, certain, dtype=np.int64)
    step = max(1, _CELLS // draws)
    for i in range(0, len(open_), step):
        chunk = open_[i:i + step]
        out += np.count_nonzero(rng.random((draws, len(chunk))) < chunk, axis=1)
    return out


def _interval(num: float, den: float, num_d: np.ndarray,
              den_d: np.ndarray) -> wire.Interval | None:
    """``num / den`` and the 95 % range of ``num_d / den_d`` over the draws where it is
    defined; None when the estimate itself is undefined (e.g. precision without alerts)."""
    if den <= 0:
        return None
    ok = den_d > 0
    ratios = num_d[ok] / den_d[ok]
    value = min(1.0, max(0.0, num / den))
    if not len(ratios):
        return wire.Interval(value=round(value, 4), low=0.0, high=1.0)
    # The draws' own values at 2.5 % and 97.5 % (not interpolated between two of them), and
    # rounded outwards: a realised figure equal to a bound is inside.
    low = float(np.percentile(ratios, 2.5, method="lower"))
    high = float(np.percentile(ratios, 97.5, method="higher"))
    return wire.Interval(value=round(value, 4), low=math.floor(low * 1e4) / 1e4,
                         high=min(1.0, math.ceil(high * 1e4) / 1e4))
