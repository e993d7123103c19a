"""Delivery tracking without servers: the seq ledger and hourly spreading (pure), then the
reaction inside the real ingest on the embedded stores (SQLite series + SQLite DB)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aggregator_support import MODEL, data_topic, health_report, predictions, store_settings
from fastapi import HTTPException
from sqlalchemy import select

from aggregator import delivery
from aggregator.api.routes.agents import agent_completeness, list_agents
from aggregator.confirm import Confirmer
from aggregator.db import AgentDelivery, DeliveryHour, SessionFactory, open_engine, open_sessions
from aggregator.delivery import Arrival, Gap, Ledger, apportion, hour_of, spread
from aggregator.ingest import Ingestor, RawMessage
from aggregator.series.sqlite import SqliteSeriesStore
from contract.wire import (
    Delivery,
    Envelope,
    Span,
    Undeliverable,
    command_topic,
    decode_delivery,
    encode,
)

T = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def ledger_of(*seqs: int) -> Ledger:
    ledger = Ledger()
    for seq in seqs:
        ledger.receive(seq, T)
    return ledger


def gaps(ledger: Ledger) -> list[tuple[int, int]]:
    return [(g.first, g.last) for g in ledger.gaps]


# -- the ledger -------------------------------------------------------------------------
def test_seqs_in_order_advance_stored_through() -> None:
    ledger = Ledger()
    arrivals = [ledger.receive(s, T).arrival for s in range(5)]
    assert arrivals == [Arrival.IN_ORDER] * 5
    assert (ledger.stored_through, ledger.top, ledger.highest) == (4, 4, 4)
    assert (ledger.received, ledger.gaps, ledger.outstanding) == ([], [], 0)


def test_an_agent_first_heard_above_zero_has_a_gap_from_zero() -> None:
    ledger = Ledger()
    change = ledger.receive(10, T)
    assert change.arrival is Arrival.GAP and change.opened == Gap(0, 9, T)
    assert (ledger.stored_through, ledger.received, ledger.outstanding) == (-1, [(10, 10)], 10)


def test_a_gap_then_a_reorder_then_the_fill() -> None:
    ledger = Ledger()
    ledger.receive(0, T)
    assert ledger.receive(7, T).opened == Gap(1, 6, T)
    change = ledger.receive(2, T + S)
    assert (change.arrival, change.filled) == (Arrival.REORDER, ())
    assert gaps(ledger) == [(1, 1), (3, 6)] and ledger.outstanding == 5
    # The hole keeps the time the gap opened, whatever splits it.
    assert {g.since for g in ledger.gaps} == {T}
    assert ledger.receive(1, T + S).filled == (Gap(1, 1, T),)
    assert (ledger.stored_through, ledger.received) == (2, [(7, 7)])
    for seq in (3, 5, 4):
        ledger.receive(seq, T + S)
    assert ledger.receive(6, T + S).filled == (Gap(6, 6, T),)
    assert (ledger.stored_through, ledger.received, ledger.gaps) == (7, [], [])


def test_received_ranges_merge_into_a_compact_list() -> None:
    ledger = ledger_of(0, 5, 7, 9, 6, 8, 12, 11)
    assert ledger.received == [(5, 9), (11, 12)]
    assert gaps(ledger) == [(1, 4), (10, 10)]
    ledger.receive(10, T)
    assert ledger.received == [(5, 12)]


def test_a_seq_already_accounted_for_is_a_duplicate() -> None:
    ledger = Ledger()
    for seq in (0, 1, 5):
        ledger.receive(seq, T, T + seq * S)
    before = (ledger.stored_through, ledger.top, list(ledger.received), list(ledger.gaps))
    # Sent again with its original time: stored, and above stored_through.
    assert ledger.receive(1, T, T + S).arrival is Arrival.DUPLICATE
    assert ledger.receive(5, T, T + 5 * S).arrival is Arrival.DUPLICATE
    assert (ledger.stored_through, ledger.top, ledger.received, ledger.gaps) == before


def test_a_stored_seq_newer_than_anything_the_agent_sent_restarts_tracking() -> None:
    ledger = Ledger()
    for seq in range(10):
        ledger.receive(seq, T, T + seq * S)
    ledger.receive(15, T, T + 15 * S)
    assert ledger.receive(0, T, T + 60 * S).arrival is Arrival.RESET
    assert (ledger.stored_through, ledger.top, ledger.highest) == (0, 0, 0)
    assert (ledger.received, ledger.gaps) == ([], [])
    assert ledger.receive(1, T, T + 61 * S).arrival is Arrival.IN_ORDER
    assert ledger.stored_through == 1


def test_without_a_known_time_a_stored_seq_is_a_duplicate() -> None:
    """An upgraded database starts agents at their last seq, with no time: a late message
    below it is no proof of a new outbox."""
    ledger = Ledger(stored_through=41, top=41, highest=41)
    assert ledger.receive(40, T, T).arrival is Arrival.DUPLICATE
    assert ledger.receive(42, T, T).arrival is Arrival.IN_ORDER
    assert ledger.receive(40, T, T + S).arrival is Arrival.RESET


def test_undeliverable_seqs_count_only_where_nothing_was_received() -> None:
    ledger = ledger_of(0, 3, 6)
    assert gaps(ledger) == [(1, 2), (4, 5)]
    change = ledger.account(1, 6, T + S)
    assert change.seqs == 4  # 1, 2, 4, 5: 3 and 6 were received
    assert change.filled == (Gap(1, 2, T), Gap(4, 5, T))
    assert (ledger.stored_through, ledger.gaps, ledger.received) == (6, [], [])
    assert ledger.account(1, 6, T + S).seqs == 0  # reported again: counted once


def test_undeliverable_seqs_above_everything_received_move_the_top() -> None:
    ledger = ledger_of(0)
    change = ledger.account(3, 5, T + S)
    assert (change.seqs, change.opened) == (3, Gap(1, 2, T + S))
    assert (ledger.stored_through, ledger.top, ledger.highest) == (0, 5, 0)
    ledger.receive(1, T)
    ledger.receive(2, T)
    assert ledger.stored_through == 5
    assert ledger.receive(6, T).arrival is Arrival.IN_ORDER


def test_undeliverable_seqs_inside_a_hole_split_it() -> None:
    ledger = ledger_of(0, 10)
    assert ledger.account(3, 5, T).seqs == 3
    assert gaps(ledger) == [(1, 2), (6, 9)] and ledger.outstanding == 6
    assert ledger.account(0, 2, T).seqs == 2  # 0 was stored already
    assert (ledger.stored_through, gaps(ledger)) == (5, [(6, 9)])


def test_undeliverable_seqs_below_stored_through_change_nothing() -> None:
    ledger = ledger_of(0, 1, 2, 3)
    assert ledger.account(0, 3, T).seqs == 0
    assert (ledger.stored_through, ledger.top) == (3, 3)


def test_missing_holds_only_gaps_older_than_the_grace() -> None:
    ledger = ledger_of(0, 4)
    ledger.receive(9, T + 3 * S)
    assert ledger.missing(T + 4 * S, 5, limit=10) == []
    assert ledger.next_due(T + 4 * S, 5) == T + 5 * S
    assert ledger.missing(T + 5 * S, 5, limit=10) == [Gap(1, 3, T)]
    assert ledger.next_due(T + 5 * S, 5) == T + 8 * S
    assert ledger.missing(T + 8 * S, 5, limit=10) == [Gap(1, 3, T), Gap(5, 8, T + 3 * S)]
    assert ledger.missing(T + 8 * S, 5, limit=1) == [Gap(1, 3, T)]
    assert ledger.next_due(T + 8 * S, 5) is None


def test_the_ledger_round_trips_through_json() -> None:
    ledger = ledger_of(0, 5, 6, 9)
    ledger.latest_sent = T
    again = Ledger.from_json(ledger.to_json(), stored_through=ledger.stored_through,
                             top=ledger.top, highest=ledger.highest, latest_sent=T)
    assert again == ledger


def test_too_many_gaps_give_up_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "MAX_GAPS", 3)
    ledger = ledger_of(0, 2, 4, 6)
    assert gaps(ledger) == [(1, 1), (3, 3), (5, 5)]
    change = ledger.receive(8, T)
    assert change.given_up == (Gap(1, 1, T),)
    assert (ledger.stored_through, gaps(ledger)) == (2, [(3, 3), (5, 5), (7, 7)])


# -- hours ------------------------------------------------------------------------------
def test_windows_spread_evenly_over_the_hours_without_loss() -> None:
    first = T + timedelta(minutes=50)
    assert spread(10, first, first) == {T: 10}
    assert spread(10, first, first + timedelta(hours=3)) == {
        T: 3, T + timedelta(hours=1): 3, T + timedelta(hours=2): 2, T + timedelta(hours=3): 2,
    }
    assert spread(2, first + timedelta(hours=3), first) == {  # order of the ends is free
        T: 1, T + timedelta(hours=1): 1,
    }
    assert spread(0, first, first) == {}


def test_a_wild_span_is_spread_over_a_bounded_number_of_buckets() -> None:
    buckets = spread(10**6, T, T + timedelta(days=3650))
    assert len(buckets) <= delivery.MAX_SPREAD_HOURS
    assert sum(buckets.values()) == 10**6
    assert min(buckets) == T and max(buckets) <= T + timedelta(days=3650)


def test_windows_of_part_of_a_span() -> None:
    assert [apportion(12, n, 4) for n in (0, 1, 3, 4)] == [0, 3, 9, 12]
    assert hour_of(datetime(2026, 3, 1, 9, 30, tzinfo=UTC) + timedelta()) == T + timedelta(hours=1)


# -- in the ingest ----------------------------------------------------------------------
AGENT = "gw-9"
NOW_HOUR = hour_of(datetime.now(UTC)) - timedelta(hours=2)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[SessionFactory]:
    engine = open_engine(f"sqlite:///{tmp_path}/linewatch.db")
    yield open_sessions(engine)
    engine.dispose()


@pytest.fixture
def ingestor(tmp_path: Path, sessions: SessionFactory) -> Iterator[Ingestor]:
    series = SqliteSeriesStore(tmp_path / "series.db")
    yield Ingestor(series, sessions, store_settings(tmp_path))
    series.close()


def message(seq: int, items: list[Any], *, ts: datetime | None = None,
            kind: str = "predictions") -> RawMessage:
    env = Envelope(schema=1, msg_id=uuid.uuid4(), agent=AGENT, ts=ts or NOW_HOUR + seq * S,
                   seq=seq, model=MODEL, items=items)
    return RawMessage(data_topic(AGENT, kind), encode(env))


def windows(seq: int, n: int = 3) -> RawMessage:
    return message(seq, predictions("pump-1", [0.1] * n, start=seq * n))


def state(sessions: SessionFactory) -> AgentDelivery:
    with sessions() as session:
        row = session.get(AgentDelivery, AGENT)
        assert row is not None
        return row


def hours(sessions: SessionFactory) -> list[tuple[datetime, int, int]]:
    with sessions() as session:
        return [(h.hour, h.windows_received, h.windows_undeliverable)
                for h in session.scalars(select(DeliveryHour).order_by(DeliveryHour.hour))]


def test_a_gap_and_a_reorder_are_counted_and_the_fill_advances(
    ingestor: Ingestor, sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "aggregator.reactions.delivery")
    ingestor.handle_batch([windows(0)])
    ingestor.handle_batch([windows(7)])
    ingestor.handle_batch([windows(2)])
    row = state(sessions)
    assert (row.stored_through, row.highest_seq, row.outstanding) == (0, 7, 5)
    assert (row.gaps_opened, row.reorders, row.duplicates, row.messages) == (1, 1, 0, 3)
    assert row.ranges["received"] == [[2, 2], [7, 7]]
    ours = [r for r in caplog.records if r.name == "aggregator.reactions.delivery"]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert warnings == [
        "agent gw-9: messages 1..6 missing (received 7 after 0); asking for them if still "
        "missing in 5 s"
    ]
    assert [r.getMessage() for r in ours if r.levelno == logging.INFO] == [
        "agent gw-9: message 2 arrived after 7 (out of order)"
    ]

    ingestor.handle_batch([windows(s) for s in (1, 3, 4, 5, 6)])
    row = state(sessions)
    assert (row.stored_through, row.outstanding, row.ranges) == (
        7, 0, {"received": [], "gaps": []})
    assert (row.messages, row.windows, row.gaps_opened, row.reorders) == (8, 24, 1, 6)
    assert hours(sessions) == [(NOW_HOUR, 24, 0)]


def test_undeliverable_messages_lower_completeness_by_their_windows(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    ingestor.handle_batch([windows(0, 4), windows(1, 4)])
    dropped = Undeliverable(first=2, last=4, reason="dropped", windows=12,
                            first_at=NOW_HOUR + 2 * S, last_at=NOW_HOUR + 4 * S)
    report = health_report(0, 8, undeliverable=[dropped])
    ingestor.handle_batch([message(5, [report], kind="health")])
    ingestor.handle_batch([message(6, [report], kind="health")])  # reported again
    row = state(sessions)
    assert (row.stored_through, row.outstanding) == (6, 0)
    assert (row.dropped_messages, row.dropped_windows, row.gone_messages) == (3, 12, 0)
    assert hours(sessions) == [(NOW_HOUR, 8, 12)]

    with sessions() as session:
        out = agent_completeness(AGENT, session, since=NOW_HOUR, until=NOW_HOUR + S, limit=10)
        (listed,) = [a for a in list_agents(session, ingestor.series) if a.agent == AGENT]
    assert (out.windows_received, out.windows_undeliverable) == (8, 12)
    assert out.completeness == pytest.approx(40.0)
    assert [(h.hour, h.completeness) for h in out.hours] == [(NOW_HOUR, pytest.approx(40.0))]
    assert listed.delivery is not None
    assert listed.delivery.completeness_24h == pytest.approx(40.0)
    assert (listed.delivery.stored_through, listed.delivery.dropped_windows) == (6, 12)


def test_outstanding_messages_are_reported_apart_from_loss(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    ingestor.handle_batch([windows(0), windows(4)])
    with sessions() as session:
        out = agent_completeness(AGENT, session, since=None, until=None, limit=10)
    assert (out.outstanding_messages, out.windows_undeliverable) == (3, 0)
    assert out.completeness == 100.0
    with sessions() as session, pytest.raises(HTTPException) as refused:
        agent_completeness("gw-unknown", session, since=None, until=None, limit=10)
    assert refused.value.status_code == 404


def test_spans_overlapping_received_messages_count_only_the_rest(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    ingestor.handle_batch([windows(0), windows(2)])
    gone = Undeliverable(first=1, last=4, reason="gone", windows=8)  # 2 was received
    ingestor.handle_batch([message(5, [health_report(0, 8, undeliverable=[gone])],
                                   kind="health")])
    row = state(sessions)
    assert (row.stored_through, row.gone_messages, row.gone_windows) == (5, 3, 6)
    # No times in the span: the windows count in the hour of the report.
    assert hours(sessions) == [(NOW_HOUR, 6, 6)]


def test_a_new_outbox_restarts_tracking_and_old_copies_are_duplicates(
    ingestor: Ingestor, sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ingestor.handle_batch([windows(s) for s in range(5)])
    # The same seq under a new msg_id, made back then: a copy sent again.
    ingestor.handle_batch([message(3, predictions("pump-1", [0.1]), ts=NOW_HOUR + 3 * S)])
    row = state(sessions)
    assert (row.duplicates, row.resets, row.messages, row.windows) == (1, 0, 5, 15)

    caplog.set_level(logging.DEBUG, "aggregator.reactions.delivery")
    later = NOW_HOUR + timedelta(minutes=30)
    ingestor.handle_batch([message(0, predictions("pump-1", [0.1]), ts=later)])
    ingestor.handle_batch([message(0, predictions("pump-1", [0.1]), ts=later + S)])
    ingestor.handle_batch([message(1, predictions("pump-1", [0.1]), ts=later + 2 * S)])
    row = state(sessions)
    assert (row.resets, row.stored_through, row.outstanding, row.messages) == (2, 1, 0, 8)
    loud = [r for r in caplog.records
            if r.name == "aggregator.reactions.delivery" and r.levelno >= logging.WARNING]
    assert len(loud) == 1 and "outbox was replaced" in loud[0].getMessage()


# -- confirmations ----------------------------------------------------------------------
class FakeClient:
    """What the confirmer uses of paho's client: connected, and publish (kept)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Delivery, int, bool]] = []

    def is_connected(self) -> bool:
        return True

    def publish(self, topic: str, raw: bytes, qos: int, retain: bool) -> Any:
        self.published.append((topic, decode_delivery(raw), qos, retain))
        return mock.Mock(rc=0)

    def take(self) -> list[Delivery]:
        out = [d for _t, d, _q, _r in self.published]
        self.published.clear()
        return out


