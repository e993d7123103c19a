"""Raw readings per asset and channel: what a broken sensor looks like.

Checked before anything reaches the windows, on the channels the model reads (a constant
channel it ignores is not a fault):

- **non-finite** (``nan``) and **impossible** values (``impossible``: further outside the
  training range than ``impossible_spans`` times its width, e.g. a disconnected transmitter
  reading 0 or 65535) are skipped and counted, so the model never sees them;
- **stuck** (``stuck``): more identical samples in a row than training ever showed;
- **step** (``step``): the mean of the last ``w`` samples differs from the mean of the ``w``
  before by more than the calibrated number of noise units (an offset, a re-mounted or
  re-calibrated sensor); degradation is slow next to it;
- **gaps** (``gap``): samples further apart than ``gap_factor`` times the asset's usual
  interval.

NaN, impossible and stuck conditions end when the channel behaves again; a step is a
one-off fact (the channel stays offset), so it is reported once and re-armed when the test
statistic has come back down. Gaps are instants, reported once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.monitors import Event

__all__ = ["ChannelLimits", "QualityMonitor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelLimits:
    """What one watched channel may do (from the card's reference and the calibration).

    ``stuck_samples`` None and ``step_threshold`` None switch those checks off.
    """

    low: float
    high: float
    noise: float = 0.0
    stuck_samples: int | None = None
    step_threshold: float | None = None
    step_rearm: float = 0.0
    longest_run: int = 0
    unit: str = ""


class QualityMonitor:
    """Checks raw readings per asset and channel; skips the unusable ones.

    Parameters
    ----------
    channels
        All channel names, in the order of the readings' columns.
    limits
        Limits of the channels to watch (the ones the model reads), by name.
    step_window
        Samples per side of the step test.
    impossible_spans
        A value further outside [low, high] than this many times its width is impossible.
    gap_factor
        A gap is an interval longer than this many times the asset's median interval.

    Examples
    --------
    >>> q = QualityMonitor(["t"], {"t": ChannelLimits(0.0, 10.0, stuck_samples=3)})
    >>> t, v = q.clean("a", np.arange(5.0), np.array([[1.0], [np.nan], [2.0], [2.0], [2.0]]))
    >>> v.ravel().tolist(), q.rejected_readings
    ([1.0, 2.0, 2.0, 2.0], 1)
    >>> [(e.monitor, e.detector, e.state) for e in q.events()]
    [('t', 'nan', 'start'), ('t', 'nan', 'end'), ('t', 'stuck', 'start')]
    """

    def __init__(
        self,
        channels: Sequence[str],
        limits: dict[str, ChannelLimits],
        *,
        step_window: int = 10,
        impossible_spans: float = 3.0,
        gap_factor: float = 3.0,
    ) -> None:
        unknown = set(limits) - set(channels)
        if unknown:
            raise ValueError(f"limits for unknown channels {sorted(unknown)}")
        if step_window < 2:
            raise ValueError(f"step_window must be >= 2, got {step_window}")
        if impossible_spans <= 0 or gap_factor <= 1:
            raise ValueError("impossible_spans must be > 0 and gap_factor > 1")
        self.channels = list(channels)
        self.limits = dict(limits)
        self.step_window = step_window
        self.impossible_spans = impossible_spans
        self.gap_factor = gap_factor
        self._watched = [j for j, c in enumerate(self.channels) if c in limits]
        lims = [limits[self.channels[j]] for j in self._watched]
        span = np.array([max(lm.high - lm.low, abs(lm.high) * 0.1, 1e-9) for lm in lims])
        self._lo = np.array([lm.low for lm in lims]) - impossible_spans * span
        self._hi = np.array([lm.high for lm in lims]) + impossible_spans * span
        self._step = [i for i, lm in enumerate(lims) if lm.step_threshold is not None
                      and lm.noise > 0]
        self._reset()

    def _reset(self) -> None:
        self.rejected_readings = 0
        self._active: set[tuple[str, str, str]] = set()
        self._pending: list[Event] = []
        # last value, length of its run, when that run began
        self._runs: dict[tuple[str, int], tuple[float, int, float]] = {}
        self._tail: dict[str, np.ndarray] = {}  # last 2w-1 clean samples of watched channels
        self._tail_t: dict[str, np.ndarray] = {}
        self._armed: dict[tuple[str, int], bool] = {}
        self._last_t: dict[str, float] = {}
        self._intervals: dict[str, deque[float]] = {}

    # -- conditions ------------------------------------------------------------------------
    def _start(self, key: tuple[str, str, str], event: Event) -> None:
        if key not in self._active:
            self._active.add(key)
            self._pending.append(event)
            logger.warning("%s %s on %s: %s", event.detector, event.monitor, event.asset,
                           event.detail)

    def _end(self, key: tuple[str, str, str], at_s: float, detail: str) -> None:
        if key in self._active:
            self._active.discard(key)
            asset, channel, detector = key
            self._pending.append(Event(asset, at_s, channel, detector, None, detail,
                                       state="end", signal="channel", channels=(channel,)))

    # -- the checks ------------------------------------------------------------------------
    def clean(self, asset: str, t: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drop samples with a non-finite or impossible value; check and return the rest."""
        if len(t) == 0:
            return t, values
        finite = np.isfinite(values)
        w = values[:, self._watched]
        plausible = ~((w < self._lo) | (w > self._hi)) | ~finite[:, self._watched]
        bad = ~finite
        bad[:, self._watched] |= ~plausible
        for j, channel in enumerate(self.channels):
            self._flag(asset, t, j, channel, ~finite[:, j], "nan", "non-finite value")
        for i, j in enumerate(self._watched):
            lm = self.limits[self.channels[j]]
            self._flag(asset, t, j, self.channels[j], ~plausible[:, i], "impossible",
                       f"value far outside the training range [{lm.low:.6g}, {lm.high:.6g}] "
                       f"{lm.unit}".rstrip())
        ok = ~bad.any(axis=1)
        n_bad = int(len(ok) - ok.sum())
        if n_bad:
            self.rejected_readings += n_bad
            t, values = t[ok], values[ok]
        if len(t):
            self._check_gaps(asset, t)
            self._check_stuck(asset, t, values)
            if self._step:
                self._check_steps(asset, t, values)
        return t, values

    def _flag(self, asset: str, t: np.ndarray, j: int, channel: str, bad: np.ndarray,
              detector: str, what: str) -> None:
        key = (asset, channel, detector)
        if bad.any():
            first = int(np.argmax(bad))
            self._start(key, Event(asset, float(t[first]), channel, detector, None,
                                   f"{what} in {channel}; sample skipped", signal="channel",
                                   channels=(channel,), since_s=float(t[first])))
            if not bad[-1]:
                self._end(key, float(t[-1]), f"{channel} reads valid values again")
        elif key in self._active:
            self._end(key, float(t[0]), f"{channel} reads valid values again")

    def _check_gaps(self, asset: str, t: np.ndarray) -> None:
        last = self._last_t.get(asset)
        steps = np.diff(np.r_[t[0] if last is None else last, t])
        recent = self._intervals.setdefault(asset, deque(maxlen=16))
        for i, dt in enumerate(steps.tolist()):
            if len(recent) >= 8:
                usual = float(np.median(recent))
                if usual > 0 and dt > self.gap_factor * usual:
                    since = float(t[i] - dt)
                    self._pending.append(Event(
                        asset, float(t[i]), "samples", "gap", dt,
                        f"no samples for {dt:.6g} s (usually every {usual:.6g} s)",
                        signal="asset", since_s=since))
            if dt > 0:
                recent.append(dt)
        self._last_t[asset] = float(t[-1])

    def _check_stuck(self, asset: str, t: np.ndarray, values: np.ndarray) -> None:
        n = len(t)
        pos = np.arange(n)
        for j in self._watched:
            limit = self.limits[self.channels[j]].stuck_samples
            if limit is None:
                continue
            col = values[:, j]
            last, run, run_t0 = self._runs.get((asset, j), (np.nan, 0, float(t[0])))
            starts = np.diff(np.r_[last, col]) != 0  # True where a new run begins
            begun = np.maximum.accumulate(np.where(starts, pos, -1))
            # Length of the run each sample belongs to, up to and including it, and when
            # that run began.
            run_at = np.where(begun >= 0, pos - begun + 1, run + pos + 1)
            began_t = np.where(begun >= 0, t[np.maximum(begun, 0)], run_t0)
            self._runs[(asset, j)] = (float(col[-1]), int(run_at[-1]), float(began_t[-1]))
            channel = self.channels[j]
            longest = self.limits[channel].longest_run
            seen = f" (at most {longest} in training)" if longest else ""
            key = (asset, channel, "stuck")
            before = np.r_[run, run_at[:-1]]  # length of the run the previous sample ended
            ends = np.flatnonzero(starts & (before >= limit))
            for p in sorted([*np.flatnonzero(run_at == limit), *ends]):
                if run_at[p] == limit:
                    self._start(key, Event(
                        asset, float(t[p]), channel, "stuck", float(col[p]),
                        f"{channel} has read {col[p]:.6g} for {limit} samples in a row{seen}",
                        signal="channel", channels=(channel,), since_s=float(began_t[p]),
                        threshold=float(limit)))
                else:
                    self._end(key, float(t[p]), f"{channel} changes again")

    def _check_steps(self, asset: str, t: np.ndarray, values: np.ndarray) -> None:
        w = self.step_window
        cols = [self._watched[i] for i in self._step]
        x = np.vstack([self._tail.get(asset, np.zeros((0, len(cols)))), values[:, cols]])
        tt = np.r_[self._tail_t.get(asset, np.zeros(0)), t]
        self._tail[asset], self._tail_t[asset] = x[-(2 * w - 1):], tt[-(2 * w - 1):]
        if len(x) < 2 * w:
            return
        c = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
        end = np.arange(2 * w, len(x) + 1)  # comparisons that end at each new sample
        recent = (c[end] - c[end - w]) / w
        before = (c[end - w] - c[end - 2 * w]) / w
        for k, i in enumerate(self._step):
            lm = self.limits[self.channels[self._watched[i]]]
            z = np.abs(recent[:, k] - before[:, k]) / (lm.noise * np.sqrt(2.0 / w))
            self._steps(asset, k, i, lm, z, recent[:, k], before[:, k], tt, end)

    def _steps(self, asset: str, k: int, i: int, lm: ChannelLimits, z: np.ndarray,
               recent: np.ndarray, before: np.ndarray, tt: np.ndarray, end: np.ndarray) -> None:
        assert lm.step_threshold is not None
        channel = self.channels[self._watched[i]]
        key = (asset, i)
        armed = self._armed.get(key, True)
        for p in range(len(z)):
            if armed and z[p] > lm.step_threshold:
                armed = False
                at, since = float(tt[end[p] - 1]), float(tt[end[p] - 2 * self.step_window])
                delta = float(recent[p] - before[p])
                event = Event(
                    asset, at, channel, "step", float(z[p]),
                    f"{channel} stepped from {before[p]:.6g} to {recent[p]:.6g} {lm.unit} "
                    f"({delta:+.4g}, {z[p]:.1f} times the noise of a {self.step_window}-sample "
                    "mean) within the last "
                    f"{2 * self.step_window} samples".replace("  ", " "),
                    signal="channel", channels=(channel,), since_s=since,
                    reference=(lm.low, lm.high, float(before[p])), current=float(recent[p]),
                    threshold=lm.step_threshold)
                self._pending.append(event)
                logger.warning("step %s on %s: %s", channel, asset, event.detail)
            elif not armed and z[p] < lm.step_rearm:
                armed = True
        self._armed[key] = armed

    def active(self, asset: str) -> list[tuple[str, str]]:
        """(channel, detector) conditions of the asset that are on now."""
        return sorted((c, d) for a, c, d in self._active if a == asset)

    def events(self) -> list[Event]:
        """Conditions started or ended since the last call."""
        out, self._pending = self._pending, []
        return out
