"""Named feature functions over batches of windows; their order comes from the model card.

Training (``linewatch train``), evaluation and the gateway all call
:meth:`FeatureExtractor.transform`, so a model is always fed exactly the features it was
trained on. Every function takes, for each of its inputs, an array of shape
(n_windows, window_size) and returns shape (n_windows,).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, cast

import numpy as np

__all__ = [
    "FEATURES",
    "FeatureExtractor",
    "FeatureSpecLike",
    "check_spec",
    "band_rms",
    "crest",
    "diff",
    "equals",
    "kurtosis",
    "last",
    "mean",
    "mean_abs",
    "p2p",
    "peak",
    "power",
    "product",
    "rms",
    "skew",
    "slope",
    "std",
]

FeatureFn = Callable[..., np.ndarray]
FEATURES: dict[str, FeatureFn] = {}


def _feature(fn: FeatureFn) -> FeatureFn:
    FEATURES[fn.__name__.lstrip("_")] = fn
    return fn


# --- statistics over the window of one input -------------------------------------------


@_feature
def mean(x: np.ndarray) -> np.ndarray:
    """Mean over the window.

    >>> mean(np.array([[1.0, 2.0, 3.0]]))
    array([2.])
    """
    return cast(np.ndarray, x.mean(axis=1))


@_feature
def std(x: np.ndarray) -> np.ndarray:
    """Population standard deviation over the window.

    >>> std(np.array([[1.0, 1.0], [0.0, 2.0]]))
    array([0., 1.])
    """
    return cast(np.ndarray, x.std(axis=1))


@_feature
def _min(x: np.ndarray) -> np.ndarray:
    """>>> _min(np.array([[3.0, 1.0]]))
    array([1.])
    """
    return cast(np.ndarray, x.min(axis=1))


@_feature
def _max(x: np.ndarray) -> np.ndarray:
    """>>> _max(np.array([[3.0, 1.0]]))
    array([3.])
    """
    return cast(np.ndarray, x.max(axis=1))


@_feature
def last(x: np.ndarray) -> np.ndarray:
    """The newest sample: the window's current value.

    >>> last(np.array([[3.0, 1.0]]))
    array([1.])
    """
    return x[:, -1]


@_feature
def slope(x: np.ndarray) -> np.ndarray:
    """Least-squares trend per sample (value units per sample step); degradation shows as
    a trend long before it shows in the level.

    >>> slope(np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]]))
    array([2., 0.])
    """
    w = x.shape[1]
    if w < 2:
        return np.zeros(len(x))
    i = np.arange(w, dtype=np.float64)
    i -= i.mean()
    # With a centred index, subtracting the window mean first changes nothing.
    return x @ (i / (i @ i))


@_feature
def rms(x: np.ndarray) -> np.ndarray:
    """Root mean square: the vibration energy.

    >>> rms(np.array([[3.0, -3.0]]))
    array([3.])
    """
    return cast(np.ndarray, np.sqrt(np.mean(x * x, axis=1)))


@_feature
def peak(x: np.ndarray) -> np.ndarray:
    """>>> peak(np.array([[1.0, -4.0]]))
    array([4.])
    """
    return cast(np.ndarray, np.abs(x).max(axis=1))


@_feature
def p2p(x: np.ndarray) -> np.ndarray:
    """Peak to peak.

    >>> p2p(np.array([[1.0, -4.0]]))
    array([5.])
    """
    return cast(np.ndarray, x.max(axis=1) - x.min(axis=1))


@_feature
def crest(x: np.ndarray) -> np.ndarray:
    """Peak over RMS; impacts from a spalled race raise it before the RMS moves.

    >>> crest(np.array([[1.0, -1.0, 1.0, -1.0]]))
    array([1.])
    """
    r = rms(x)
    return np.divide(peak(x), r, out=np.zeros_like(r), where=r > 0)


@_feature
def mean_abs(x: np.ndarray) -> np.ndarray:
    """>>> mean_abs(np.array([[1.0, -3.0]]))
    array([2.])
    """
    return cast(np.ndarray, np.abs(x).mean(axis=1))


def _central_moment_ratio(x: np.ndarray, order: int) -> np.ndarray:
    d = x - x.mean(axis=1, keepdims=True)
    var = np.mean(d * d, axis=1)
    m = np.mean(d**order, axis=1)
    # A constant window has no shape; report 0 rather than NaN so the model keeps working.
    return cast(np.ndarray, np.divide(m, var ** (order / 2), out=np.zeros_like(var), where=var > 0))


@_feature
def skew(x: np.ndarray) -> np.ndarray:
    """Skewness (population moments).

    >>> skew(np.array([[1.0, 2.0, 3.0]]))
    array([0.])
    """
    return _central_moment_ratio(x, 3)


@_feature
def kurtosis(x: np.ndarray) -> np.ndarray:
    """Excess kurtosis (a normal distribution gives 0).

    >>> kurtosis(np.array([[1.0, -1.0, 1.0, -1.0]]))
    array([-2.])
    """
    r = _central_moment_ratio(x, 4)
    return np.where(r != 0, r - 3.0, 0.0)


@_feature
def band_rms(x: np.ndarray, lo_hz: float, hi_hz: float, rate_hz: float) -> np.ndarray:
    """RMS of the part of the signal between ``lo_hz`` and ``hi_hz`` (one-sided spectrum,
    Parseval), for sampling rate ``rate_hz``. Bearing defects show up as energy in their
    characteristic bands.

    >>> t = np.arange(2000) / 2000.0
    >>> sig = np.sqrt(2) * np.sin(2 * np.pi * 100 * t)[None, :]
    >>> band_rms(sig, 50, 150, 2000).round(3), band_rms(sig, 200, 400, 2000).round(3)
    (array([1.]), array([0.]))
    """
    n = x.shape[1]
    spec = np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1)
    freqs = np.fft.rfftfreq(n, d=1.0 / rate_hz)
    power = np.abs(spec) ** 2 / n**2
    # Every bin but DC and Nyquist stands for two (positive and negative) frequencies.
    power[:, 1:] *= 2
    if n % 2 == 0:
        power[:, -1] /= 2
    band = (freqs >= lo_hz) & (freqs < hi_hz)
    return cast(np.ndarray, np.sqrt(power[:, band].sum(axis=1)))


# --- physics of one sample (the newest in the window) ----------------------------------


@_feature
def power(speed_rpm: np.ndarray, torque_nm: np.ndarray) -> np.ndarray:
    """Mechanical power in watts from rotational speed and torque.

    >>> power(np.array([[60.0]]), np.array([[1.0]])).round(4)
    array([6.2832])
    """
    return cast(np.ndarray, torque_nm[:, -1] * speed_rpm[:, -1] * (2 * np.pi / 60.0))


@_feature
def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` on the newest sample, e.g. process minus air temperature.

    >>> diff(np.array([[1.0, 310.0]]), np.array([[0.0, 300.0]]))
    array([10.])
    """
    return cast(np.ndarray, a[:, -1] - b[:, -1])


