"""Recordings -> windows -> feature rows, through the agent's own code.

Training, evaluation and the gateway must turn samples into features the same way, so this
is nothing but :class:`agent.windows.Windower` and :class:`agent.features.FeatureExtractor`
applied to whole recordings, plus the bookkeeping a data set needs (which asset a window
came from, when it ended, the truth at its newest sample). numpy and ``agent`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.datasets import Recording
from agent.features import FeatureExtractor, FeatureSpecLike
from agent.windows import Windower

__all__ = ["Frames", "featurize"]


@dataclass(frozen=True)
class Frames:
    """Feature rows of every complete window, asset after asset, oldest window first.

    ``labels[k][i]`` is label ``k`` at the newest sample of window ``i`` (what a model
    scoring that window at that moment should predict). ``last`` marks each asset's newest
    window.
    """

    X: np.ndarray
    asset: np.ndarray
    end: np.ndarray
    labels: dict[str, np.ndarray]
    last: np.ndarray

    def __len__(self) -> int:
        return len(self.X)

    def select(self, mask: np.ndarray) -> Frames:
        """The rows where ``mask`` is true (``last`` is kept as it was, not recomputed)."""
        return Frames(
            X=self.X[mask],
            asset=self.asset[mask],
            end=self.end[mask],
            labels={k: v[mask] for k, v in self.labels.items()},
            last=self.last[mask],
        )


def featurize(
    recordings: Sequence[Recording],
    specs: Sequence[FeatureSpecLike],
    *,
    size: int,
    hop: int,
) -> Frames:
    """Window each recording with ``Windower(size, hop)`` and extract ``specs`` in order.

    Assets too short for one window contribute nothing.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> rec = Recording("a", ("x",), np.arange(4.0), np.arange(4.0)[:, None],
    ...                 {"rul": np.array([3.0, 2.0, 1.0, 0.0])})
    >>> fr = featurize([rec], [S(name="x.mean", fn="mean", inputs=["x"], params={})],
    ...                size=2, hop=1)
    >>> fr.X[:, 0].tolist(), fr.labels["rul"].tolist(), fr.last.tolist()
    ([0.5, 1.5, 2.5], [2.0, 1.0, 0.0], [False, False, True])
    """
    if not recordings:
        raise ValueError("no recordings to featurize")
    channels = recordings[0].channels
    fx = FeatureExtractor(specs, channels)
    names = sorted(set().union(*(r.labels for r in recordings)))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("X", "asset", "end", "last", *names)}
    for rec in recordings:
        if rec.channels != channels:
            raise ValueError(f"{rec.asset}: channels {rec.channels} differ from {channels}")
        out = Windower(size, hop, len(channels)).update(rec.asset, rec.t, rec.values)
        if out is None:
            continue
        n = len(out)
        newest = np.arange(n) * hop + size - 1  # sample index of each window's newest sample
        parts["X"].append(fx.transform(out.values))
        parts["asset"].append(np.full(n, rec.asset))
        parts["end"].append(out.end)
        parts["last"].append(np.arange(n) == n - 1)
        for k in names:
            lab = rec.labels.get(k)
            parts[k].append(np.full(n, np.nan) if lab is None else lab[newest])
    if not parts["X"]:
        raise ValueError(f"no recording is long enough for one window of {size} samples")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Frames(
        X=cat["X"],
        asset=cat["asset"],
        end=cat["end"],
        labels={k: cat[k] for k in names},
        last=cat["last"],
    )
