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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.monitors import Event

__all__ = ["ChannelLimits", "QualityMonitor"]

logger = logging.getLogger(__name__)

_INTERVALS = 16  # intervals between samples an asset's usual interval is the median of


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


def _window_min(x: np.ndarray, w: int) -> np.ndarray:
    """Minimum of each element and the ``w - 1`` before it (fewer at the start).

    >>> _window_min(np.array([5.0, 3.0, 4.0, 6.0, 7.0]), 2).tolist()
    [5.0, 3.0, 3.0, 4.0, 6.0]
    """
    padded = np.r_[np.full(w - 1, np.inf), x]
    return np.asarray(sliding_window_view(padded, w).min(axis=1))


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
        self._stuck_limit = np.array([np.inf if lm.stuck_samples is None else lm.stuck_samples
                                      for lm in lims])
        self._step_h = np.array([lims[i].step_threshold or np.inf for i in self._step])
        self._step_u = np.array([lims[i].step_rearm for i in self._step])
        self._step_noise = np.array([lims[i].noise for i in self._step])
        self._reset()

    def _reset(self) -> None:
        self.rejected_readings = 0
        self._active: dict[str, set[tuple[str, str]]] = {}  # asset -> (channel, detector)
        self._pending: list[Event] = []
        # One row per asset in every array below (`row()`), so that a tick of many assets is
        # checked with a few whole-array operations (`clean_tick`).
        self._rows: dict[str, int] = {}
        m, k, w = len(self._watched), len(self._step), self.step_window
        self._flagged = np.zeros(0, dtype=bool)  # the asset has a condition on now
        # Per watched channel: last value, length of its run, when it began.
        self._last = np.zeros((0, m))
        self._run = np.zeros((0, m))
        self._began = np.zeros((0, m))
        # The last 2w-1 clean samples of stepped channels (the newest `_tail_n`, at the end).
        self._tail = np.zeros((0, 2 * w - 1, k))
        self._tail_t = np.zeros((0, 2 * w - 1))
        self._tail_n = np.zeros(0, dtype=np.int64)
        self._armed = np.zeros((0, k), dtype=bool)
        self._last_t = np.zeros(0)  # NaN: no sample yet
        # The last 16 intervals between samples, a ring (`_iv_n` of them, the next at
        # `_iv_at`); the empty slots hold inf.
        self._iv = np.zeros((0, _INTERVALS))
        self._iv_n = np.zeros(0, dtype=np.int64)
        self._iv_at = np.zeros(0, dtype=np.int64)

    def row(self, asset: str) -> int:
        """The asset's row in the state arrays (added on first sight)."""
        row = self._rows.get(asset)
        if row is None:
            row = self._rows[asset] = len(self._rows)
            if row >= len(self._flagged):
                self._grow(max(16, len(self._flagged)))
        return row

    def _grow(self, n: int) -> None:
        def more(a: np.ndarray, fill: float | bool) -> np.ndarray:
            return np.concatenate([a, np.full((n, *a.shape[1:]), fill, dtype=a.dtype)])

        self._flagged = more(self._flagged, False)
        self._last, self._run, self._began = (
            more(self._last, np.nan), more(self._run, 0.0), more(self._began, 0.0))
        self._tail, self._tail_t = more(self._tail, 0.0), more(self._tail_t, 0.0)
        self._tail_n = more(self._tail_n, 0)
        self._armed = more(self._armed, True)
        self._last_t = more(self._last_t, np.nan)
        self._iv, self._iv_n, self._iv_at = (
            more(self._iv, np.inf), more(self._iv_n, 0), more(self._iv_at, 0))

    def handover(self, limits: dict[str, ChannelLimits], *, step_window: int) -> QualityMonitor:
        """A monitor for other limits (a new model's card) that takes over from this one.

        Conditions judged by the old limits do not carry over: each one still active ends
        at its asset's last reading, saying why, and the new limits judge from the next
        reading on (a condition that still holds starts again under them). Events not yet
        taken and the count of rejected readings go on.
        """
        new = QualityMonitor(self.channels, limits, step_window=step_window,
                             impossible_spans=self.impossible_spans,
                             gap_factor=self.gap_factor)
        for asset in sorted(self._active):
            at = float(self._last_t[self.row(asset)])
            for channel, detector in sorted(self._active[asset]):
                self._end(asset, channel, detector, at,
                          f"the model changed: {channel} is judged by its card's limits "
                          "from the next reading on")
        new._pending = self._pending
        self._pending = []
        new.rejected_readings = self.rejected_readings
        return new

    # -- conditions ------------------------------------------------------------------------
    def _start(self, asset: str, channel: str, detector: str, event: Event) -> None:
        active = self._active.setdefault(asset, set())
        if (channel, detector) not in active:
            active.add((channel, detector))
            self._flagged[self.row(asset)] = True
            self._pending.append(event)
            logger.warning("%s %s on %s: %s", detector, channel, asset, event.detail)

    def _end(self, asset: str, channel: str, detector: str, at_s: float, detail: str) -> None:
        active = self._active.get(asset)
        if active and (channel, detector) in active:
            active.discard((channel, detector))
            self._flagged[self.row(asset)] = bool(active)
            self._pending.append(Event(asset, at_s, channel, detector, None, detail,
                                       state="end", signal="channel", channels=(channel,)))

    # -- the checks ------------------------------------------------------------------------
    def clean(self, asset: str, t: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drop samples with a non-finite or impossible value; check and return the rest.

        Called for every asset at every tick, usually with one sample: the checks are
        whole-array operations, and Python loops run only over channels that misbehave.
        """
        if len(t) == 0:
            return t, values
        # A gap is samples not arriving; an unusable sample did arrive.
        self._check_gaps(asset, t)
        finite = np.isfinite(values)
        w = values[:, self._watched]
        with np.errstate(invalid="ignore"):
            implausible = ((w < self._lo) | (w > self._hi)) & finite[:, self._watched]
        active = self._active.get(asset, set())
        nan_cols = set(np.flatnonzero(~finite.all(axis=0)).tolist())
        odd_cols = set(np.flatnonzero(implausible.any(axis=0)).tolist())
        if nan_cols or odd_cols or active:
            index = {c: j for j, c in enumerate(self.channels)}
            nan_cols |= {index[c] for c, d in active if d == "nan"}
            odd_cols |= {self._watched.index(index[c]) for c, d in active if d == "impossible"}
            for j in sorted(nan_cols):
                self._flag(asset, t, self.channels[j], ~finite[:, j], "nan", "non-finite value")
            for i in sorted(odd_cols):
                channel = self.channels[self._watched[i]]
                lm = self.limits[channel]
                self._flag(asset, t, channel, implausible[:, i], "impossible",
                           f"value far outside the training range [{lm.low:.6g}, "
                           f"{lm.high:.6g}] {lm.unit}".rstrip())
        ok = finite.all(axis=1) & ~implausible.any(axis=1)
        n_bad = int(len(ok) - ok.sum())
        if n_bad:
            self.rejected_readings += n_bad
            t, values = t[ok], values[ok]
        if len(t):
            self._check_stuck(asset, t, values[:, self._watched])
            if self._step:
                self._check_steps(asset, t, values)
        return t, values

    def clean_tick(self, assets: Sequence[str], rows: np.ndarray, t: np.ndarray,
                   values: np.ndarray) -> np.ndarray:
        """:meth:`clean` for one sample of each of many assets (``rows`` from :meth:`row`,
        distinct; ``t`` (n,), ``values`` (n, channels)); return which samples are kept.

        The same checks, events and state as :meth:`clean` one asset at a time: every
        asset whose sample is quiet (usable, no condition on, no run reaching its limit, no
        step test near its threshold, no gap possible) is checked and updated with a few
        whole-array operations; the others, rare, go through :meth:`clean` in their order.
        """
        w = values[:, self._watched]
        with np.errstate(invalid="ignore"):
            odd = ~np.isfinite(values).all(axis=1) | ((w < self._lo) | (w > self._hi)).any(axis=1)
        quiet = ~odd & ~self._flagged[rows]
        # Gaps: an interval longer than gap_factor times the shortest of the last ones.
        last_t = self._last_t[rows]
        dt = np.where(np.isnan(last_t), 0.0, t - last_t)
        quiet &= (self._iv_n[rows] < 8) | (dt <= self.gap_factor * self._iv[rows].min(axis=1))
        # Stuck: a run reaching its limit, or a long run ending.
        last, run = self._last[rows], self._run[rows]
        starts = last != w
        run_at = np.where(starts, 1.0, run + 1.0)
        quiet &= ~((run_at == self._stuck_limit) | (starts & (run >= self._stuck_limit))).any(
            axis=1)
        # Steps: only where the test has its 2w samples and comes near a threshold (or must
        # re-arm).
        k = self.step_window
        if self._step:
            cols = [self._watched[i] for i in self._step]
            held = self._tail_n[rows]
            x = np.concatenate([self._tail[rows], values[:, None, cols]], axis=1)
            c = np.cumsum(x, axis=1)
            recent = (c[:, -1] - c[:, k - 1]) / k
            before = (c[:, k - 1] - 0.0) / k
            z = np.abs(recent - before) / (self._step_noise * np.sqrt(2.0 / k))
            tested = held >= 2 * k - 1
            busy = ((z > self._step_h) | ~self._armed[rows]).any(axis=1)
            quiet &= ~(tested & busy)
        q = np.flatnonzero(quiet)
        if len(q):
            r = rows[q]
            grows = dt[q] > 0
            if grows.any():
                g = r[grows]
                at = self._iv_at[g]
                self._iv[g, at] = dt[q][grows]
                self._iv_at[g] = (at + 1) % _INTERVALS
                self._iv_n[g] = np.minimum(self._iv_n[g] + 1, _INTERVALS)
            self._last_t[r] = t[q]
            self._began[r] = np.where(starts[q], t[q, None], self._began[r])
            self._last[r], self._run[r] = w[q], run_at[q]
            if self._step:
                self._tail[r] = x[q, 1:]
                self._tail_t[r, :-1] = self._tail_t[r, 1:]
                self._tail_t[r, -1] = t[q]
                self._tail_n[r] = np.minimum(held[q] + 1, 2 * k - 1)
        keep: np.ndarray = quiet.copy()
        for i in np.flatnonzero(~quiet).tolist():
            kept, _ = self.clean(assets[i], t[i:i + 1], values[i:i + 1])
            keep[i] = len(kept) > 0
        return keep

    def _flag(self, asset: str, t: np.ndarray, channel: str, bad: np.ndarray, detector: str,
              what: str) -> None:
        if bad.any():
            first = int(np.argmax(bad))
            self._start(asset, channel, detector, Event(
                asset, float(t[first]), channel, detector, None,
                f"{what} in {channel}; sample skipped", signal="channel", channels=(channel,),
                since_s=float(t[first])))
            if not bad[-1]:
                self._end(asset, channel, detector, float(t[-1]),
                          f"{channel} reads valid values again")
        else:
            self._end(asset, channel, detector, float(t[0]), f"{channel} reads valid values again")

    def _check_gaps(self, asset: str, t: np.ndarray) -> None:
        """A gap: an interval more than ``gap_factor`` times the median of the asset's 16
        positive intervals before it (once there are 8). Whole-array: a block of 20,000
        vibration samples costs a few array operations, not 20,000 Python steps."""
        row = self.row(asset)
        last = self._last_t[row]
        steps = np.diff(np.r_[t[0] if np.isnan(last) else last, t])
        n, at = int(self._iv_n[row]), int(self._iv_at[row])
        ring = self._iv[row]  # a view: written back below
        before = ring[:n] if n < _INTERVALS else np.roll(ring, -at)  # oldest first
        positive = steps[steps > 0]
        # Every interval, oldest first; step i is judged against the (at most) 16 positive
        # intervals before it: those before it in `seq` end at `len(before) + seen[i]`.
        seq = np.r_[before, positive]
        seen = np.cumsum(steps > 0) - (steps > 0)
        end = len(before) + seen
        enough = end >= 8
        # The median is at least the shortest interval: most steps need no median.
        # No step above gap_factor times the shortest interval anywhere: no gap (the usual
        # case, settled without the per-step windows).
        if enough.any() and len(seq) and steps.max() > self.gap_factor * seq.min():
            lo = np.maximum(end - _INTERVALS, 0)
            cum_min = _window_min(seq, _INTERVALS)  # min of seq[max(0, k-15):k+1]
            shortest = np.where(enough, cum_min[np.maximum(end - 1, 0)], np.inf)
            for i in np.flatnonzero(steps > self.gap_factor * shortest).tolist():
                dt = float(steps[i])
                usual = float(np.median(seq[lo[i]:end[i]]))
                if usual > 0 and dt > self.gap_factor * usual:
                    self._pending.append(Event(
                        asset, float(t[i]), "samples", "gap", dt,
                        f"no samples for {dt:.6g} s (usually every {usual:.6g} s)",
                        signal="asset", since_s=float(t[i] - dt)))
        keep = seq[-_INTERVALS:]
        ring[:] = np.inf
        ring[:len(keep)] = keep
        self._iv_n[row], self._iv_at[row] = len(keep), len(keep) % _INTERVALS
        self._last_t[row] = float(t[-1])

    def _check_stuck(self, asset: str, t: np.ndarray, x: np.ndarray) -> None:
        """Runs of identical samples, every watched channel at once (x: (n, m))."""
        n, m = x.shape
        row = self.row(asset)
        last, run, began = self._last[row], self._run[row], self._began[row]
        starts = np.vstack([last, x[:-1]]) != x  # True where a new run begins
        pos = np.arange(n)[:, None]
        begun = np.maximum.accumulate(np.where(starts, pos, -1), axis=0)
        # Length of the run each sample belongs to, up to and including it; when it began.
        run_at = np.where(begun >= 0, pos - begun + 1, run + pos + 1)
        began_t = np.where(begun >= 0, t[np.maximum(begun, 0)], began)
        before = np.vstack([run, run_at[:-1]])  # length of the run the previous sample ended
        hits = run_at == self._stuck_limit
        ends = starts & (before >= self._stuck_limit)
        self._last[row], self._run[row], self._began[row] = x[-1], run_at[-1], began_t[-1]
        if not (hits.any() or ends.any()):
            return
        for p, i in sorted(zip(*np.nonzero(hits | ends), strict=True)):
            channel = self.channels[self._watched[i]]
            if hits[p, i]:
                lm = self.limits[channel]
                seen = f" (at most {lm.longest_run} in training)" if lm.longest_run else ""
                self._start(asset, channel, "stuck", Event(
                    asset, float(t[p]), channel, "stuck", float(x[p, i]),
                    f"{channel} has read {x[p, i]:.6g} for {lm.stuck_samples} samples in a "
                    f"row{seen}", signal="channel", channels=(channel,),
                    since_s=float(began_t[p, i]), threshold=float(self._stuck_limit[i])))
            else:
                self._end(asset, channel, "stuck", float(t[p]), f"{channel} changes again")

    def _check_steps(self, asset: str, t: np.ndarray, values: np.ndarray) -> None:
        w = self.step_window
        cols = [self._watched[i] for i in self._step]
        row = self.row(asset)
        held = int(self._tail_n[row])
        x = np.vstack([self._tail[row, len(self._tail_t[row]) - held:], values[:, cols]])
        tt = np.r_[self._tail_t[row, len(self._tail_t[row]) - held:], t]
        keep = min(len(tt), 2 * w - 1)
        self._tail[row, -keep:], self._tail_t[row, -keep:] = x[-keep:], tt[-keep:]
        self._tail_n[row] = keep
        if len(x) < 2 * w:
            return
        c = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
        end = np.arange(2 * w, len(x) + 1)  # comparisons that end at each new sample
        recent = (c[end] - c[end - w]) / w
        before = (c[end - w] - c[end - 2 * w]) / w
        z = np.abs(recent - before) / (self._step_noise * np.sqrt(2.0 / w))
        armed = self._armed[row]
        busy = ((z > self._step_h).any(axis=0) | ~armed)
        for k in np.flatnonzero(busy).tolist():  # the rest stayed armed and below threshold
            for p in range(len(z)):
                if armed[k] and z[p, k] > self._step_h[k]:
                    armed[k] = False
                    self._stepped(asset, k, float(z[p, k]), float(recent[p, k]),
                                  float(before[p, k]), float(tt[end[p] - 1]),
                                  float(tt[end[p] - 2 * w]))
                elif not armed[k] and z[p, k] < self._step_u[k]:
                    armed[k] = True

    def _stepped(self, asset: str, k: int, z: float, recent: float, before: float, at: float,
                 since: float) -> None:
        channel = self.channels[self._watched[self._step[k]]]
        lm = self.limits[channel]
        event = Event(
            asset, at, channel, "step", z,
            f"{channel} stepped from {before:.6g} to {recent:.6g} {lm.unit} "
            f"({recent - before:+.4g}, {z:.1f} times the noise of a {self.step_window}-sample "
            "mean) within the last "
            f"{2 * self.step_window} samples".replace("  ", " "),
            signal="channel", channels=(channel,), since_s=since,
            reference=(lm.low, lm.high, before), current=recent, threshold=lm.step_threshold)
        self._pending.append(event)
        logger.warning("step %s on %s: %s", channel, asset, event.detail)

    def active(self, asset: str) -> list[tuple[str, str]]:
        """(channel, detector) conditions of the asset that are on now."""
        return sorted(self._active.get(asset, ()))
    def events(self) -> list[Event]:
        """Conditions started or ended since the last call."""
        out, self._pending = self._pending, []
        return out
