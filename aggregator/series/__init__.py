"""Series store: where every prediction, drift event and health report lands, behind one
small interface.

Backends, chosen by settings (``influx_url`` set or not):

- ``influx1``: InfluxDB 1.x through its v1 HTTP API (Debian ships 1.6.7, which has no
  ``/api/v2``, so influxdb-client's write path cannot be used there);
- ``sqlite``: an embedded SQLite file for the demo and single-line installs.

Every backend makes ``write`` idempotent: InfluxDB by itself (same measurement, tag set
and timestamp = same point, last write wins), SQLite by a primary key on the same identity
and an upsert. The identities are

- prediction: (agent, asset, model, window_end);
- drift event: (agent, asset, model, monitor, detector, at), a fleet-wide event (no
  asset) being one more "asset";
- health report: (agent, model, at).

That is what lets the ingestor retry a whole batch after an outage without doubling
anything. It also means that two events of one monitor and detector at the same instant
are one event: the same fact, reported twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from aggregator.settings import Settings

__all__ = [
    "READ_LIMIT",
    "TIME_MAX",
    "TIME_MIN",
    "AssetsSeen",
    "DriftPoint",
    "HealthPoint",
    "PredictionPoint",
    "SeriesStore",
    "check_limit",
    "check_offset",
    "clamp_time",
    "drift_order",
    "health_order",
    "from_ns",
    "open_series",
    "to_ns",
]

READ_LIMIT = 1000  # rows a newest-first read returns unless told otherwise

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
# What InfluxDB's signed 64-bit nanosecond timestamps hold, the narrowest of the backends,
# to the whole second inside.
TIME_MIN = datetime(1677, 9, 21, 0, 12, 44, tzinfo=UTC)
TIME_MAX = datetime(2262, 4, 11, 23, 47, 16, tzinfo=UTC)


def clamp_time(value: datetime) -> datetime:
    """``value`` moved into [``TIME_MIN``, ``TIME_MAX``]: a read bound further out would
    overflow InfluxDB's timestamps, and no point lies there anyway.

    >>> clamp_time(datetime(1500, 1, 1, tzinfo=UTC)) == TIME_MIN
    True
    """
    return min(max(value, TIME_MIN), TIME_MAX)


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


def check_limit(limit: int) -> int:
    """``limit`` if it is a usable row count (>= 1), else ValueError.

    >>> check_limit(0)
    Traceback (most recent call last):
    ...
    ValueError: limit must be >= 1, got 0
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return limit


def check_offset(offset: int) -> int:
    """``offset`` if it is a usable number of rows to skip (>= 0), else ValueError.

    >>> check_offset(-1)
    Traceback (most recent call last):
    ...
    ValueError: offset must be >= 0, got -1
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset


def _require_aware(**values: datetime) -> None:
    naive = [name for name, value in values.items() if value.tzinfo is None]
    if naive:
        raise ValueError(f"{' and '.join(naive)} must be timezone-aware")


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
        # Inline: this runs for every stored window, and the helper's **kwargs cost more.
        if self.window_start.tzinfo is None or self.window_end.tzinfo is None:
            _require_aware(window_start=self.window_start, window_end=self.window_end)


@dataclass(frozen=True, slots=True)
class DriftPoint:
    """One drift or data-quality event as stored: the wire ``DriftEvent`` plus who sent it.

    ``asset`` is None for an event about the whole stream (score drift), ``value`` None
    when the detector has no number to report.
    """

    site: str
    line: str
    agent: str
    asset: str | None
    at: datetime
    monitor: str
    detector: str
    value: float | None
    detail: str
    model: str
    model_version: str
    seq: int

    def __post_init__(self) -> None:
        _require_aware(at=self.at)


@dataclass(frozen=True, slots=True)
class HealthPoint:
    """One health report of an agent as stored: the wire ``Health`` counters plus who sent
    it, with which model."""

    site: str
    line: str
    agent: str
    at: datetime
    windows_scored: int
    outbox_depth: int
    outbox_dropped: int
    rejected_readings: int
    inference_ms_median: float | None
    model: str
    model_version: str
    seq: int

    def __post_init__(self) -> None:
        _require_aware(at=self.at)


@dataclass(frozen=True, slots=True)
class AssetsSeen:
    """How many distinct assets of one site and line a model version scored in a period."""

    site: str
    line: str
    model: str
    model_version: str
    assets: int


def drift_order(p: DriftPoint) -> tuple[int, str, str, str, str, str]:
    """Sort key of drift reads: newest first, then by identity (a fleet-wide event, no
    asset, before the assets' events). Every backend returns this order."""
    return (-to_ns(p.at), p.agent, p.asset or "", p.model, p.monitor, p.detector)


def health_order(p: HealthPoint) -> tuple[int, str, str]:
    """Sort key of health reads: newest first, then agent and model."""
    return (-to_ns(p.at), p.agent, p.model)


@runtime_checkable
class SeriesStore(Protocol):
    """What the ingestor and the API need from a time-series backend."""

    name: str

    def write(
        self,
        points: Sequence[PredictionPoint],
        drift: Sequence[DriftPoint] = (),
        health: Sequence[HealthPoint] = (),
    ) -> None:
        """Store everything one ingest batch carries, in one call; rewriting a point with
        the same identity (see the module docstring) replaces it.

        Raises ``SeriesUnavailableError`` when the backend cannot be reached (retry the
        whole call later) and ``SeriesError`` when it refuses the data.
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

    def scores(
        self,
        asset: str,
        *,
        site: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = READ_LIMIT,
    ) -> list[PredictionPoint]:
        """One asset's score history: the oldest ``limit`` of its points (at ``site``, if
        given) with ``since <= window_end < until``, ordered by ``window_end``, then agent
        and model. Asset names repeat across sites: without ``site``, every site's."""
        ...

    def asset_counts(self, since: datetime, until: datetime) -> list[AssetsSeen]:
        """How many distinct assets each (site, line, model, model version) scored with
        ``since <= window_end < until``, ordered by those four."""
        ...

    def drift_events(
        self,
        agent: str | None = None,
        asset: str | None = None,
        detector: str | None = None,
        since: datetime | None = None,
        limit: int = READ_LIMIT,
        *,
        until: datetime | None = None,
        site: str | None = None,
        offset: int = 0,
    ) -> list[DriftPoint]:
        """The newest ``limit`` events matching the filters (``since <= at < until``)
        after skipping the ``offset`` newest, in :func:`drift_order`."""
        ...

    def drift_count(self, agent: str | None = None, asset: str | None = None) -> int:
        """Number of stored drift events matching the filters."""
        ...

    def health(self, agent: str | None = None, limit: int = READ_LIMIT) -> list[HealthPoint]:
        """The newest ``limit`` health reports (of ``agent``, if given), newest first."""
        ...

    def latest_health(self) -> dict[str, HealthPoint]:
        """The newest health report of every agent that sent one, by agent."""
        ...

    def health_count(self, agent: str | None = None) -> int:
        """Number of stored health reports (of ``agent``, if given)."""
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
