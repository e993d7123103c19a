"""Per-asset sliding windows over a stream of samples.

The window size and hop come from the model card, never from code, so a model trained on
30-cycle windows is always served 30-cycle windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["Windower", "Windows"]


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
    the windows are the same either way.

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
        self._values: dict[str, np.ndarray] = {}
        self._times: dict[str, np.ndarray] = {}
        # Samples still to discard before the next window starts (only when hop > size).
        self._skip: dict[str, int] = {}

    @property
    def assets(self) -> list[str]:
        return list(self._values)

    def pending(self, asset: str) -> int:
        """Samples buffered for ``asset`` that are not yet part of an emitted window."""
        return len(self._times.get(asset, ()))

    def forget(self, asset: str) -> None:
        """Drop an asset's buffer, e.g. after a gap that must not be bridged."""
        for d in (self._values, self._times, self._skip):
            d.pop(asset, None)

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
        skip = self._skip.get(asset, 0)
        if skip:
            dropped = min(skip, len(t))
            t, values, skip = t[dropped:], values[dropped:], skip - dropped
            self._skip[asset] = skip
        if asset in self._values:
            values = np.concatenate([self._values[asset], values])
            t = np.concatenate([self._times[asset], t])
        if len(t) < self.size:
            self._values[asset], self._times[asset] = values, t
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
        self._values[asset], self._times[asset] = values[consumed:], t[consumed:]
        self._skip[asset] = max(0, consumed - len(t))
        return out