@pytest.fixture
def clock() -> list[float]:
    return [100.0]


@pytest.fixture
def confirmer(
    tmp_path: Path, sessions: SessionFactory, clock: list[float]
) -> tuple[Confirmer, FakeClient]:
    client = FakeClient()
    settings = store_settings(tmp_path, delivery_gap_grace_s=0, delivery_republish_s=30)
    return Confirmer(settings, sessions, client, clock=lambda: clock[0],
                     autostart=False), client


def test_confirmations_are_coalesced_but_the_latest_state_is_always_sent(
    ingestor: Ingestor, confirmer: tuple[Confirmer, FakeClient], clock: list[float]
) -> None:
    confirm, client = confirmer
    topic = data_topic(AGENT)
    ingestor.handle_batch([windows(0)])
    confirm.stored([topic])
    confirm.run_due()
    (first,) = client.published
    assert first[0] == command_topic("plant1", "line3", AGENT, "delivery")
    assert (first[1].stored_through, first[2], first[3]) == (0, 1, True)
    client.take()

    for seq, at in ((1, 100.1), (2, 100.3)):
        ingestor.handle_batch([windows(seq)])
        clock[0] = at
        confirm.stored([topic])
        assert confirm.run_due() == pytest.approx(100.5 - at)
        assert client.take() == []
    clock[0] = 100.5
    confirm.run_due()
    assert [d.stored_through for d in client.take()] == [2]
    clock[0] = 200.0
    confirm.run_due()
    assert client.take() == []  # nothing changed, no gap: nothing to repeat


