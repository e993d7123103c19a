"""Per-asset sliding windows over a stream of samples.

The window size and hop come from the model card, never from code, so a model trained on
30-cycle windows is always served 30-cycle windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["Batch", "Windower", "Windows"]


@dataclass(frozen=True)
class Windows:
    """Complete windows of one asset, oldest first.

    ``values`` has shape (n_windows, size, n_channels); ``start`` and ``end`` hold the time
    of the first and last sample of each window, in the caller's time unit.
    """

    asset: str
    start: np.ndarray
    end: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.end)


class Windower:
    """Collect samples per asset and emit every complete window of ``size`` samples, one
    every ``hop`` samples.

    Samples may arrive one at a time (process values) or in blocks (vibration snapshots);
    the windows are the same either way. :meth:`update_tick` takes one sample of many
    assets in one call: a tick of a hundred assets costs a few numpy calls, not a hundred.

    Parameters
    ----------
    size
        Samples per window.
    hop
        Samples between the starts of consecutive windows. ``hop > size`` leaves gaps.
    n_channels
        Values per sample.

    Examples
    --------
    >>> w = Windower(size=3, hop=2, n_channels=1)
    >>> w.update("a", np.array([0.0, 1.0]), np.array([[10.0], [11.0]])) is None
    True
    >>> out = w.update("a", np.array([2.0, 3.0, 4.0]), np.array([[12.0], [13.0], [14.0]]))
    >>> out.values[:, :, 0].tolist(), out.end.tolist()
    ([[10.0, 11.0, 12.0], [12.0, 13.0, 14.0]], [2.0, 4.0])
    """

    def __init__(self, size: int, hop: int, n_channels: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if hop < 1:
            raise ValueError(f"hop must be >= 1, got {hop}")
        if n_channels < 1:
            raise ValueError(f"n_channels must be >= 1, got {n_channels}")
        self.size = size
        self.hop = hop
        self.n_channels = n_channels
        self._reset()

    def _reset(self) -> None:
        # One row per asset. A row's pending samples (fewer than `size`: more would have made
        # a window) are its `_n` newest, in a ring of `size` slots ending before `_pos`.
        self._rows: dict[str, int] = {}
        self._names: list[str] = []
        self._values = np.zeros((0, self.size, self.n_channels))
        self._times = np.zeros((0, self.size))
        self._pos = np.zeros(0, dtype=np.int64)
        self._n = np.zeros(0, dtype=np.int64)
        # Samples still to discard before the next window starts (only when hop > size).
        self._skip = np.zeros(0, dtype=np.int64)

    def row(self, asset: str) -> int:
        """The asset's row in the buffers (added on first sight)."""
        row = self._rows.get(asset)
        if row is None:
            row = self._rows[asset] = len(self._names)
            self._names.append(asset)
            if row >= len(self._n):
                grow = max(16, len(self._n))
                self._values = np.concatenate(
                    [self._values, np.zeros((grow, self.size, self.n_channels))])
                self._times = np.concatenate([self._times, np.zeros((grow, self.size))])
                self._pos, self._n, self._skip = (
                    np.concatenate([a, np.zeros(grow, dtype=np.int64)])
                    for a in (self._pos, self._n, self._skip))
        return row

    @property
    def assets(self) -> list[str]:
        return list(self._names)

    def pending(self, asset: str) -> int:
        """Samples buffered for ``asset`` that are not yet part of an emitted window."""
        row = self._rows.get(asset)
        return 0 if row is None else int(self._n[row])

    def forget(self, asset: str) -> None:
        """Drop an asset's buffer, e.g. after a gap that must not be bridged."""
        row = self._rows.get(asset)
        if row is not None:
            self._n[row] = self._skip[row] = 0

    def _held(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self._n[row])
        at = (int(self._pos[row]) - n + np.arange(n)) % self.size
        return self._times[row, at], self._values[row, at]

    def _hold(self, row: int, t: np.ndarray, values: np.ndarray) -> None:
        n = len(t)
        self._times[row, :n], self._values[row, :n] = t, values
        self._pos[row], self._n[row] = n % self.size, n

    def update(self, asset: str, t: np.ndarray, values: np.ndarray) -> Windows | None:
        """Add samples (``t`` shape (k,), ``values`` shape (k, n_channels)); return the
        windows they complete, or None."""
        values = np.asarray(values, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n_channels or len(t) != len(values):
            raise ValueError(
                f"expected t (k,) and values (k, {self.n_channels}); "
                f"got {t.shape} and {values.shape}"
            )
        row = self.row(asset)
        skip = int(self._skip[row])
        if skip:
            dropped = min(skip, len(t))
            t, values, skip = t[dropped:], values[dropped:], skip - dropped
            self._skip[row] = skip
        if self._n[row]:
            held_t, held = self._held(row)
            values = np.concatenate([held, values])
            t = np.concatenate([held_t, t])
        if len(t) < self.size:
            self._hold(row, t, values)
            return None
        n = (len(t) - self.size) // self.hop + 1
        # (k - size + 1, channels, size) view, then every hop-th start.
        view = sliding_window_view(values, self.size, axis=0)[:: self.hop][:n]
        starts = np.arange(n) * self.hop
        out = Windows(
            asset=asset,
            start=t[starts],
            end=t[starts + self.size - 1],
            values=np.ascontiguousarray(view.transpose(0, 2, 1)),
        )
        consumed = n * self.hop
        self._hold(row, t[consumed:], values[consumed:])
        self._skip[row] = max(0, consumed - len(t))
        return out

    def update_tick(self, rows: np.ndarray, t: np.ndarray, values: np.ndarray) -> Batch:
        """Add one sample to each of ``rows`` (distinct rows from :meth:`row`; ``t`` (n,),
        ``values`` (n, n_channels)) at once; return the windows they complete, in the order
        of ``rows``. The same windows as :meth:`update` one asset at a time."""
        skipping = self._skip[rows] > 0
        if skipping.any():
            self._skip[rows[skipping]] -= 1
            keep = ~skipping
            rows, t, values = rows[keep], t[keep], values[keep]
        pos = self._pos[rows]
        self._values[rows, pos] = values
        self._times[rows, pos] = t
        self._pos[rows] = (pos + 1) % self.size
        n = self._n[rows] + 1
        full = n >= self.size
        if not full.any():
            self._n[rows] = n
            return Batch.empty(self.size, self.n_channels)
        ready = rows[full]
        # Oldest first: the ring from the slot after the newest sample round to it.
        at = (self._pos[ready][:, None] + np.arange(self.size)) % self.size
        win_t = self._times[ready[:, None], at]
        out = Batch(assets=[self._names[r] for r in ready.tolist()], start=win_t[:, 0],
                    end=win_t[:, -1], values=self._values[ready[:, None], at])
        n[full] -= self.hop
        over = full & (n < 0)
        if over.any():
            self._skip[rows[over]] = -n[over]
            n[over] = 0
        self._n[rows] = n
        return out


@dataclass(frozen=True)
class Batch:
    """Complete windows of several assets: ``assets[i]`` is the asset of window ``i``;
    ``start``, ``end`` and ``values`` as in :class:`Windows`."""

    assets: list[str]
    start: np.ndarray
    end: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.end)

    @classmethod
    def empty(cls, size: int, n_channels: int) -> Batch:
        return cls([], np.zeros(0), np.zeros(0), np.zeros((0, size, n_channels)))

    @classmethod
    def of(cls, parts: list[Windows | Batch], size: int, n_channels: int) -> Batch:
        """One batch of windows and batches, in the order given."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(size, n_channels)
        if len(parts) == 1 and isinstance(parts[0], Batch):
            return parts[0]
        assets = [a for p in parts for a in (
            p.assets if isinstance(p, Batch) else [p.asset] * len(p))]
        return cls(assets, np.concatenate([p.start for p in parts]),
                   np.concatenate([p.end for p in parts]),
                   np.concatenate([p.values for p in parts]))
