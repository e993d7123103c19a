"""Where readings come from: a `Source` yields ticks, each a list of per-asset readings.

Sources are chosen by the config's ``type:``. Today: ``replay`` (recorded files); MQTT input
and OPC UA follow the same protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.config import ReplaySourceConfig
from contract.card import ModelCard

__all__ = ["Reading", "Source", "open_source"]


@dataclass(frozen=True)
class Reading:
    """Consecutive samples of one asset: ``t`` (k,) plant time in UTC epoch seconds,
    ``values`` (k, n_channels) in the model card's channel order."""

    asset: str
    t: np.ndarray
    values: np.ndarray


class Source(Protocol):
    @property
    def channels(self) -> Sequence[str]:
        """Channel names, in the order of the last axis of ``Reading.values``."""
        ...

    @property
    def assets(self) -> Sequence[str] | None:
        """Assets the source will deliver, or None when not known in advance."""
        ...

    @property
    def sample_interval_s(self) -> float | None:
        """Plant seconds between two samples of one asset, or None when not known."""
        ...

    @property
    def total_ticks(self) -> int | None:
        """Ticks the source holds, or None when that is not known in advance."""
        ...

    def ticks(self) -> Iterator[list[Reading]]:
        """Readings grouped by tick, in time order; ends when the source is exhausted."""
        ...

    def to_epoch_s(self, t: np.ndarray) -> np.ndarray:
        """Plant time (UTC epoch seconds) of source times."""
        ...


def open_source(config: ReplaySourceConfig, card: ModelCard) -> Source:
    from agent.sources.replay import ReplaySource

    return ReplaySource(config, card)
