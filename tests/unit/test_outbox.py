from __future__ import annotations

import logging
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.outbox import Outbox
from contract import wire


def _fill(box: Outbox, n: int, *, droppable: bool = True, kind: str = "predictions") -> list[int]:
    seqs = []
    for _ in range(n):
        s = box.allocate_seq()
        box.put(s, f"id-{s}", "t", kind, f"payload-{s}".encode(), droppable=droppable)
        seqs.append(s)
    return seqs


def test_rows_come_back_in_seq_order_and_leave_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = _fill(box, 5)
    rows = box.pending(after_seq=-1, limit=10)
    assert [r.seq for r in rows] == seqs
    assert rows[2].payload == f"payload-{seqs[2]}".encode()
    box.ack(seqs[:3])
    assert [r.seq for r in box.pending(-1, 10)] == seqs[3:]
    assert box.depth == 2
    assert [r.seq for r in box.pending(after_seq=seqs[3], limit=10)] == seqs[4:]


def test_unacked_rows_and_seq_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = _fill(box, 4)
    box.ack(seqs[:1])
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [r.seq for r in again.pending(-1, 10)] == seqs[1:]
    assert again.depth == 3
    assert again.allocate_seq() == seqs[-1] + 1


def test_seq_continues_after_everything_was_acked(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = _fill(box, 3)
    box.ack(seqs)
    box.close()
    assert Outbox(tmp_path / "o.db").allocate_seq() == seqs[-1] + 1


def test_full_outbox_drops_oldest_telemetry_never_alerts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=5)
    keep = _fill(box, 2, droppable=False, kind="drift")
    telemetry = _fill(box, 3)
    newer = _fill(box, 2)
    left = [r.seq for r in box.pending(-1, 100)]
    assert set(keep) <= set(left)
    assert telemetry[0] not in left and telemetry[1] not in left
    assert set(newer) <= set(left)
    assert box.dropped == 2 and box.depth == 5
    box.close()
    assert Outbox(tmp_path / "o.db").dropped == 2


def test_undroppable_rows_may_exceed_the_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=3)
    _fill(box, 5, droppable=False, kind="drift")
    assert box.depth == 5 and box.dropped == 0


def test_bad_bound_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(tmp_path / "o.db", max_rows=0)


# -- end-to-end acknowledgement (issue #9) ---------------------------------------------------
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _put(box: Outbox, *, droppable: bool = True, windows: int = 0, kind: str = "predictions",
         minute: int | None = None) -> int:
    s = box.allocate_seq()
    ts = T0 + timedelta(minutes=s if minute is None else minute)
    box.put(s, f"id-{s}", "t", kind, f"payload-{s}".encode(), droppable=droppable,
            windows=windows, ts=ts)
    return s


def _spans(box: Outbox) -> list[tuple[int, int, str, int]]:
    return [(u.first, u.last, u.reason, u.windows) for u in box.undeliverable()]


