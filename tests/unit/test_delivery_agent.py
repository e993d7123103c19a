"""The agent's side of end-to-end acknowledgement, without a broker: how a Delivery from the
aggregator is applied to the outbox, which rows go again and when (issue #9)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import config as agent_config
from agent.delivery import PING_PONG_S, Confirmation, Tracker
from agent.outbox import Outbox
from agent.pipeline import _Batcher
from contract import wire

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)
CONFIRMATION = Confirmation(site="s", line="l", agent="gw", timeout_s=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def delivery(stored_through: int, missing: tuple[tuple[int, int], ...] = (),
             resend: str | None = None) -> wire.Delivery:
    return wire.Delivery(schema_=wire.SCHEMA, agent="gw", ts=T0, stored_through=stored_through,
                         missing=[wire.Span(first=a, last=b) for a, b in missing],
                         resend=resend)


def sent_outbox(tmp_path: Path, n: int, clock: Clock) -> Outbox:
    """An outbox of ``n`` rows the broker acknowledged at ``clock.now``."""
    box = Outbox(tmp_path / "o.db")
    for _ in range(n):
        s = box.allocate_seq()
        box.put(s, f"id-{s}", "t", "predictions", b"{}", droppable=True, windows=1)
    box.mark_sent(range(n), at=clock())
    return box


def test_the_topics_are_the_agents_own() -> None:
    assert CONFIRMATION.subscription == "linewatch/v1/s/l/gw/cmd/#"
    assert CONFIRMATION.topic == "linewatch/v1/s/l/gw/cmd/delivery"


def test_a_delivery_releases_what_it_confirms_and_nothing_else(tmp_path: Path) -> None:
    clock = Clock()
    box = sent_outbox(tmp_path, 10, clock)
    tracker = Tracker(box, CONFIRMATION, clock=clock)
    assert tracker.apply(delivery(-1)) == [] and box.depth == 10
    assert tracker.apply(delivery(5)) == []
    assert box.depth == 4 and tracker.confirmed == 6
    assert tracker.apply(delivery(2)) == [] and box.depth == 4  # stale: nothing comes back


def test_a_delivery_about_seqs_this_outbox_never_wrote_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A retained Delivery about an outbox that was replaced (a new gateway, a wiped
    state directory) must not release the new outbox's rows."""
    clock = Clock()
    box = sent_outbox(tmp_path, 3, clock)
    tracker = Tracker(box, CONFIRMATION, clock=clock)
    assert tracker.apply(delivery(500, missing=((501, 510),), resend="old")) == []
    assert box.depth == 3 and box.confirmed_through == -1 and box.resend_id is None
    assert box.undeliverable() == []
    assert "this outbox has written only up to seq 2" in caplog.text
    assert tracker.apply(delivery(1)) == [] and box.depth == 1


def test_a_missing_span_resends_exactly_its_held_rows_once_per_request(tmp_path: Path) -> None:
    clock = Clock()
    box = sent_outbox(tmp_path, 10, clock)
    tracker = Tracker(box, CONFIRMATION, clock=clock)
    # Just acknowledged by the broker: the aggregator may not have stored them yet.
    assert tracker.apply(delivery(2, missing=((4, 5), (8, 8)))) == []
    clock.now += PING_PONG_S
    assert tracker.apply(delivery(2, missing=((4, 5), (8, 8)))) == [4, 5, 8]
    # Asked again at once: they were just scheduled, no ping-pong.
    assert tracker.apply(delivery(2, missing=((4, 5), (8, 8)))) == []
    clock.now += PING_PONG_S
    # Rows already on their way are not picked twice.
    assert tracker.apply(delivery(2, missing=((4, 5), (8, 8))), busy={5}) == [4, 8]
    assert tracker.resent == 5


