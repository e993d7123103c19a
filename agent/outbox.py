"""On-disk queue of outgoing messages: written before any network call, deleted on PUBACK.

SQLite in WAL mode with ``synchronous=NORMAL`` survives a killed process (a power cut can
lose the last transaction). The queue is bounded: past ``max_rows``, the oldest droppable
rows (health reports, predictions without alerts) go first and are counted; drift events
and alerts are never dropped, even if that means growing past the bound.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.errors import OutboxError

__all__ = ["Outbox", "Row"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    droppable INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    seq: int
    msg_id: str
    topic: str
    kind: str
    payload: bytes


class Outbox:
    """A bounded, persistent FIFO of messages keyed by sequence number.

    Examples
    --------
    >>> import tempfile, os
    >>> box = Outbox(os.path.join(tempfile.mkdtemp(), "o.db"), max_rows=100)
    >>> s = box.allocate_seq()
    >>> box.put(s, "id-1", "t", "predictions", b"{}", droppable=True)
    >>> [r.seq for r in box.pending(after_seq=-1, limit=10)], box.depth
    ([0], 1)
    >>> box.ack([s]); box.depth
    0
    """

    def __init__(self, path: str | Path, max_rows: int = 200_000) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the pipeline and the publisher thread, under a lock.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:  # OSError: its directory cannot be made
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        (last,) = self._db.execute(
            "SELECT MAX(v) FROM (SELECT MAX(seq) AS v FROM outbox "
            "UNION ALL SELECT value FROM meta WHERE key = 'last_seq')"
        ).fetchone()
        # seq continues across restarts, so the aggregator can spot gaps per agent.
        self._next_seq = 0 if last is None else last + 1
        self._depth: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self.dropped = self._meta("dropped")

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    @property
    def depth(self) -> int:
        return self._depth

    def allocate_seq(self) -> int:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def put(
        self, seq: int, msg_id: str, topic: str, kind: str, payload: bytes, *, droppable: bool
    ) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._depth >= self.max_rows:
                    self._drop_oldest(self._depth - self.max_rows + 1)
                self._db.execute(
                    "INSERT INTO outbox (seq, msg_id, topic, kind, droppable, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, msg_id, topic, kind, int(droppable), payload),
                )
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                    (seq,),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise OutboxError(f"cannot write to outbox {self.path}: {exc}") from exc
            self._depth += 1

    def _drop_oldest(self, n: int) -> None:
        cur = self._db.execute(
            "DELETE FROM outbox WHERE seq IN "
            "(SELECT seq FROM outbox WHERE droppable = 1 ORDER BY seq LIMIT ?)",
            (n,),
        )
        if cur.rowcount:
            self._depth -= cur.rowcount
            self.dropped += cur.rowcount
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (self.dropped,),
            )
            logger.warning("outbox full (%d rows): dropped %d oldest telemetry messages",
                           self.max_rows, cur.rowcount)

    def pending(self, after_seq: int, limit: int) -> list[Row]:
        """The oldest rows with seq > after_seq, in seq order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, msg_id, topic, kind, payload FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Row(*r) for r in rows]

    def ack(self, seqs: list[int]) -> None:
        """Delete rows the broker acknowledged."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")
            self._depth -= max(cur.rowcount, 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()