@_feature
def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a * b`` on the newest sample, e.g. tool wear times torque (overstrain).

    >>> product(np.array([[2.0]]), np.array([[3.0]]))
    array([6.])
    """
    return cast(np.ndarray, a[:, -1] * b[:, -1])


@_feature
def equals(x: np.ndarray, value: float) -> np.ndarray:
    """1.0 where the newest sample equals ``value``: one-hot for coded categories.

    >>> equals(np.array([[0.0], [2.0]]), 2)
    array([0., 1.])
    """
    return cast(np.ndarray, (x[:, -1] == value).astype(np.float64))


class FeatureSpecLike(Protocol):
    """What the extractor needs of a feature spec (the model card's ``FeatureSpec``)."""

    @property
    def name(self) -> str: ...

    @property
    def fn(self) -> str: ...

    @property
    def inputs(self) -> Sequence[str]: ...

    @property
    def params(self) -> Mapping[str, float]: ...


def check_spec(spec: FeatureSpecLike, channels: Sequence[str]) -> str | None:
    """What is wrong with one feature spec, naming its field (``fn``, ``inputs``,
    ``params``), or None.

    >>> from types import SimpleNamespace as S
    >>> check_spec(S(name="x.median", fn="median", inputs=["x"], params={}), ["x"])[:40]
    "fn: unknown function 'median' (known: ba"
    >>> check_spec(S(name="d", fn="diff", inputs=["x"], params={}), ["x", "y"])
    'inputs: diff takes 2 inputs (a, b), got 1'
    >>> check_spec(S(name="b", fn="band_rms", inputs=["x"], params={"lo_hz": 1}), ["x"])
    'params: band_rms needs hi_hz, rate_hz'
    """
    fn = FEATURES.get(spec.fn)
    if fn is None:
        return f"fn: unknown function {spec.fn!r} (known: {', '.join(sorted(FEATURES))})"
    missing = [c for c in spec.inputs if c not in channels]
    if missing:
        return f"inputs: no channel named {', '.join(map(repr, missing))} (channels: " \
               f"{', '.join(channels)})"
    params = list(inspect.signature(fn).parameters)
    # Every function takes its input windows first, then its numeric parameters.
    arrays = [p for p in params if p not in _PARAMS.get(spec.fn, ())]
    if len(spec.inputs) != len(arrays):
        return (f"inputs: {spec.fn} takes {len(arrays)} input{'s' * (len(arrays) > 1)} "
                f"({', '.join(arrays)}), got {len(spec.inputs)}")
    wanted = _PARAMS.get(spec.fn, ())
    unknown = sorted(set(spec.params) - set(wanted))
    if unknown:
        known = f"only {', '.join(wanted)}" if wanted else "none"
        return f"params: {spec.fn} takes {known}, not {', '.join(unknown)}"
    lacking = [p for p in wanted if p not in spec.params]
    if lacking:
        return f"params: {spec.fn} needs {', '.join(lacking)}"
    return None


# Feature functions' numeric parameters (from the card's ``params``); the rest are windows.
_PARAMS: dict[str, tuple[str, ...]] = {"band_rms": ("lo_hz", "hi_hz", "rate_hz"),
                                       "equals": ("value",)}


class FeatureExtractor:
    """Turn windows of named channels into the model's feature matrix, in card order.

    Parameters
    ----------
    specs
        Feature specs with ``name``, ``fn`` (a key of :data:`FEATURES`), ``inputs``
        (channel names) and ``params``.
    channels
        Channel names in the order of the last axis of the windows given to ``transform``.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> fx = FeatureExtractor(
    ...     [S(name="t.mean", fn="mean", inputs=["t"], params={}),
    ...      S(name="t.slope", fn="slope", inputs=["t"], params={})],
    ...     channels=["p", "t"])
    >>> fx.transform(np.array([[[0.0, 1.0], [0.0, 3.0]]]))
    array([[2., 2.]], dtype=float32)
    """

    def __init__(self, specs: Sequence[FeatureSpecLike], channels: Sequence[str]) -> None:
        index = {c: i for i, c in enumerate(channels)}
        self.names = [s.name for s in specs]
        for j, s in enumerate(specs):
            problem = check_spec(s, channels)
            if problem is not None:
                raise ValueError(f"features[{j}].{problem}")
            if s.name in self.names[:j]:
                raise ValueError(f"features[{j}].name: {s.name!r} is taken by "
                                 f"features[{self.names.index(s.name)}]; names must be unique")
        # Single-input features sharing a function and parameters run as one call over all
        # their channels: a per-call numpy overhead of a few microseconds, paid 40 times per
        # batch, would otherwise dominate the cost of a tick.
        # (function, sorted params) -> (output columns, input channels)
        groups: dict[tuple[str, tuple[tuple[str, float], ...]], tuple[list[int], list[int]]] = {}
        self._multi: list[tuple[int, FeatureFn, list[int], dict[str, float]]] = []
        for j, s in enumerate(specs):
            idx = [index[c] for c in s.inputs]
            if len(idx) == 1:
                key = (s.fn, tuple(sorted(s.params.items())))
                cols, channels_ = groups.setdefault(key, ([], []))
                cols.append(j)
                channels_.append(idx[0])
            else:
                self._multi.append((j, FEATURES[s.fn], idx, dict(s.params)))
        self._grouped = [
            (FEATURES[fn], dict(params), cols, chans)
            for (fn, params), (cols, chans) in groups.items()
        ]
        self.channels = list(channels)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """``values`` (n_windows, size, n_channels) -> float32 (n_windows, n_features)."""
        if values.ndim != 3 or values.shape[2] != len(self.channels):
            raise ValueError(
                f"expected (n, size, {len(self.channels)}) windows, got {values.shape}"
            )
        n, w = values.shape[0], values.shape[1]
        out = np.empty((n, len(self.names)), dtype=np.float32)
        for fn, params, cols, chans in self._grouped:
            # (n, w, k) -> (n * k, w): every channel's window becomes a row of one call.
            x = values[:, :, chans].transpose(0, 2, 1).reshape(n * len(chans), w)
            out[:, cols] = fn(x, **params).reshape(n, len(chans))
        for j, fn, idx, params in self._multi:
            out[:, j] = fn(*(values[:, :, i] for i in idx), **params)
        return out