def test_a_gap_asked_for_while_its_rows_had_just_gone_is_sent_when_the_guard_ends(
    tmp_path: Path
) -> None:
    """A restarted agent restamps every sent row, so the aggregator's first request for a
    gap may come inside the guard; the agent keeps it, instead of waiting for the
    aggregator to ask again (every delivery_republish_s, 30 s by default)."""
    clock = Clock()
    box = sent_outbox(tmp_path, 10, clock)
    tracker = Tracker(box, CONFIRMATION, clock=clock)
    assert tracker.apply(delivery(2, missing=((4, 5),))) == []
    assert tracker.next_due_s == pytest.approx(PING_PONG_S)
    clock.now += PING_PONG_S / 2
    assert tracker.due() == []
    clock.now += PING_PONG_S / 2
    assert tracker.next_due_s == 0
    assert tracker.due() == [4, 5]
    assert tracker.due() == [] and tracker.resent == 2
    # Asked again at once, then confirmed: nothing goes for a request no longer needed.
    assert tracker.apply(delivery(2, missing=((4, 5),))) == []
    tracker.apply(delivery(9))
    clock.now += PING_PONG_S
    assert tracker.due() == [] and tracker.resent == 2


def test_rows_on_their_way_are_not_timed_out_again(tmp_path: Path) -> None:
    clock = Clock()
    box = sent_outbox(tmp_path, 3, clock)
    tracker = Tracker(box, CONFIRMATION, clock=clock)
    clock.now += 60
    assert tracker.due(busy={0, 1, 2}) == [] and tracker.timeout_s == 60
    assert tracker.due(busy={1}) == [0, 2] and tracker.timeout_s == 120
    assert box.undeliverable() == []  # every seq asked for is held


def test_seqs_asked_for_that_are_no_longer_held_are_reported_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    box = sent_outbox(tmp_path, 10, clock)
    box.ack([6, 7])  # what an older release did on PUBACK
    tracker = Tracker(box, CONFIRMATION, clock=clock)
    clock.now += PING_PONG_S
    assert tracker.apply(delivery(3, missing=((5, 8),))) == [5, 8]
    assert [(u.first, u.last, u.reason, u.windows) for u in box.undeliverable()] == [
        (6, 7, "gone", 0)]
    assert box.spans_made == 1
    assert "no longer holds (seq 6-7)" in caplog.text


def test_each_new_resend_id_resends_everything_held_above_stored_through_once(
    tmp_path: Path,
) -> None:
    clock = Clock()
    box = sent_outbox(tmp_path, 8, clock)
    tracker = Tracker(box, CONFIRMATION, clock=clock)
    # Even rows sent a moment ago: the broker may have lost them all.
    assert tracker.apply(delivery(2, resend="r1")) == [3, 4, 5, 6, 7]
    assert tracker.apply(delivery(2, resend="r1")) == []
    assert tracker.apply(delivery(4, resend="r2"), busy={6}) == [5, 7]
    box.close()
    # Carried out before a restart: not again after it.
    again = Tracker(Outbox(tmp_path / "o.db"), CONFIRMATION, clock=clock)
    assert again.apply(delivery(4, resend="r2")) == []


