"""Embedded series store: one SQLite file, for the demo and single-line installs.

A plant line scoring a few windows per second per asset writes far below what SQLite in
WAL mode sustains (tens of thousands of rows per transaction-second), and the ingestor
writes one transaction per batch. Beyond one line, point ``influx_url`` at InfluxDB.
"""

from __future__ import annotations

import logging
import sqlite3
import statistics
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from aggregator.errors import SeriesUnavailableError
from aggregator.series import (
    ESTIMATE_COLUMNS,
    LIVE,
    PAIR_READ_LIMIT,
    READ_LIMIT,
    AssetsSeen,
    DriftPoint,
    HealthPoint,
    HealthSummary,
    Paired,
    PredictionPoint,
    ScoreCounts,
    StoredEstimate,
    check_limit,
    check_offset,
    from_ns,
    pair_up,
    to_ns,
)

__all__ = ["SqliteSeriesStore"]

logger = logging.getLogger(__name__)

# Each primary key is the identity of a point: the same key InfluxDB effectively uses
# (tags + timestamp), so a retried batch overwrites instead of doubling. A drift event
# without an asset is stored with asset '' (names are never empty on the wire): a NULL
# would make every such event distinct under the key.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS prediction (
    agent TEXT NOT NULL,
    asset TEXT NOT NULL,
    model TEXT NOT NULL,
    window_end_ns INTEGER NOT NULL,
    site TEXT NOT NULL,
    line TEXT NOT NULL,
    model_version TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    score REAL NOT NULL,
    alert INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL DEFAULT 'live',
    PRIMARY KEY (agent, asset, model, window_end_ns, role)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS drift (
    agent TEXT NOT NULL,
    asset TEXT NOT NULL,
    model TEXT NOT NULL,
    monitor TEXT NOT NULL,
    detector TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    site TEXT NOT NULL,
    line TEXT NOT NULL,
    model_version TEXT NOT NULL,
    value REAL,
    detail TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL DEFAULT 'live',
    PRIMARY KEY (agent, asset, model, monitor, detector, at_ns, role)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS health (
    agent TEXT NOT NULL,
    model TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    site TEXT NOT NULL,
    line TEXT NOT NULL,
    model_version TEXT NOT NULL,
    windows_scored INTEGER NOT NULL,
    outbox_depth INTEGER NOT NULL,
    outbox_dropped INTEGER NOT NULL,
    rejected_readings INTEGER NOT NULL,
    inference_ms_median REAL,
    seq INTEGER NOT NULL,
    est_windows INTEGER,
    est_alerts INTEGER,
    est_calibrated INTEGER,
    est_expected_positives REAL,
    est_precision REAL,
    est_precision_low REAL,
    est_precision_high REAL,
    est_recall REAL,
    est_recall_low REAL,
    est_recall_high REAL,
    est_f1 REAL,
    est_f1_low REAL,
    est_f1_high REAL,
    est_horizon_s REAL,
    role TEXT NOT NULL DEFAULT 'live',
    PRIMARY KEY (agent, model, at_ns, role)
) WITHOUT ROWID;
"""
# After the tables are in their current shape (see _migrate): the older tables' indexes
# go with them when they are rebuilt.
_INDEXES = """
CREATE INDEX IF NOT EXISTS prediction_asset ON prediction (asset, window_end_ns);
CREATE INDEX IF NOT EXISTS prediction_end ON prediction (window_end_ns);
CREATE INDEX IF NOT EXISTS prediction_version ON prediction (model, model_version,
                                                             window_end_ns);
CREATE INDEX IF NOT EXISTS drift_at ON drift (at_ns);
CREATE INDEX IF NOT EXISTS health_at ON health (at_ns);
"""


class _Table(NamedTuple):
    """A table's identity columns and the rest, in the order its rows are written and read."""

    name: str
    key: tuple[str, ...]
    rest: tuple[str, ...]

    def upsert(self) -> str:
        columns = self.key + self.rest
        return (
            f"INSERT INTO {self.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in self.rest)
        )

    def select(self) -> str:
        return f"SELECT {', '.join(self.key + self.rest)} FROM {self.name}"


_PREDICTION = _Table(
    "prediction",
    ("agent", "asset", "model", "window_end_ns", "role"),
    ("site", "line", "model_version", "window_start_ns", "score", "alert", "seq"),
)
_DRIFT = _Table(
    "drift",
    ("agent", "asset", "model", "monitor", "detector", "at_ns", "role"),
    ("site", "line", "model_version", "value", "detail", "seq"),
)
_HEALTH = _Table(
    "health",
    ("agent", "model", "at_ns", "role"),
    ("site", "line", "model_version", "windows_scored", "outbox_depth", "outbox_dropped",
     "rejected_readings", "inference_ms_median", "seq", *ESTIMATE_COLUMNS),
)
# Columns added after the first release, with their types: a file written by an older
# version gains them when opened.
_ADDED = {"health": {c: "INTEGER" if c in ("est_windows", "est_alerts", "est_calibrated")
                     else "REAL" for c in ESTIMATE_COLUMNS}}
# Tables whose identity gained the role (a shadow model's points beside the live one's):
# SQLite cannot change a primary key in place, so a file written before is rebuilt once,
# its rows copied as live.
_KEYED_BY_ROLE = (_PREDICTION, _DRIFT, _HEALTH)


class SqliteSeriesStore:
    """Series store in a SQLite file (WAL mode); safe to share between threads.

    Parameters
    ----------
    path
        Database file; missing parent directories are created.
    """

    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock: the ingest worker writes, API threads read, and
        # SQLite serialises writers anyway. check_same_thread=False is safe with the lock.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # WAL: readers never block the writer. synchronous=NORMAL is durable across
            # process crashes in WAL mode (only an OS crash can lose the last commits).
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(_SCHEMA)
            # typeshed's protocol wants int in and out; SQLite passes REAL values through.
            self._conn.create_aggregate("median", 1, _Median)  # type: ignore[arg-type]
            self._migrate()
            self._conn.executescript(_INDEXES)

    def _migrate(self) -> None:
        # Under the write lock: two processes opening one older file at once must not both
        # add a column (the second would fail with "duplicate column name") or rebuild.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in _ADDED.items():
                have = self._columns(table)
                for column, kind in columns.items():
                    if column not in have:
                        self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for keyed in _KEYED_BY_ROLE:
                if "role" not in self._columns(keyed.name):
                    self._rebuild_with_role(keyed)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}

    def _rebuild_with_role(self, table: _Table) -> None:
        """``table`` of an older file, recreated with the role in its key, rows kept."""
        old = f"{table.name}_before_role"
        self._conn.execute(f"ALTER TABLE {table.name} RENAME TO {old}")
        create = next(part for part in _SCHEMA.split(";")
                      if f"CREATE TABLE IF NOT EXISTS {table.name} (" in part)
        self._conn.execute(create)
        columns = ", ".join(c for c in table.key + table.rest if c != "role")
        self._conn.execute(f"INSERT INTO {table.name} ({columns}, role) "
                           f"SELECT {columns}, 'live' FROM {old}")
        self._conn.execute(f"DROP TABLE {old}")  # its indexes go with it

    def write(
        self,
        points: Sequence[PredictionPoint],
        drift: Sequence[DriftPoint] = (),
        health: Sequence[HealthPoint] = (),
    ) -> None:
        writes = [
            (table, rows)
            for table, rows in (
                (_PREDICTION, [_prediction_row(p) for p in points]),
                (_DRIFT, [_drift_row(p) for p in drift]),
                (_HEALTH, [_health_row(p) for p in health]),
            )
            if rows
        ]
        if not writes:
            return
        try:
            with self._lock:
                # One transaction for the whole batch: stored as a whole or not at all.
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for table, rows in writes:
                        self._conn.executemany(table.upsert(), rows)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O error
            raise SeriesUnavailableError(f"sqlite series store {self.path}: {exc}") from exc

    # -- predictions ----------------------------------------------------------------------
    def predictions(
        self, agent: str | None = None, asset: str | None = None
    ) -> list[PredictionPoint]:
        where, args = _where(agent=agent, asset=asset)
        rows = self._fetch(
            f"{_PREDICTION.select()}{where} ORDER BY window_end_ns, agent, asset, model, role",
            args,
        )
        return [_prediction(row) for row in rows]

    def count(self, agent: str | None = None, asset: str | None = None) -> int:
        return self._count(_PREDICTION, _where(agent=agent, asset=asset))

    def scores(
        self,
        asset: str,
        *,
        site: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = READ_LIMIT,
    ) -> list[PredictionPoint]:
        # The prediction_asset index (asset, window_end_ns) serves the range.
        where, args = _where(asset=asset, site=site, role=LIVE, since=since, until=until,
                             time="window_end_ns")
        rows = self._fetch(
            f"{_PREDICTION.select()}{where} ORDER BY window_end_ns, agent, model LIMIT ?",
            [*args, check_limit(limit)],
        )
        return [_prediction(row) for row in rows]

    def alerts(self, since: datetime, until: datetime, limit: int = READ_LIMIT
               ) -> list[PredictionPoint]:
        where, args = _where(role=LIVE, since=since, until=until, time="window_end_ns")
        rows = self._fetch(
            f"{_PREDICTION.select()}{where} AND alert ORDER BY window_end_ns, agent, asset, "
            "model LIMIT ?", [*args, check_limit(limit)])
        return [_prediction(row) for row in rows]

    def asset_counts(self, since: datetime, until: datetime) -> list[AssetsSeen]:
        where, args = _where(role=LIVE, since=since, until=until, time="window_end_ns")
        rows = self._fetch(
            f"SELECT site, line, model, model_version, count(DISTINCT asset) FROM prediction"
            f"{where} GROUP BY site, line, model, model_version "
            "ORDER BY site, line, model, model_version",
            args,
        )
        return [AssetsSeen(site, line, model, version, int(n))
                for site, line, model, version, n in rows]

    def score_counts(self, model: str, model_version: str, since: datetime,
                     until: datetime, edges: Sequence[float]) -> ScoreCounts:
        where, args = _where(model=model, model_version=model_version, role=LIVE,
                             since=since, until=until, time="window_end_ns")
        below = "".join(", coalesce(sum(score <= ?), 0)" for _ in edges)
        ((windows, alerts, *at_most),) = self._fetch(
            f"SELECT count(*), coalesce(sum(alert), 0){below} FROM prediction{where}",
            [*map(float, edges), *args],
        )
        return ScoreCounts(int(windows), int(alerts), tuple(int(n) for n in at_most))

    # -- drift events ---------------------------------------------------------------------
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
        where, args = _where(agent=agent, asset=asset, detector=detector, site=site,
                             role=LIVE, since=since, until=until)
        rows = self._fetch(
            f"{_DRIFT.select()}{where} "
            "ORDER BY at_ns DESC, agent, asset, model, monitor, detector LIMIT ? OFFSET ?",
            [*args, check_limit(limit), check_offset(offset)],
        )
        return [_drift(row) for row in rows]

    def drift_count(self, agent: str | None = None, asset: str | None = None) -> int:
        return self._count(_DRIFT, _where(agent=agent, asset=asset))

    # -- health reports -------------------------------------------------------------------
    def health(self, agent: str | None = None, limit: int = READ_LIMIT) -> list[HealthPoint]:
        where, args = _where(agent=agent)
        rows = self._fetch(
            f"{_HEALTH.select()}{where} ORDER BY at_ns DESC, agent, model LIMIT ?",
            [*args, check_limit(limit)],
        )
        return [_health(row) for row in rows]

    def health_summary(self, since: datetime, until: datetime) -> list[HealthSummary]:
        where, args = _where(role=LIVE, since=since, until=until)
        rows = self._fetch(
            "SELECT site, line, agent, model, model_version, count(*), "
            f"median(inference_ms_median), max(inference_ms_median) FROM health{where} "
            "GROUP BY site, line, agent, model, model_version "
            "ORDER BY site, line, agent, model, model_version",
            args,
        )
        return [HealthSummary(site, line, agent, model, version, int(n), ms, top)
                for site, line, agent, model, version, n, ms, top in rows]

    def latest_health(self) -> dict[str, HealthPoint]:
        # The primary key starts with agent, so each max() is an index seek.
        rows = self._fetch(
            f"{_HEALTH.select()} AS h WHERE role = 'live' AND at_ns = (SELECT max(at_ns) "
            "FROM health WHERE agent = h.agent AND role = 'live') ORDER BY agent, model",
            [],
        )
        return {point.agent: point for point in map(_health, rows)}

    def estimates(self, since: datetime, until: datetime, *, role: str | None = LIVE
                  ) -> list[HealthPoint]:
        bounds = (to_ns(since), to_ns(until))
        # '%' matches every role: one statement for both cases.
        roles = (role or "%",) * 2
        with self._lock:
            rows = self._conn.execute(
                f"{_HEALTH.select()} AS h WHERE est_windows IS NOT NULL AND role LIKE ? "
                "AND at_ns >= ? AND at_ns < ? AND at_ns = (SELECT max(at_ns) FROM health "
                "WHERE agent = h.agent AND model = h.model AND model_version = "
                "h.model_version AND est_windows IS NOT NULL AND role LIKE ? AND at_ns >= ? "
                "AND at_ns < ?) ORDER BY agent, model, model_version",
                (roles[0], *bounds, roles[1], *bounds)).fetchall()
        return [_health(row) for row in rows]

    def paired(self, candidate: tuple[str, str], baseline: tuple[str, str],
               agents: Sequence[str], since: datetime, until: datetime, *,
               limit: int = PAIR_READ_LIMIT) -> Paired:
        if not agents:
            return pair_up((), ())
        marks = ", ".join("?" * len(agents))

        def newest(model: tuple[str, str]) -> list[PredictionPoint]:
            # The prediction_version index serves the range of one version.
            rows = self._fetch(
                f"{_PREDICTION.select()} WHERE model = ? AND model_version = ? AND "
                f"window_end_ns >= ? AND window_end_ns < ? AND agent IN ({marks}) "
                "ORDER BY window_end_ns DESC LIMIT ?",
                [*model, to_ns(since), to_ns(until), *agents, check_limit(limit)])
            return [_prediction(row) for row in rows]

        return pair_up(newest(candidate), newest(baseline))

    def health_count(self, agent: str | None = None) -> int:
        return self._count(_HEALTH, _where(agent=agent))

    # -- plumbing -------------------------------------------------------------------------
    def _fetch(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _count(self, table: _Table, where: tuple[str, list[Any]]) -> int:
        ((n,),) = self._fetch(f"SELECT count(*) FROM {table.name}{where[0]}", where[1])
        return int(n)

    def ping(self) -> bool:
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Median:
    """SQLite aggregate ``median(x)``: NULLs are skipped, as InfluxQL's ``MEDIAN`` does."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def _where(*, since: datetime | None = None, until: datetime | None = None,
           time: str = "at_ns", **equal: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause: every given column equal to its value, ``since <= time < until``."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        clauses.append(f"{time} >= ?")
        args.append(to_ns(since))
    if until is not None:
        clauses.append(f"{time} < ?")
        args.append(to_ns(until))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


# -- rows <-> points, in the column order of the _Table ---------------------------------
def _prediction_row(p: PredictionPoint) -> tuple[Any, ...]:
    return (
        p.agent, p.asset, p.model, to_ns(p.window_end), p.role, p.site, p.line,
        p.model_version, to_ns(p.window_start), p.score, int(p.alert), p.seq,
    )


def _prediction(row: tuple[Any, ...]) -> PredictionPoint:
    agent, asset, model, end_ns, role, site, line, version, start_ns, score, alert, seq = row
    return PredictionPoint(
        site=site, line=line, agent=agent, asset=asset, model=model, model_version=version,
        window_start=from_ns(start_ns), window_end=from_ns(end_ns), score=score,
        alert=bool(alert), seq=seq, role=role,
    )


def _drift_row(p: DriftPoint) -> tuple[Any, ...]:
    return (
        p.agent, p.asset or "", p.model, p.monitor, p.detector, to_ns(p.at), p.role, p.site,
        p.line, p.model_version, p.value, p.detail, p.seq,
    )


def _drift(row: tuple[Any, ...]) -> DriftPoint:
    (agent, asset, model, monitor, detector, at_ns, role, site, line, version, value, detail,
     seq) = row
    return DriftPoint(
        site=site, line=line, agent=agent, asset=asset or None, at=from_ns(at_ns),
        monitor=monitor, detector=detector, value=value, detail=detail, model=model,
        model_version=version, seq=seq, role=role,
    )


_NO_ESTIMATE = (None,) * len(ESTIMATE_COLUMNS)


def _health_row(p: HealthPoint) -> tuple[Any, ...]:
    return (
        p.agent, p.model, to_ns(p.at), p.role, p.site, p.line, p.model_version,
        p.windows_scored,
        p.outbox_depth, p.outbox_dropped, p.rejected_readings, p.inference_ms_median, p.seq,
        *(_NO_ESTIMATE if p.estimate is None else p.estimate.columns().values()),
    )


def _health(row: tuple[Any, ...]) -> HealthPoint:
    (agent, model, at_ns, role, site, line, version, scored, depth, dropped, rejected, ms,
     seq) = row[:13]
    return HealthPoint(
        site=site, line=line, agent=agent, at=from_ns(at_ns), windows_scored=scored,
        outbox_depth=depth, outbox_dropped=dropped, rejected_readings=rejected,
        inference_ms_median=ms, model=model, model_version=version, seq=seq,
        estimate=StoredEstimate.from_columns(dict(zip(ESTIMATE_COLUMNS, row[13:],
                                                      strict=True))),
        role=role,
    )
