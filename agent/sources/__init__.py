"""Where readings come from: a `Source` yields ticks, each a list of per-asset readings.

Sources are chosen by the config's ``type:``: ``replay`` (the shipped data sets' formats),
``table`` (a plant's CSV or Parquet files through a column mapping, ``agent.sources.table``),
``mqtt`` (JSON published by sensors or a PLC bridge, ``agent.sources.mqtt``) and ``opcua``
(``agent.sources.opcua``). A source that can be resumed after a restart (a replay; not live
input, which simply goes on) is also a `Resumable`; a live source is also a `Live`: it
counts and reports the input it had to drop, and is closed when the agent stops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from agent.monitors import Event
from agent.position import Position
from contract.card import ModelCard

if TYPE_CHECKING:
    from agent.config import SourceConfig

__all__ = ["Live", "Reading", "Resumable", "Source", "open_source"]


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


@runtime_checkable
class Resumable(Protocol):
    """A source that can continue where an earlier run stopped (see ``agent.position``)."""

    @property
    def position(self) -> Position | None:
        """Where the source has got to: the last tick ``ticks()`` handed over (None before
        the first one, unless ``seek()`` set it)."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """The source's identity: a saved position applies only to an equal one."""
        ...

    def start_position(self) -> Position:
        """Where ``ticks()`` will begin: saved at once, so a run killed before its first
        tick is resumed with the same plant times."""
        ...

    def seek(self, position: Position) -> None:
        """Make ``ticks()`` continue after ``position`` (which has this source's
        fingerprint), with the plant times it had."""
        ...

    def warmup(self, samples: int, hop: int = 1) -> list[Reading]:
        """Per asset, at least ``samples`` samples from just before where ``ticks()``
        begins, for refilling the windows; none when it begins at the start."""
        ...


@runtime_checkable
class Live(Protocol):
    """A source fed by the plant as it runs: its ``ticks()`` never end by themselves (they
    come at least every few tenths of a second, empty when nothing arrived, so the agent
    keeps flushing and can stop), and bad input is its own to count."""

    @property
    def rejected(self) -> int:
        """Messages or values dropped before they became readings (counted in health's
        ``rejected_readings``)."""
        ...

    def events(self) -> list[Event]:
        """Input-quality conditions started or ended since the last call."""
        ...

    def close(self) -> None:
        """Disconnect; ``ticks()`` ends."""
        ...


def open_source(config: SourceConfig, card: ModelCard, *, agent_id: str = "agent") -> Source:
    """The source ``config`` describes, for a model with ``card``'s channels."""
    if config.type == "mqtt":
        from agent.sources.mqtt import MqttSource

        return MqttSource(config, card, client_id=config.client_id
                          or f"linewatch-input-{agent_id}")
    if config.type == "opcua":
        from agent.sources.opcua import OpcUaSource

        return OpcUaSource(config, card)
    from agent.sources.replay import ReplaySource

    return ReplaySource(config, card)
