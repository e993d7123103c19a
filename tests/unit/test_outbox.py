from __future__ import annotations

from pathlib import Path

import pytest

from agent.outbox import Outbox


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
