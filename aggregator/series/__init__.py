"""Series store: where every prediction lands, behind one small interface.

Backends, chosen by settings (``influx_url`` set or not):

- ``influx1``: InfluxDB 1.x through its v1 HTTP API (Debian ships 1.6.7, which has no
  ``/api/v2``, so influxdb-client's write path cannot be used there);
- ``sqlite``: an embedded SQLite file for the demo and single-line installs.

Every backend makes ``write`` idempotent per (agent, asset, model, window_end): InfluxDB
does it by itself (same measurement, tag set and timestamp = same point, last write wins),
SQLite by a primary key and an upsert. That is what lets the ingestor retry a whole batch
after an outage without doubling anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from aggregator.settings import Settings

__all__ = ["PredictionPoint", "SeriesStore", "from_ns", "open_series", "to_ns"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def to_ns(value: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime, in exact integer arithmetic.

    >>> to_ns(datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    1767225600000001000
    """
    return (value - _EPOCH) // _ONE_US * 1000


def from_ns(value: int) -> datetime:
    """Inverse of :func:`to_ns` (datetimes carry microseconds; extra digits are dropped).

    >>> from_ns(1767225600000001000)
    datetime.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=datetime.timezone.utc)
    """
    return _EPOCH + timedelta(microseconds=value // 1000)


@dataclass(frozen=True, slots=True)
class PredictionPoint:
    """One scored window as stored: the wire ``Prediction`` plus who sent it, with what."""

    site: str
    line: str
    agent: str
    asset: str
    model: str
    model_version: str
    window_start: datetime
    window_end: datetime
    score: float
    alert: bool
    seq: int

    def __post_init__(self) -> None:
        if self.window_start.tzinfo is None or self.window_end.tzinfo is None:
            raise ValueError("window_start and window_end must be timezone-aware")


@runtime_checkable
class SeriesStore(Protocol):
    """What the ingestor and the API need from a time-series backend."""

    name: str

    def write(self, points: list[PredictionPoint]) -> None:
        """Store points; rewriting a (agent, asset, model, window_end) replaces it.

        Raises ``SeriesUnavailableError`` when the backend cannot be reached (retry later)
        and ``SeriesError`` when it refuses the data.
        """
        ...

    def predictions(
        self, agent: str | None = None, asset: str | None = None
    ) -> list[PredictionPoint]:
        """Stored points matching the filters, ordered by ``window_end``."""
        ...

    def count(self, agent: str | None = None, asset: str | None = None) -> int:
        """Number of stored points matching the filters."""
        ...

    def ping(self) -> bool:
        """True when the backend answers right now; never raises."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


def open_series(settings: Settings) -> SeriesStore:
    """Open the backend the settings name: InfluxDB 1.x if ``influx_url`` is set, else SQLite."""
    if settings.influx_url is not None:
        from aggregator.series.influx1 import Influx1Store

        return Influx1Store(
            settings.influx_url,
            settings.influx_database,
            username=settings.influx_username,
            password=settings.influx_password,
        )
    from aggregator.series.sqlite import SqliteSeriesStore

    return SqliteSeriesStore(settings.series_path)