def test_a_broker_acknowledgement_keeps_the_row_until_the_aggregator_confirms_it(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = _fill(box, 5)
    assert box.mark_sent(seqs[:3], at=10.0) == 3
    assert box.mark_sent(seqs[:3], at=11.0) == 0  # a resend's PUBACK is not a new row
    assert (box.depth, box.unconfirmed, box.unsent) == (5, 3, 2)
    # Sent rows are no longer pending; the others are.
    assert [r.seq for r in box.pending(-1, 10)] == seqs[3:]
    assert box.confirm(seqs[1]) == 2
    assert (box.depth, box.unconfirmed, box.unsent) == (3, 1, 2)
    assert [r.seq for r in box.rows(seqs)] == seqs[2:]
    assert box.confirmed_through == seqs[1]


def test_only_rows_the_broker_took_are_released_the_others_on_their_acknowledgement(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = _fill(box, 4)
    box.mark_sent(seqs[:2], at=0.0)
    # 2 and 3 never reached the broker as far as this outbox knows: the aggregator cannot
    # have them, unless their acknowledgement was lost on the way back.
    assert box.confirm(3) == 2
    assert [r.seq for r in box.pending(-1, 10)] == [2, 3] and box.confirmed == 2
    assert box.mark_sent([2], at=1.0) == 1  # the acknowledgement, late: it leaves now
    assert (box.depth, box.unconfirmed, box.confirmed) == (1, 0, 3)
    assert [r.seq for r in box.pending(-1, 10)] == [3]


def test_a_stale_lower_stored_through_changes_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = _fill(box, 6)
    box.mark_sent(seqs, at=0.0)
    assert box.confirm(3) == 4
    assert box.confirm(1) == 0 and box.confirm(3) == 0
    assert box.confirmed_through == 3 and box.depth == 2
    # Nor does it make confirmed seqs resendable.
    assert box.resendable(0, 10) == [4, 5]
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert again.confirmed_through == 3 and again.unconfirmed == 2 and again.depth == 2


def test_resendable_rows_are_the_sent_ones_old_enough(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = _fill(box, 6)
    box.mark_sent(seqs[:2], at=5.0)
    box.mark_sent(seqs[2:4], at=9.0)
    assert box.oldest_sent() == 5.0
    assert box.resendable(0, 100) == seqs[:4]
    assert box.resendable(0, 100, sent_before=8.0) == seqs[:2]
    assert box.resendable(1, 2) == [1, 2]
    box.restamp_sent(100.0)
    assert box.oldest_sent() == 100.0 and box.resendable(0, 100, sent_before=99.0) == []


def test_a_drop_is_recorded_as_exact_spans_with_windows_and_times(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=6)
    _put(box, windows=10)                         # 0 dropped
    _put(box, windows=20)                         # 1 dropped
    _put(box, droppable=False, kind="drift")      # 2 kept
    _put(box, windows=30)                         # 3 dropped
    _put(box, windows=40)                         # 4 kept: only three puts go past the bound
    _put(box, windows=50)                         # 5
    box.mark_sent([0, 1, 2], at=0.0)              # sent rows count toward the bound too
    for _ in range(3):
        _put(box, windows=1)                      # 6, 7, 8: each drops the oldest droppable
    assert sorted(r.seq for r in box.rows(range(9))) == [2, 4, 5, 6, 7, 8]
    assert _spans(box) == [(0, 1, "dropped", 30), (3, 3, "dropped", 30)]
    first, second = box.undeliverable()
    assert (first.first_at, first.last_at) == (T0, T0 + timedelta(minutes=1))
    assert second.first_at == second.last_at == T0 + timedelta(minutes=3)
    assert box.dropped == 3 and box.depth == 6 and box.unconfirmed == 1
    assert box.spans_made == 2
    box.close()
    # Written in the drop's own transaction: still there after a restart.
    reopened = Outbox(tmp_path / "o.db", max_rows=6)
    assert [(u.first, u.last, u.windows) for u in reopened.undeliverable()] == [
        (0, 1, 30), (3, 3, 30)]


def test_a_span_once_reported_never_grows(tmp_path: Path) -> None:
    """The aggregator counts a span's windows once; a span that grew after it was told
    would overlap one counted already, and its windows could no longer be split exactly."""
    box = Outbox(tmp_path / "o.db", max_rows=2)
    for _ in range(4):
        _put(box, windows=2)  # 0, 1 dropped
    assert [(u.first, u.last, u.windows) for u in box.undeliverable(tell=True)] == [(0, 1, 4)]
    for _ in range(2):
        _put(box, windows=3)  # 2, 3 dropped: next to 0-1, but in a span of their own
    assert _spans(box) == [(0, 1, "dropped", 4), (2, 3, "dropped", 4)]


def test_rows_on_their_way_to_the_broker_are_never_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=3)
    for _ in range(3):
        _put(box, windows=1)  # 0, 1, 2
    box.hold(0)
    box.hold(1)
    _put(box, windows=1)  # 3: makes room by dropping 2, the oldest not on its way
    assert sorted(r.seq for r in box.rows(range(4))) == [0, 1, 3]
    box.let_go(0)
    _put(box, windows=1)  # 4: 0 is no longer held
    assert sorted(r.seq for r in box.rows(range(5))) == [1, 3, 4]
    assert _spans(box) == [(0, 0, "dropped", 1), (2, 2, "dropped", 1)]


def test_a_full_outbox_says_so_once_and_when_it_has_room_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.outbox")
    box = Outbox(tmp_path / "o.db", max_rows=2)
    for _ in range(50):
        _put(box, windows=1)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and loud[0].startswith("outbox full (2 rows): dropping the oldest")
    box.mark_sent([48, 49], at=0.0)
    box.confirm(48)
    back = [r.getMessage() for r in caplog.records if "room again" in r.getMessage()]
    # The episode's length is wall time, whatever a loaded machine makes it.
    assert len(back) == 1 and re.fullmatch(
        r"outbox has room again \(1 of 2 rows; 48 dropped in all\) after \d+\.\d s, "
        r"48 failures", back[0]), back


def test_drops_one_after_another_extend_one_span(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=3)
    for _ in range(8):
        _put(box, windows=2)
    assert _spans(box) == [(0, 4, "dropped", 10)]
    (span,) = box.undeliverable()
    assert (span.first_at, span.last_at) == (T0, T0 + timedelta(minutes=4))
    assert box.spans_made == 1


def test_a_report_of_losses_is_stored_past_the_bound_without_a_new_loss(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=2)
    _fill(box, 2)
    s = box.allocate_seq()
    box.put(s, "id", "t", "health", b"{}", droppable=False, make_room=False)
    assert box.depth == 3 and box.dropped == 0 and box.undeliverable() == []


def test_spans_the_aggregator_passed_are_forgotten(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=2)
    for _ in range(6):
        _put(box, droppable=False, kind="drift")  # 0-5 kept, over the bound
        _put(box, windows=1)                      # 6, 8, ...: dropped one by one
    before = _spans(box)
    assert [(a, b) for a, b, _, _ in before] == [(1, 1), (3, 3), (5, 5), (7, 7), (9, 9)]
    box.confirm(3)
    assert [(a, b) for a, b, _, _ in _spans(box)] == [(5, 5), (7, 7), (9, 9)]


def test_seqs_asked_for_but_no_longer_held_are_gone(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=100)
    seqs = _fill(box, 12)                 # 0-11
    box.ack([3, 4, 7])                    # released on PUBACK (confirm: broker)
    box.mark_sent([0, 1], at=0.0)
    box.confirm(1)                        # 0-1 stored
    box._db.execute("INSERT INTO undeliverable VALUES (9, 10, 'dropped', 5, NULL, NULL, 0)")
    box._db.execute("DELETE FROM outbox WHERE seq IN (9, 10)")
    # 0-1 confirmed, 2 held, 3-4 gone, 5-6 held, 7 gone, 8 held, 9-10 dropped, 11 held;
    # 12-20 were never written.
    assert box.note_gone(0, 20) == [(3, 4), (7, 7)]
    assert _spans(box) == [(3, 4, "gone", 0), (7, 7, "gone", 0), (9, 10, "dropped", 5)]
    assert box.note_gone(0, 20) == []     # told once
    gone = box.undeliverable()[0]
    assert gone.first_at is None and gone.last_at is None
    assert seqs[-1] == box.last_seq == 11


_OLD_SCHEMA = """
CREATE TABLE outbox (seq INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, topic TEXT NOT NULL,
    kind TEXT NOT NULL, droppable INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_an_outbox_of_the_first_release_opens_and_keeps_working(tmp_path: Path) -> None:
    model = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)
    old = [wire.Envelope.build("gw", seq, model, [
        wire.Prediction(asset="a", window_start=T0, window_end=T0, score=0.1, alert=False)
        for _ in range(seq + 1)]) for seq in range(3)]
    db = sqlite3.connect(tmp_path / "o.db")
    db.executescript(_OLD_SCHEMA)
    db.executemany("INSERT INTO outbox VALUES (?, ?, 't', 'predictions', 1, ?)",
                   [(e.seq, str(e.msg_id), wire.encode(e)) for e in old])
    db.execute("INSERT INTO meta VALUES ('last_seq', 2)")
    db.commit()
    db.close()

    box = Outbox(tmp_path / "o.db", max_rows=3)
    assert box.depth == 3 and box.unconfirmed == 0 and box.confirmed_through == -1
    assert [r.msg_id for r in box.pending(-1, 10)] == [str(e.msg_id) for e in old]
    box.mark_sent([0], at=1.0)
    assert [r.seq for r in box.pending(-1, 10)] == [1, 2]
    # Dropping an old row still says how many windows it held and when it was made, from
    # its payload.
    assert _put(box) == 3
    assert _spans(box) == [(0, 0, "dropped", 1)]
    assert box.undeliverable()[0].first_at == old[0].ts
    box.mark_sent([1, 2, 3], at=2.0)
    assert box.confirm(3) == 3 and box.depth == 0
    box.close()
    columns = {r[1] for r in sqlite3.connect(tmp_path / "o.db").execute(
        "PRAGMA table_info(outbox)")}
    assert {"windows", "ts", "sent_at"} <= columns


def test_outboxes_opened_at_once_on_one_file_all_open(tmp_path: Path) -> None:
    """An agent and a tool reading its depth may open a new file at the same moment: the
    columns added to the first release's table are added once, not twice."""
    import threading

    errors: list[BaseException] = []
    for round_ in range(10):
        start = threading.Barrier(8)

        def open_one(path: Path = tmp_path / f"o{round_}.db",
                     start: threading.Barrier = start) -> None:
            start.wait()
            try:
                Outbox(path).close()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
