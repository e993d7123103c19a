"""Where a source had got to, kept on disk, so that a restarted agent resumes its replay
instead of scoring it again from the start under new timestamps.

The position lives in its own table (``source_position``) of the outbox's SQLite file,
through a connection of its own in WAL mode like the outbox's. Sharing the file (and so the
write-ahead log) keeps the order of the two writes: the position of a tick is committed
after the envelopes holding that tick's outputs, so even a power cut, which can lose the
last transactions of a WAL database, never keeps a position whose outputs it lost.

A position is saved only once every output of the ticks up to it is in the outbox (the
agent saves it right after a full flush of its batches). A process killed between that
flush and the save resumes from the previous position: the few ticks in between are
scored again, and their windows get the same ``window_end`` as the first time, so every
store (msg-id dedupe aside) keeps them once: a prediction's identity is (agent, asset,
model, window_end).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import OutboxError

__all__ = ["Position", "PositionStore", "differences"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS source_position (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    start_epoch REAL NOT NULL,
    loop INTEGER NOT NULL,
    tick INTEGER NOT NULL,
    total_ticks INTEGER,
    plant_time REAL,
    saved_at TEXT NOT NULL
)
"""
_KEY = "source"
# The windows' and monitors' state at the saved position (``agent.checkpoint``).
_STATE = """
CREATE TABLE IF NOT EXISTS monitor_state (
    key TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    loop INTEGER NOT NULL,
    tick INTEGER NOT NULL,
    state BLOB NOT NULL,
    saved_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Position:
    """How far a source got.

    ``fingerprint``
        The source's identity (for a replay: file path, size and SHA-256, format, assets,
        tick, step_s, configured start); a position applies only to an equal fingerprint.
    ``start_epoch``
        Plant time (UTC epoch seconds) that file time 0 maps to in the first pass: kept so
        a resumed replay gives every window the timestamp the first run would have.
    ``loop``
        Passes over the file completed before this one (0 in the first pass).
    ``tick``
        Ticks of this pass whose outputs are all in the outbox (0 to ``total_ticks``).
    ``plant_time``
        Plant time of the last sample of that tick, for the log.
    """

    fingerprint: dict[str, Any]
    start_epoch: float
    loop: int = 0
    tick: int = 0
    total_ticks: int | None = None
    plant_time: float | None = field(default=None, compare=False)

    @property
    def at_end(self) -> bool:
        """Every tick of the pass is done."""
        return self.total_ticks is not None and self.tick >= self.total_ticks


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two fingerprints.

    >>> differences({"path": "a", "size": 1}, {"path": "a", "size": 2, "format": "x"})
    ['format', 'size']
    """
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


class PositionStore:
    """The saved position of the agent's source, in the outbox's SQLite file.

    Examples
    --------
    >>> import tempfile, os
    >>> store = PositionStore(os.path.join(tempfile.mkdtemp(), "outbox.db"))
    >>> store.load() is None
    True
    >>> store.save(Position({"path": "f"}, 1.7e9, loop=0, tick=5, total_ticks=10))
    >>> store.load().tick
    5
    >>> store.close()
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The outbox has a connection of its own. This one is used by one thread at a
            # time: the one that builds the agent, then the one that runs it (not always
            # the same, as in the demo).
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute(_STATE)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the source position in {self.path}: {exc}") from exc
        self._last: Position | None = None

    def load(self) -> Position | None:
        """The saved position, or None if there is none (or it cannot be read: logged)."""
        try:
            row = self._db.execute(
                "SELECT fingerprint, start_epoch, loop, tick, total_ticks, plant_time "
                "FROM source_position WHERE key = ?", (_KEY,)).fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot read the source position in {self.path}: {exc}") from exc
        if row is None:
            return None
        try:
            fingerprint = json.loads(row[0])
            if not isinstance(fingerprint, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            logger.warning("the saved source position in %s is unreadable (%s); it is "
                           "ignored", self.path, exc)
            return None
        self._last = Position(fingerprint, float(row[1]), int(row[2]), int(row[3]),
                              None if row[4] is None else int(row[4]),
                              None if row[5] is None else float(row[5]))
        return self._last

    def save(self, position: Position, state: tuple[str, bytes] | None = None) -> None:
        """Replace the saved position (a no-op if it is the one saved last), and with it,
        in the same transaction, the monitors' ``state`` (identity, checkpoint) if given."""
        if position == self._last:
            return
        try:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO source_position (key, fingerprint, start_epoch, loop, tick, "
                "total_ticks, plant_time, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "start_epoch = excluded.start_epoch, loop = excluded.loop, "
                "tick = excluded.tick, total_ticks = excluded.total_ticks, "
                "plant_time = excluded.plant_time, saved_at = excluded.saved_at",
                (_KEY, json.dumps(position.fingerprint, sort_keys=True), position.start_epoch,
                 position.loop, position.tick, position.total_ticks, position.plant_time,
                 datetime.now(UTC).isoformat()),
            )
            if state is None:
                self._db.execute("DELETE FROM monitor_state WHERE key = ?", (_KEY,))
            else:
                self._db.execute(
                    "INSERT INTO monitor_state (key, identity, loop, tick, state, saved_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "identity = excluded.identity, loop = excluded.loop, "
                    "tick = excluded.tick, state = excluded.state, "
                    "saved_at = excluded.saved_at",
                    (_KEY, state[0], position.loop, position.tick, state[1],
                     datetime.now(UTC).isoformat()))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise OutboxError(f"cannot save the source position in {self.path}: {exc}") from exc
        self._last = position

    @property
    def last(self) -> Position | None:
        """The position saved or loaded last."""
        return self._last

    def load_state(self, position: Position) -> tuple[str, bytes] | None:
        """(identity, checkpoint) saved with ``position``, or None."""
        try:
            row = self._db.execute(
                "SELECT identity, state FROM monitor_state WHERE key = ? AND loop = ? "
                "AND tick = ?", (_KEY, position.loop, position.tick)).fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot read the monitor state in {self.path}: {exc}") from exc
        return None if row is None else (str(row[0]), bytes(row[1]))

    def close(self) -> None:
        self._db.close()
