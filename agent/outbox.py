"""On-disk queue of outgoing messages: written before any network call, kept until the
aggregator says it stored them (``confirm``), or, with ``publish.confirm: broker``, until
the broker's PUBACK (``ack``).

A broker's PUBACK only marks a row sent (``mark_sent``): a broker that lost its session, or
acknowledged a message no subscriber was there to take, must not cost the message.

SQLite in WAL mode with ``synchronous=NORMAL`` survives a killed process (a power cut can
lose the last transaction). The queue is bounded, sent-but-unconfirmed rows included: past
``max_rows``, the oldest droppable rows (plain health reports, predictions without alerts)
go first; drift events, alerts and health reports that tell of lost messages are never
dropped, even if that means growing past the bound. Every dropped row is recorded, in the
same transaction, as part of a contiguous seq span (``undeliverable``), so the agent can tell
the aggregator exactly what it will never deliver.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.errors import OutboxError
from contract import wire
from outage.failures import FailureLog

__all__ = ["Outbox", "Row"]

logger = logging.getLogger(__name__)

_TABLES = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    droppable INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS undeliverable (
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    reason TEXT NOT NULL,
    windows INTEGER NOT NULL,
    first_at TEXT,
    last_at TEXT,
    told INTEGER NOT NULL DEFAULT 0
);
"""
# Added after the first release: an outbox file written by it gets them by ALTER TABLE, and
# its rows NULL windows (read from the payload if they are ever dropped). sent_at is the
# publisher's clock when the broker acknowledged the row or it was last scheduled to go
# again; NULL until the broker acknowledged it once.
_COLUMNS = {
    "windows": "INTEGER",
    "ts": "TEXT",
    "sent_at": "REAL",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
"""


@dataclass(frozen=True)
class Row:
    seq: int
    msg_id: str
    topic: str
    kind: str
    payload: bytes


# The reason kept for dropped rows the broker had acknowledged; told as "dropped".
_SENT_DROPPED = "dropped-sent"
_OPEN_TRIES = 100  # 50 ms apart: how long opening waits for a file another process opens


@dataclass
class _Run:
    """Contiguous seqs about to be recorded as undeliverable."""

    first: int
    last: int
    windows: int = 0
    first_at: str | None = None
    last_at: str | None = None


class Outbox:
    """A bounded, persistent FIFO of messages keyed by sequence number.

    Examples
    --------
    >>> import tempfile, os
    >>> box = Outbox(os.path.join(tempfile.mkdtemp(), "o.db"), max_rows=100)
    >>> s = box.allocate_seq()
    >>> box.put(s, "id-1", "t", "predictions", b"{}", droppable=True, windows=3)
    >>> [r.seq for r in box.pending(after_seq=-1, limit=10)], box.depth
    ([0], 1)
    >>> box.mark_sent([s], at=0.0), box.pending(-1, 10), box.depth, box.unconfirmed
    (1, [], 1, 1)
    >>> box.confirm(s), box.depth
    (1, 0)
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
            # Switching a new file to WAL while another process opens it can be refused at
            # once ("database is locked", no busy wait): try again for a few seconds.
            for attempt in range(_OPEN_TRIES):
                try:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == _OPEN_TRIES - 1:
                        raise
                    time.sleep(0.05)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_TABLES)
            self._upgrade()
            self._db.executescript(_INDEXES)
        except (OSError, sqlite3.Error) as exc:  # OSError: its directory cannot be made
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        # Rows handed to paho and not yet acknowledged: the broker may be storing them right
        # now, so they are never dropped; a row both delivered and reported dropped would
        # leave the aggregator unable to count the windows of either exactly.
        self._held: set[int] = set()
        self._full_log = FailureLog(logger)
        (last,) = self._db.execute(
            "SELECT MAX(v) FROM (SELECT MAX(seq) AS v FROM outbox "
            "UNION ALL SELECT value FROM meta WHERE key = 'last_seq')"
        ).fetchone()
        # seq continues across restarts, so the aggregator can spot gaps per agent.
        self._last_seq: int = -1 if last is None else last
        self._next_seq = self._last_seq + 1
        self._depth: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._sent: int = self._db.execute(
            "SELECT COUNT(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()[0]
        self.dropped = self._meta("dropped")
        self._through = self._meta("stored_through", -1)
        self.spans_made = 0  # new undeliverable spans since this process opened the outbox
        self.confirmed = 0  # rows released by confirm() since then

    def _upgrade(self) -> None:
        # Under the write lock: another process opening the same file at the same moment
        # (a second agent start, a tool reading the depth) must not add a column twice.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            have = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            for name, decl in _COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def depth(self) -> int:
        """Rows held: not yet sent, or sent and not yet confirmed."""
        return self._depth

    @property
    def unconfirmed(self) -> int:
        """Rows the broker acknowledged that the aggregator has not confirmed yet."""
        return self._sent

    @property
    def unsent(self) -> int:
        """Rows the broker has not acknowledged yet."""
        return self._depth - self._sent

    @property
    def confirmed_through(self) -> int:
        """The highest ``stored_through`` the aggregator ever confirmed (-1: none)."""
        return self._through

    @property
    def last_seq(self) -> int:
        """The highest seq ever written (-1: none)."""
        return self._last_seq

    def allocate_seq(self) -> int:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def put(
        self, seq: int, msg_id: str, topic: str, kind: str, payload: bytes, *,
        droppable: bool, windows: int = 0, ts: datetime | None = None,
        make_room: bool = True,
    ) -> None:
        """Store one message; ``windows`` (predictions it holds) and ``ts`` (its envelope's)
        describe it if it is ever dropped. ``make_room=False`` stores it past the bound
        rather than drop another row: for the report of what was dropped, which would
        otherwise cause a loss it does not tell."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if make_room and self._depth >= self.max_rows:
                    self._drop_oldest(self._depth - self.max_rows + 1)
                self._db.execute(
                    "INSERT INTO outbox (seq, msg_id, topic, kind, droppable, payload, windows, "
                    "ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, msg_id, topic, kind, int(droppable), payload, windows,
                     None if ts is None else ts.isoformat()),
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
            self._last_seq = max(self._last_seq, seq)

    def hold(self, seq: int) -> None:
        """``seq`` is on its way to the broker: not to be dropped until ``let_go``."""
        with self._lock:
            self._held.add(seq)

    def let_go(self, seq: int) -> None:
        with self._lock:
            self._held.discard(seq)

    def _drop_oldest(self, n: int) -> None:
        rows = [r for r in self._db.execute(
            "SELECT seq, windows, ts, sent_at IS NOT NULL, "
            "CASE WHEN windows IS NULL THEN payload END "
            "FROM outbox WHERE droppable = 1 ORDER BY seq LIMIT ?",
            (n + len(self._held),)).fetchall() if r[0] not in self._held][:n]
        if not rows:
            return
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in rows])
        # Rows the broker took may have reached the aggregator and rows it never took have
        # not: their spans never merge, so a span is either all unseen there (its windows
        # count exactly) or all probably seen (the aggregator counts only those it lacks).
        runs: list[tuple[_Run, bool]] = []
        for seq, windows, ts, sent, payload in rows:
            if windows is None:  # written by the first release, which did not keep them aside
                windows, ts = _described(payload)
            if runs and runs[-1][0].last == seq - 1 and runs[-1][1] == bool(sent):
                run = runs[-1][0]
                run.last, run.windows, run.last_at = seq, run.windows + windows, ts or run.last_at
            else:
                runs.append((_Run(seq, seq, windows, ts, ts), bool(sent)))
            self._sent -= bool(sent)
        for run, sent in runs:
            self._record(_SENT_DROPPED if sent else "dropped", run)
        self._depth -= len(rows)
        self.dropped += len(rows)
        self._set_meta("dropped", self.dropped)
        # Once per episode at WARNING, then DEBUG with a summary every 5 min: a long outage
        # drops a row on every write.
        self._full_log.failed(
            "full", f"outbox full ({self.max_rows} rows): dropping the oldest telemetry "
            f"(health reports, predictions without alerts) to make room; alerts and drift "
            f"events are kept, and every drop is reported to the aggregator ({self.dropped} "
            "dropped so far, latest seq " + ", ".join(
                f"{r.first}-{r.last}" if r.last > r.first else str(r.first) for r, _ in runs)
            + ")")

    def _record(self, reason: str, run: _Run) -> None:
        """Add a span of undeliverable seqs, merged with a neighbour of the same reason
        (a long outage drops thousands of rows one at a time)."""
        before = self._db.execute(
            "SELECT first, windows, first_at FROM undeliverable WHERE last = ? AND reason = ? "
            "AND told = 0",
            (run.first - 1, reason)).fetchone()
        after = self._db.execute(
            "SELECT first, last, windows, last_at FROM undeliverable "
            "WHERE first = ? AND reason = ? AND told = 0", (run.last + 1, reason)).fetchone()
        first, last, windows = run.first, run.last, run.windows
        first_at, last_at = run.first_at, run.last_at
        if before is not None:
            first, windows, first_at = before[0], windows + before[1], before[2] or first_at
            self._db.execute("DELETE FROM undeliverable WHERE first = ?", (before[0],))
        if after is not None:
            last, windows, last_at = after[1], windows + after[2], after[3] or last_at
            self._db.execute("DELETE FROM undeliverable WHERE first = ?", (after[0],))
        self._db.execute(
            "INSERT INTO undeliverable (first, last, reason, windows, first_at, last_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", (first, last, reason, windows, first_at, last_at))
        if before is None and after is None:
            self.spans_made += 1

    def pending(self, after_seq: int, limit: int) -> list[Row]:
        """The oldest rows never acknowledged by the broker with seq > after_seq, in seq
        order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, msg_id, topic, kind, payload FROM outbox "
                "WHERE seq > ? AND sent_at IS NULL ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Row(*r) for r in rows]

    def rows(self, seqs: Sequence[int]) -> list[Row]:
        """The rows of these seqs still held, in seq order."""
        with self._lock:
            found = [self._db.execute(
                "SELECT seq, msg_id, topic, kind, payload FROM outbox WHERE seq = ?", (s,)
            ).fetchone() for s in sorted(seqs)]
        return [Row(*r) for r in found if r is not None]

    def ack(self, seqs: list[int]) -> None:
        """Delete rows the broker acknowledged (``publish.confirm: broker``)."""
        if not seqs:
            return
        with self._lock:
            # IMMEDIATE: the write lock before the read. A deferred transaction that read
            # first could not write after the position store (another connection) committed
            # in between, and would fail at once with "database is locked".
            self._db.execute("BEGIN IMMEDIATE")
            sent = sum(self._db.execute(
                "SELECT COUNT(*) FROM outbox WHERE seq = ? AND sent_at IS NOT NULL", (s,)
            ).fetchone()[0] for s in seqs)
            cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")
            self._depth -= max(cur.rowcount, 0)
            self._sent -= sent

    def mark_sent(self, seqs: Iterable[int], at: float) -> int:
        """Stamp rows as acknowledged by the broker, or scheduled to go again, at ``at``
        (the publisher's clock); return how many had never been acknowledged before.

        A row the aggregator already confirmed leaves now: its acknowledgement was lost
        with a connection, or came after the confirmation."""
        params = [(at, s) for s in seqs]
        if not params:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            new = max(self._db.executemany(
                "UPDATE outbox SET sent_at = ? WHERE seq = ? AND sent_at IS NULL", params
            ).rowcount, 0)
            self._db.executemany("UPDATE outbox SET sent_at = ? WHERE seq = ?", params)
            stored = max(self._db.executemany(
                "DELETE FROM outbox WHERE seq = ? AND seq <= ?",
                [(s, self._through) for _, s in params]).rowcount, 0)
            self._db.execute("COMMIT")
            self._sent += new - stored
            self.confirmed += stored
            self._depth -= stored
        return new

    def restamp_sent(self, at: float) -> None:
        """Start every sent row's confirmation wait over at ``at``: the stamps of an earlier
        process are on another clock."""
        with self._lock:
            self._db.execute("UPDATE outbox SET sent_at = ? WHERE sent_at IS NOT NULL", (at,))

    def release_sent(self) -> int:
        """Delete every row the broker acknowledged (switching to ``confirm: broker``)."""
        with self._lock:
            n = self._db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL").rowcount
            self._depth -= n
            self._sent -= n
        return n

    def oldest_sent(self) -> float | None:
        """The earliest ``sent_at`` among rows awaiting confirmation."""
        with self._lock:
            (at,) = self._db.execute(
                "SELECT MIN(sent_at) FROM outbox WHERE sent_at IS NOT NULL").fetchone()
        return None if at is None else float(at)

    def resendable(self, first: int, last: int, *, sent_before: float = math.inf) -> list[int]:
        """Seqs in ``first..last`` above ``confirmed_through`` that the broker acknowledged
        at or before ``sent_before``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq FROM outbox WHERE seq BETWEEN ? AND ? AND sent_at IS NOT NULL "
                "AND sent_at <= ? ORDER BY seq",
                (max(first, self._through + 1), last, min(sent_before, 1e300)),
            ).fetchall()
        return [r[0] for r in rows]

    def confirm(self, stored_through: int) -> int:
        """The aggregator stored every seq up to ``stored_through``: delete those rows and
        forget the undeliverable spans it has passed; return how many rows left. A value
        lower than one seen before changes nothing.

        Only rows the broker acknowledged leave: the aggregator cannot have stored a row
        that never reached the broker, so a confirmation that covers one speaks of another
        message with that seq (a stale one, for an outbox that was replaced). A row whose
        acknowledgement is still to come leaves with it (``mark_sent``)."""
        with self._lock:
            if stored_through <= self._through:
                return 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                (n,) = self._db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE seq <= ? AND sent_at IS NOT NULL",
                    (stored_through,)).fetchone()
                self._db.execute("DELETE FROM outbox WHERE seq <= ? AND sent_at IS NOT NULL",
                                 (stored_through,))
                self._db.execute("DELETE FROM undeliverable WHERE last <= ?", (stored_through,))
                self._set_meta("stored_through", stored_through)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise OutboxError(f"cannot write to outbox {self.path}: {exc}") from exc
            # Counted before the depth drops: whoever sees the rows gone sees them counted.
            self.confirmed += n
            self._through = stored_through
            self._sent -= n
            self._depth -= n
        if n and self._depth < self.max_rows:
            self._full_log.recovered(f"outbox has room again ({self._depth} of "
                                     f"{self.max_rows} rows; {self.dropped} dropped in all)")
        return int(n)

    def note_gone(self, first: int, last: int) -> list[tuple[int, int]]:
        """Record as ``gone`` the seqs in ``first..last`` that the aggregator asks for again
        but that this outbox no longer holds and never recorded as dropped (released on an
        earlier broker acknowledgement, or never written); return the new spans. Seqs the
        aggregator confirmed or that were never allocated are left out."""
        with self._lock:
            lo, hi = max(first, self._through + 1), min(last, self._last_seq)
            if lo > hi:
                return []
            taken = [(s, s) for (s,) in self._db.execute(
                "SELECT seq FROM outbox WHERE seq BETWEEN ? AND ?", (lo, hi))]
            taken += self._db.execute(
                "SELECT first, last FROM undeliverable WHERE last >= ? AND first <= ?",
                (lo, hi)).fetchall()
            gaps, at = [], lo
            for a, b in sorted(taken):
                if a > at:
                    gaps.append((at, a - 1))
                at = max(at, b + 1)
            if at <= hi:
                gaps.append((at, hi))
            if gaps:
                self._db.execute("BEGIN IMMEDIATE")  # reads, then writes: see ack
                for a, b in gaps:
                    self._record("gone", _Run(a, b))
                self._db.execute("COMMIT")
        return gaps

    def undeliverable(self, limit: int = wire.MAX_SPANS, *, tell: bool = False
                      ) -> list[wire.Undeliverable]:
        """The spans the aggregator has not passed yet, oldest first. ``tell``: they go in a
        report now, and from then on never grow: a later drop next to one makes a span of
        its own, so the aggregator, which counts a span's windows once, never meets a span
        overlapping one it has counted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT first, last, reason, windows, first_at, last_at FROM undeliverable "
                "WHERE last > ? ORDER BY first LIMIT ?", (self._through, limit)).fetchall()
            if tell and rows:
                self._db.executemany("UPDATE undeliverable SET told = 1 WHERE first = ?",
                                     [(r[0],) for r in rows])
        return [wire.Undeliverable(first=a, last=b,
                                   reason="dropped" if reason == _SENT_DROPPED else reason,
                                   windows=windows,
                                   first_at=_when(first_at), last_at=_when(last_at))
                for a, b, reason, windows, first_at, last_at in rows]

    @property
    def resend_id(self) -> str | None:
        """The last ``resend`` request of the aggregator that was carried out."""
        with self._lock:
            row = self._db.execute("SELECT value FROM notes WHERE key = 'resend'").fetchone()
        return None if row is None else str(row[0])

    def note_resend(self, resend_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO notes (key, value) VALUES ('resend', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (resend_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _described(payload: bytes) -> tuple[int, str | None]:
    """(predictions, envelope ts) of a payload, for a row written without them."""
    try:
        env = json.loads(payload)
        items = env.get("items", [])
        return sum(i.get("kind") == "prediction" for i in items), env.get("ts")
    except (ValueError, AttributeError, TypeError):
        return 0, None
