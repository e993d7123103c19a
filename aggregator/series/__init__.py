"""Series store: where every prediction, drift event and health report lands, behind one
small interface.

Backends, chosen by settings (``influx_url`` set or not, and ``influx_version``):

- ``influx1``: InfluxDB 1.x through its v1 HTTP API (Debian ships 1.6.7, which has no
  ``/api/v2``, so influxdb-client's write path cannot be used there);
- ``influx2``: InfluxDB 2.x or 3.x, writing through influxdb-client's v2 write API and
  reading the same schema in InfluxQL through the v1-compatible ``/query``;
- ``sqlite``: an embedded SQLite file for the demo and single-line installs.

Every backend makes ``write`` idempotent: InfluxDB by itself (same measurement, tag set
and timestamp = same point, last write wins), SQLite by a primary key on the same identity
and an upsert. The identities are

- prediction: (agent, asset, model, window_end);
- drift event: (agent, asset, model, monitor, detector, at), a fleet-wide event (no
  asset) being one more "asset";
- health report: (agent, model, at);

each with the ``role`` of the model that produced it: a shadow model (run beside the live
one to be judged, see ``contract.wire.ModelRef.role``) may be another version of the same
model name, scoring the same windows, and must not overwrite the live model's points.
Reads that feed a live figure (alerts, score histories, assets seen, score counts, health
summaries, the newest health report, estimates, drift events) count live points only, so
a shadow never moves a number a person or a rule acts on; :meth:`SeriesStore.paired`
reads both roles, to compare two versions on the same windows.

That is what lets the ingestor retry a whole batch after an outage without doubling
anything. It also means that two events of one monitor and detector at the same instant
are one event: the same fact, reported twice.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from aggregator.settings import Settings
    from contract.wire import Estimate, ModelRef

__all__ = [
    "LIVE",
    "PAIR_READ_LIMIT",
    "READ_LIMIT",
    "ROLES",
    "SHADOW",
    "TIME_MAX",
    "TIME_MIN",
    "AssetsSeen",
    "ESTIMATE_COLUMNS",
    "DriftPoint",
    "HealthPoint",
    "StoredEstimate",
    "HealthSummary",
    "Paired",
    "PredictionPoint",
    "ScoreCounts",
    "SeriesStore",
    "check_limit",
    "check_offset",
    "clamp_time",
    "drift_order",
    "health_order",
    "from_ns",
    "open_series",
    "pair_up",
    "prediction_points",
    "role_of",
    "to_ns",
]

READ_LIMIT = 1000  # rows a newest-first read returns unless told otherwise
# Windows of each version a paired read looks at (the newest in its period): a day of a
# few dozen assets at one window a minute, and a bound on what one gate check reads.
PAIR_READ_LIMIT = 50_000

LIVE = "live"
SHADOW = "shadow"
ROLES = (LIVE, SHADOW)


def role_of(model: ModelRef) -> str:
    """The stored role of what ``model`` produced: ``shadow`` or ``live`` (the wire's
    absent role is live)."""
    return SHADOW if model.shadow else LIVE

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
    # The timedelta's own parts: half the cost of dividing by a one-microsecond
    # timedelta, and as exact (this runs twice for every prediction written to InfluxDB).
    d = value - _EPOCH
    return ((d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds) * 1000


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
    role: str = LIVE

    def __post_init__(self) -> None:
        # Inline: this runs for every stored window, and the helper's **kwargs cost more.
        if self.window_start.tzinfo is None or self.window_end.tzinfo is None:
            _require_aware(window_start=self.window_start, window_end=self.window_end)


# PredictionPoint's very fields and slots, in order, neither frozen nor checked: what
# prediction_points builds and then turns into a PredictionPoint by a class swap (which
# needs the same slots); derived, so the two cannot drift apart.
_UncheckedPrediction = make_dataclass(
    "_UncheckedPrediction",
    [(f.name, f.type) if f.default is MISSING else (f.name, f.type, field(default=f.default))
     for f in fields(PredictionPoint)],
    slots=True)


def prediction_points(
    site: str, line: str, agent: str, model: str, model_version: str, seq: int, role: str,
    predictions: Iterable[Any],
) -> list[PredictionPoint]:
    """The stored points of a decoded envelope's predictions (``contract.wire.Prediction``,
    whose times the contract already checked to be aware UTC), all sent with one model and
    seq.

    The bulk of ingest: a frozen dataclass's ``__init__`` sets each of its 12 fields
    through ``object.__setattr__`` and then runs ``__post_init__``, 5-8 times the cost of
    a plain slots class. Each point is built as that plain twin and becomes a
    ``PredictionPoint`` by a class swap (same slots, so the same memory layout): an equal,
    frozen ``PredictionPoint`` in every respect, for a fifth of the CPU.
    """
    out: list[PredictionPoint] = []
    append = out.append
    point, frozen = _UncheckedPrediction, PredictionPoint
    for p in predictions:
        built: Any = point(site, line, agent, p.asset, model, model_version, p.window_start,
                           p.window_end, p.score, p.alert, seq, role)
        built.__class__ = frozen
        append(built)
    return out


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
    role: str = LIVE

    def __post_init__(self) -> None:
        _require_aware(at=self.at)


@dataclass(frozen=True, slots=True)
class StoredEstimate:
    """An agent's label-free estimate as stored with its health report (the wire
    ``Estimate``, its intervals flattened into value / low / high columns).

    >>> e = StoredEstimate(windows=500, alerts=20, calibrated=True, precision=0.8,
    ...                    precision_low=0.7, precision_high=0.9, horizon_s=18000.0)
    >>> StoredEstimate.from_columns(e.columns()) == e
    True
    >>> StoredEstimate.from_columns({c: None for c in ESTIMATE_COLUMNS}) is None
    True
    """

    windows: int
    alerts: int
    calibrated: bool
    expected_positives: float | None = None
    precision: float | None = None
    precision_low: float | None = None
    precision_high: float | None = None
    recall: float | None = None
    recall_low: float | None = None
    recall_high: float | None = None
    f1: float | None = None
    f1_low: float | None = None
    f1_high: float | None = None
    horizon_s: float | None = None

    @classmethod
    def from_wire(cls, e: Estimate) -> StoredEstimate:
        bounds: dict[str, float | None] = {}
        for name in ("precision", "recall", "f1"):
            interval = getattr(e, name)
            bounds[name] = None if interval is None else interval.value
            bounds[f"{name}_low"] = None if interval is None else interval.low
            bounds[f"{name}_high"] = None if interval is None else interval.high
        return cls(windows=e.windows, alerts=e.alerts, calibrated=e.calibrated,
                   expected_positives=e.expected_positives, horizon_s=e.horizon_s,
                   **bounds)

    def columns(self) -> dict[str, Any]:
        """The stored columns (fields), each ``est_`` and the attribute's name."""
        out: dict[str, Any] = {}
        for name in _ESTIMATE_FIELDS:
            value = getattr(self, name)
            # A field keeps one type in InfluxDB: 1 must be stored as 1.0 where floats go.
            if value is not None and name not in ("windows", "alerts", "calibrated"):
                value = float(value)
            out[f"est_{name}"] = value
        return out

    @classmethod
    def from_columns(cls, row: Any) -> StoredEstimate | None:
        """From a row holding ``ESTIMATE_COLUMNS`` (a mapping); None without an estimate."""
        if row["est_windows"] is None:
            return None
        values = {name: row[f"est_{name}"] for name in _ESTIMATE_FIELDS}
        floats = {k: None if v is None else float(v) for k, v in values.items()
                  if k not in ("windows", "alerts", "calibrated")}
        return cls(windows=int(values["windows"]), alerts=int(values["alerts"]),
                   calibrated=bool(values["calibrated"]), **floats)