def test_gaps_are_asked_for_and_asked_again_until_filled(
    ingestor: Ingestor, confirmer: tuple[Confirmer, FakeClient], clock: list[float]
) -> None:
    confirm, client = confirmer
    ingestor.handle_batch([windows(0), windows(4)])
    confirm.stored([data_topic(AGENT), data_topic("gw-other", "status")])
    confirm.run_due()
    (asked,) = client.take()
    assert (asked.stored_through, asked.missing) == (0, [Span(first=1, last=3)])
    clock[0] += 29
    confirm.run_due()
    assert client.take() == []
    clock[0] += 1
    confirm.run_due()
    assert [(d.stored_through, d.missing) for d in client.take()] == [
        (0, [Span(first=1, last=3)])
    ]
    ingestor.handle_batch([windows(s) for s in (1, 2, 3)])
    confirm.stored([data_topic(AGENT)])
    clock[0] += 1
    confirm.run_due()
    assert [(d.stored_through, d.missing) for d in client.take()] == [(4, [])]
    clock[0] += 60
    confirm.run_due()
    assert client.take() == []


def test_a_lost_session_asks_every_known_agent_to_resend(
    ingestor: Ingestor, sessions: SessionFactory, confirmer: tuple[Confirmer, FakeClient]
) -> None:
    confirm, client = confirmer
    ingestor.handle_batch([windows(0), windows(3)])
    confirm.connected(session_present=True)
    confirm.run_due()  # a kept session: only agents with gaps hear again
    assert [(d.stored_through, d.resend) for d in client.take()] == [(0, None)]

    confirm.connected(session_present=False)
    confirm.run_due()
    (delivery,) = client.take()
    assert delivery.resend is not None and delivery.stored_through == 0
    assert (state(sessions).resend_requests, state(sessions).resend_id) == (1, delivery.resend)
    assert confirm.counts.resend_rounds == 1
    # The id stays in every later delivery until the next lost session.
    ingestor.handle_batch([windows(1)])
    confirm.stored([data_topic(AGENT)])
    confirm.connected(session_present=True)
    confirm.run_due()
    assert [d.resend for d in client.take()] == [delivery.resend]