def test_unconfirmed_rows_go_again_after_the_timeout_which_backs_off_until_one_is_confirmed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.delivery")
    clock = Clock()
    box = sent_outbox(tmp_path, 4, clock)
    tracker = Tracker(box, Confirmation(site="s", line="l", agent="gw", timeout_s=60,
                                        max_timeout_s=300), broker="b:1883", clock=clock)
    clock.now += 59.9
    assert tracker.due() == [] and tracker.next_due_s == pytest.approx(0.1)
    clock.now += 0.1
    assert tracker.due() == [0, 1, 2, 3]
    # Nothing was confirmed: each round waits twice as long as the last, up to the cap.
    waits = [tracker.timeout_s]
    for _ in range(4):
        assert tracker.due() == []
        clock.now += tracker.next_due_s
        assert tracker.due() == [0, 1, 2, 3]
        waits.append(tracker.timeout_s)
    assert waits == [120, 240, 300, 300, 300]
    # A confirmation that advances brings it back to the base.
    assert tracker.apply(delivery(1)) == [] and tracker.timeout_s == 60
    clock.now += 60
    assert tracker.due() == [2, 3]
    assert tracker.timeout_s == 60  # something was confirmed since the last round
    clock.now += 60
    assert tracker.due() == [2, 3] and tracker.timeout_s == 120

    told = [r for r in caplog.records if "not confirmed by the aggregator" in r.getMessage()]
    assert told[0].getMessage() == ("4 messages handed to broker b:1883 but not confirmed by "
                                    "the aggregator for 60 s; resending")
    # Loud once, then quiet; loud again only as FailureLog's summary every 5 min.
    assert [r.levelno for r in told[:2]] == [logging.WARNING, logging.DEBUG]
    assert all(r.getMessage().startswith("still failing after")
               for r in told[2:] if r.levelno == logging.WARNING)
    back = [r for r in caplog.records if "confirms messages again" in r.getMessage()]
    assert [r.levelno for r in back] == [logging.INFO]
    first = [r for r in caplog.records if "the aggregator confirms delivery" in r.getMessage()]
    assert len(first) == 1


def test_a_health_report_that_tells_of_losses_is_never_dropped(tmp_path: Path) -> None:
    cfg = agent_config.parse({
        "agent": {"id": "gw", "site": "s", "line": "l"}, "model": {"dir": "unused"},
        "source": {"type": "replay", "path": "unused"}, "outbox": {"max_rows": 100},
    })
    box = Outbox(tmp_path / "o.db", max_rows=100)
    batcher = _Batcher(cfg, box, MODEL, notify=lambda: None)
    lost = wire.Undeliverable(first=0, last=3, reason="dropped", windows=7)
    plain = wire.Health(at=T0, windows_scored=1, outbox_depth=0)
    batcher.add("health", [plain])
    batcher.flush()
    batcher.add("health", [plain.model_copy(update={"undeliverable": [lost]})])
    batcher.flush()
    batcher.add("predictions", [wire.Prediction(
        asset="a", window_start=T0, window_end=T0 + timedelta(minutes=i), score=0.1,
        alert=False) for i in range(3)])
    batcher.flush()
    rows = box._db.execute("SELECT kind, droppable, windows, ts FROM outbox ORDER BY seq")
    (h1, h2, p) = rows.fetchall()
    assert (h1[:3], h2[:3], p[:3]) == (("health", 1, 0), ("health", 0, 0), ("predictions", 1, 3))
    assert datetime.fromisoformat(p[3]) == wire.decode(box.rows([2])[0].payload).ts


def test_a_new_loss_brings_the_next_health_report_forward(tmp_path: Path) -> None:
    from agent_support import agent_cfg

    from agent.pipeline import Agent

    cfg = agent_cfg(tmp_path, "mqtt://127.0.0.1:1").model_dump(mode="json")
    cfg["publish"].update(flush_interval_s=60, health_interval_s=3600)
    cfg["outbox"]["max_rows"] = 100
    agent = Agent(agent_config.parse(cfg))
    try:
        health: list[wire.Item] = agent.batcher._items["health"]
        agent._last_health -= 61  # a flush interval ago, far from a health interval
        agent._health()
        assert health == []  # nothing new to tell
        for _ in range(101):
            s = agent.outbox.allocate_seq()
            agent.outbox.put(s, f"id-{s}", "t", "predictions", b"{}", droppable=True, windows=2)
        agent._health()
        (report,) = health
        assert isinstance(report, wire.Health) and report.undeliverable is not None
        assert [(u.first, u.last, u.windows) for u in report.undeliverable] == [(0, 0, 2)]
        agent._health()  # told already, and not a flush interval later
        assert len(health) == 1
    finally:
        agent.outbox.close()
