"""Embedded series store: one SQLite file, for the demo and single-line installs.

A plant line scoring a few windows per second per asset writes far below what SQLite in
WAL mode sustains (tens of thousands of rows per transaction-second), and the ingestor
writes one transaction per batch. Beyond one line, point ``influx_url`` at InfluxDB.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from aggregator.errors import SeriesUnavailableError
from aggregator.series import PredictionPoint, from_ns, to_ns

__all__ = ["SqliteSeriesStore"]

logger = logging.getLogger(__name__)

# The primary key is the identity of a point: the same key InfluxDB effectively uses
# (agent/asset/model tags + timestamp), so a retried batch overwrites instead of doubling.
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
    PRIMARY KEY (agent, asset, model, window_end_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS prediction_asset ON prediction (asset, window_end_ns);
CREATE INDEX IF NOT EXISTS prediction_end ON prediction (window_end_ns);
"""

_UPSERT = """
INSERT INTO prediction (agent, asset, model, window_end_ns, site, line, model_version,
                        window_start_ns, score, alert, seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (agent, asset, model, window_end_ns) DO UPDATE SET
    site = excluded.site, line = excluded.line, model_version = excluded.model_version,
    window_start_ns = excluded.window_start_ns, score = excluded.score,
    alert = excluded.alert, seq = excluded.seq
"""

_COLUMNS = (
    "site, line, agent, asset, model, model_version, window_start_ns, window_end_ns, "
    "score, alert, seq"
)


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

    def write(self, points: list[PredictionPoint]) -> None:
        if not points:
            return
        rows = [
            (
                p.agent, p.asset, p.model, to_ns(p.window_end), p.site, p.line, p.model_version,
                to_ns(p.window_start), p.score, int(p.alert), p.seq,
            )
            for p in points
        ]
        try:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(_UPSERT, rows)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O error
            raise SeriesUnavailableError(f"sqlite series store {self.path}: {exc}") from exc

    def predictions(
        self, agent: str | None = None, asset: str | None = None
    ) -> list[PredictionPoint]:
        where, args = _where(agent, asset)
        sql = (
            f"SELECT {_COLUMNS} FROM prediction{where} "
            "ORDER BY window_end_ns, agent, asset, model"
        )
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [_point(row) for row in rows]

    def count(self, agent: str | None = None, asset: str | None = None) -> int:
        where, args = _where(agent, asset)
        with self._lock:
            (n,) = self._conn.execute(f"SELECT count(*) FROM prediction{where}", args).fetchone()
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


def _where(agent: str | None, asset: str | None) -> tuple[str, list[str]]:
    clauses, args = [], []
    for column, value in (("agent", agent), ("asset", asset)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _point(row: tuple) -> PredictionPoint:  # type: ignore[type-arg]
    site, line, agent, asset, model, version, start_ns, end_ns, score, alert, seq = row
    return PredictionPoint(
        site=site, line=line, agent=agent, asset=asset, model=model, model_version=version,
        window_start=from_ns(start_ns), window_end=from_ns(end_ns), score=score,
        alert=bool(alert), seq=seq,
    )