_ESTIMATE_FIELDS = (
    "windows", "alerts", "calibrated", "expected_positives", "precision", "precision_low",
    "precision_high", "recall", "recall_low", "recall_high", "f1", "f1_low", "f1_high",
    "horizon_s",
)
# Stored beside a health report's counters; every column is empty without an estimate.
ESTIMATE_COLUMNS = tuple(f"est_{name}" for name in _ESTIMATE_FIELDS)


@dataclass(frozen=True, slots=True)
class HealthPoint:
    """One health report of an agent as stored: the wire ``Health`` counters plus who sent
    it, with which model, and the agent's label-free estimate if it sent one."""

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
    estimate: StoredEstimate | None = None
    role: str = LIVE

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


@dataclass(frozen=True, slots=True)
class ScoreCounts:
    """How one model version's scored windows of a period fall against some edges:
    ``windows`` in all, ``alerts`` among them, and ``at_most[i]`` with a score at most
    ``edges[i]`` (the edges the read was given, in their order)."""

    windows: int
    alerts: int
    at_most: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HealthSummary:
    """One agent's health reports of a period, per (site, line, agent, model, model
    version): how many, and the median and the highest of their ``inference_ms_median``
    (None when no report of the group carried one)."""

    site: str
    line: str
    agent: str
    model: str
    model_version: str
    reports: int
    inference_ms_median: float | None
    inference_ms_max: float | None


@dataclass(frozen=True, slots=True)
class Paired:
    """Two model versions compared on the windows both scored (same agent, asset and
    window end): how many, on how many both made the same alert decision, the median
    absolute difference of their scores, and each one's alerts among them."""

    windows: int
    agreements: int
    score_mad: float | None
    candidate_alerts: int
    baseline_alerts: int


