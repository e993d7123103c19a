"""The agent's alert rate against the reference's: is the model suddenly alarmed by
much more of the fleet than it ever was on the data it was trained on?

A Bernoulli CUSUM over the agent's stream of windows: each alerting window adds
``ln(p1/p0)``, each quiet one ``ln((1-p1)/(1-p0))``, where ``p0`` is the share of training
windows at or above the threshold (whole lives, so a fleet that runs machines to failure
would alert that often) and ``p1`` the rate worth raising a condition for.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np

from agent.monitors import Event
from agent.monitors.cusum import ReferenceCusum

__all__ = ["ScoreMonitor"]

logger = logging.getLogger(__name__)


class ScoreMonitor:
    """Alert rate of the agent's windows against the reference alert rate.

    Parameters
    ----------
    p0
        Reference share of alerting windows.
    p1
        Alert share to detect (> p0).
    threshold
        CUSUM threshold, calibrated by ``monitors.budget``.

    Examples
    --------
    >>> m = ScoreMonitor(p0=0.1, p1=0.2, threshold=5.0)
    >>> m.update(np.array([False] * 50), np.arange(50.0))
    >>> m.update(np.array([True] * 20), 50.0 + np.arange(20.0))
    >>> [(e.monitor, e.state, e.since_s) for e in m.events()]
    [('score', 'start', 50.0)]
    """

    def __init__(self, p0: float, p1: float, threshold: float) -> None:
        if not 0 < p0 < p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
        self.p0 = p0
        self.p1 = p1
        self.threshold = threshold
        self._up = math.log(p1 / p0)
        self._down = math.log((1 - p1) / (1 - p0))
        self._reset()

    def _reset(self) -> None:
        self._cusum = ReferenceCusum(allowance=0.0, threshold=self.threshold)
        self._times: dict[int, float] = {}
        self._alerts = 0
        self._windows = 0
        self._pending: list[Event] = []

    def update(self, alerts: np.ndarray, at_s: np.ndarray) -> None:
        """Feed the verdicts of windows, in time order."""
        for alert, at in zip(np.asarray(alerts, dtype=bool).tolist(),
                             np.asarray(at_s).tolist(), strict=True):
            was = self._cusum.in_alarm
            before = self._cusum.statistic
            self._cusum.update(self._up if alert else self._down)
            if before == 0 and self._cusum.statistic > 0:
                self._times, self._alerts, self._windows = {0: at}, 0, 0
            if self._cusum.statistic > 0:
                self._alerts += alert
                self._windows += 1
            if self._cusum.drift_detected:
                self._event("start", at)
            elif was and not self._cusum.in_alarm:
                self._event("end", at)

    def _event(self, state: Literal["start", "end"], at: float) -> None:
        since = self._times.get(0, at)
        rate = self._alerts / self._windows if self._windows else 0.0
        if state == "start":
            detail = (f"{100 * rate:.0f} % of windows alert since the change began, against "
                      f"{100 * self.p0:.0f} % over whole lives in training")
            logger.warning("score: %s", detail)
        else:
            detail = f"the alert rate is back to what training showed ({100 * self.p0:.0f} %)"
        self._pending.append(Event(
            None, at, "score", "alert_rate", self._cusum.statistic, detail, state=state,
            signal="score", since_s=since, reference=(0.0, self.p0, self.p0), current=rate,
            threshold=self.threshold))

    def events(self) -> list[Event]:
        out, self._pending = self._pending, []
        return out