def pair_up(candidate: Iterable[PredictionPoint], baseline: Iterable[PredictionPoint]
            ) -> Paired:
    """The :class:`Paired` figures of two versions' points: one shared computation, so
    every backend answers the same numbers from the same points.

    >>> from datetime import UTC
    >>> def p(end, score, alert, version):
    ...     return PredictionPoint("s", "l", "gw", "pump", "m", version, datetime(2026, 1, 1,
    ...         tzinfo=UTC), datetime(2026, 1, 1, 0, end, tzinfo=UTC), score, alert, 0)
    >>> pair_up([p(1, 0.9, True, "2"), p(2, 0.2, False, "2"), p(3, 0.1, False, "2")],
    ...         [p(1, 0.8, True, "1"), p(2, 0.6, True, "1")])
    Paired(windows=2, agreements=1, score_mad=0.25, candidate_alerts=1, baseline_alerts=2)
    """
    theirs = {(b.agent, b.asset, b.window_end): b for b in baseline}
    agreements = candidate_alerts = baseline_alerts = 0
    diffs: list[float] = []
    for c in candidate:
        b = theirs.pop((c.agent, c.asset, c.window_end), None)
        if b is None:
            continue
        diffs.append(abs(c.score - b.score))
        agreements += c.alert == b.alert
        candidate_alerts += c.alert
        baseline_alerts += b.alert
    return Paired(len(diffs), agreements,
                  round(statistics.median(diffs), 12) if diffs else None,
                  candidate_alerts, baseline_alerts)


def drift_order(p: DriftPoint) -> tuple[int, str, str, str, str, str]:
    """Sort key of drift reads: newest first, then by identity (a fleet-wide event, no
    asset, before the assets' events). Every backend returns this order."""
    return (-to_ns(p.at), p.agent, p.asset or "", p.model, p.monitor, p.detector)


def health_order(p: HealthPoint) -> tuple[int, str, str]:
    """Sort key of health reads: newest first, then agent and model."""
    return (-to_ns(p.at), p.agent, p.model)


@runtime_checkable
class SeriesStore(Protocol):
    """What the ingestor and the API need from a time-series backend.

    Roles: the reads of figures (``scores``, ``alerts``, ``asset_counts``,
    ``score_counts``, ``drift_events``, ``health_summary``, ``latest_health``,
    ``estimates`` by default) see live points only; the plain listings and counts
    (``predictions``, ``count``, ``health``, ``health_count``, ``drift_count``) see both
    roles, each point saying its own; ``paired`` compares two versions in either role."""

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
        """Stored points matching the filters, of both roles, ordered by ``window_end``, then
        agent, asset, model and role."""
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

    def alerts(self, since: datetime, until: datetime, limit: int = READ_LIMIT
               ) -> list[PredictionPoint]:
        """The oldest ``limit`` alerting windows with ``since <= window_end < until``,
        ordered by ``window_end``, then agent, asset and model (which windows of one
        instant a limit cuts is the backend's choice)."""
        ...

    def asset_counts(self, since: datetime, until: datetime) -> list[AssetsSeen]:
        """How many distinct assets each (site, line, model, model version) scored with
        ``since <= window_end < until``, ordered by those four."""
        ...

    def score_counts(self, model: str, model_version: str, since: datetime,
                     until: datetime, edges: Sequence[float]) -> ScoreCounts:
        """How the scores of ``model`` ``model_version`` with ``since <= window_end <
        until`` fall against ``edges``: an aggregate read, whatever the period holds (every
        window counted, none returned). Two edges may be equal."""
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

    def health_summary(self, since: datetime, until: datetime) -> list[HealthSummary]:
        """The health reports with ``since <= at < until`` summarised per (site, line,
        agent, model, model version), ordered by those five: an aggregate read. The
        median is the middle value, or the mean of the two middle ones."""
        ...

    def latest_health(self) -> dict[str, HealthPoint]:
        """The newest health report of every agent that sent one, by agent."""
        ...

    def health_count(self, agent: str | None = None) -> int:
        """Number of stored health reports (of ``agent``, if given)."""
        ...

    def estimates(self, since: datetime, until: datetime, *, role: str | None = LIVE
                  ) -> list[HealthPoint]:
        """Per (agent, model, model version), its newest health report with ``since <= at
        < until`` that carries an estimate, ordered by those three: of the live models,
        or of the models in ``role``, or of both with ``role=None`` (a version runs in
        one role on an agent at a time)."""
        ...

    def paired(self, candidate: tuple[str, str], baseline: tuple[str, str],
               agents: Sequence[str], since: datetime, until: datetime, *,
               limit: int = PAIR_READ_LIMIT) -> Paired:
        """``candidate`` and ``baseline`` (model, version) compared on the windows both
        scored on ``agents`` with ``since <= window_end < until``, in either role, among
        the newest ``limit`` windows of each there (:func:`pair_up`)."""
        ...

    def ping(self) -> bool:
        """True when the backend answers right now; never raises."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


def open_series(settings: Settings) -> SeriesStore:
    """Open the backend the settings name: InfluxDB 1.x or 2.x/3.x (``influx_version``) if
    ``influx_url`` is set, else SQLite."""
    if settings.influx_url is not None and settings.influx_version == "2":
        from aggregator.series.influx2 import Influx2Store

        return Influx2Store(
            settings.influx_url,
            settings.influx_bucket or settings.influx_database,
            token=settings.influx_secret() or "",
            org=settings.influx_org,
            database=settings.influx_database,
            retries=3 if settings.influx_write_retry_s > 0 else 0,
            retry_interval_s=min(1.0, settings.influx_write_retry_s / 10),
            max_retry_time_s=settings.influx_write_retry_s,
        )
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
