"""Triage through the real ingestor on SQLite: which ticket an alert or a condition becomes.

Conditions are built the way agents report them (``DriftEvent`` with ``state``, ``since``,
``channels``); predictions are consecutive one-minute windows from ``T0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aggregator_support import MODEL, T0, data_topic, payload, predictions, store_settings
from sqlalchemy import select

from aggregator import tickets
from aggregator.db import AssetCondition, SessionFactory, Ticket, open_engine, open_sessions
from aggregator.ingest import Ingestor, RawMessage
from aggregator.series.sqlite import SqliteSeriesStore
from contract.wire import DriftEvent, Range

AGENT = "gw-7"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[SessionFactory]:
    engine = open_engine(f"sqlite:///{tmp_path}/linewatch.db")
    yield open_sessions(engine)
    engine.dispose()


@pytest.fixture
def ingestor(tmp_path: Path, sessions: SessionFactory) -> Iterator[Ingestor]:
    series = SqliteSeriesStore(tmp_path / "series.db")
    yield Ingestor(series, sessions, store_settings(tmp_path, rule_k=2, rule_n=3,
                                                    retraining_min_assets=3))
    series.close()


class Feed:
    """Sends predictions and conditions through the ingestor, with increasing seqs."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor, self.seq = ingestor, 0

    def _send(self, kind: str, items: list[Any]) -> None:
        self.seq += 1
        outcome = self.ingestor.handle(data_topic(AGENT, kind), payload(AGENT, self.seq, items))
        assert outcome.status == "accepted", outcome

    def scores(self, asset: str, scores: list[float], start: int = 0) -> None:
        self._send("predictions", predictions(asset, scores, start=start))

    def condition(self, asset: str, monitor: str, detector: str, channels: list[str], *,
                  minute: int, since: int | None = None, state: str = "start") -> None:
        self._send("drift", [_event(asset, monitor, detector, channels, minute, since, state)])

    def outside(self, asset: str, channels: list[str], *, minute: int, since: int) -> None:
        """The asset's features of these channels leave the envelope in one window, as an
        agent reports them: one message."""
        self._send("drift", [_event(asset, f"{c}.mean", "envelope", [c], minute, since, "start")
                             for c in channels])


def _event(asset: str, monitor: str, detector: str, channels: list[str], minute: int,
           since: int | None, state: str) -> DriftEvent:
    return DriftEvent(
        asset=asset, at=T0 + timedelta(minutes=minute), monitor=monitor, detector=detector,
        value=3.0, detail=f"{monitor} {detector}", state=state,  # type: ignore[arg-type]
        signal="feature" if detector == "envelope" else "channel", channels=channels,
        since=T0 + timedelta(minutes=minute if since is None else since),
        reference=Range(low=0.0, high=1.0, mean=0.5), current=2.0, threshold=2.0)


@pytest.fixture
def feed(ingestor: Ingestor) -> Feed:
    return Feed(ingestor)


def all_tickets(sessions: SessionFactory) -> list[Ticket]:
    with sessions() as session:
        return list(session.scalars(select(Ticket).order_by(Ticket.id)))


def live(sessions: SessionFactory) -> list[tuple[str, str]]:
    return [(t.kind, t.asset) for t in all_tickets(sessions) if t.status != "resolved"]


def test_a_step_on_one_channel_opens_a_sensor_ticket(feed: Feed, sessions: SessionFactory) -> None:
    feed.condition("pump-1", "s11", "step", ["s11"], minute=5, since=1)
    (ticket,) = all_tickets(sessions)
    assert (ticket.kind, ticket.asset, ticket.evidence["channels"]) == ("sensor", "pump-1", ["s11"])
    assert ticket.evidence["since"] == (T0 + timedelta(minutes=1)).isoformat()
    assert "check the sensor s11" in ticket.evidence["action"]


def test_a_sensor_fault_does_not_become_a_maintenance_ticket(
    feed: Feed, sessions: SessionFactory
) -> None:
    feed.condition("pump-1", "s11", "step", ["s11"], minute=5, since=1)
    feed.scores("pump-1", [0.9, 0.9, 0.9], start=6)  # the offset makes the model alert
    assert live(sessions) == [("sensor", "pump-1")]
    (sensor,) = all_tickets(sessions)
    assert [s["score"] for s in sensor.evidence["untrusted_risk"]["scores"]] == [0.9] * 3


def test_a_maintenance_ticket_the_sensor_fault_caused_becomes_the_sensor_ticket(
    feed: Feed, sessions: SessionFactory
) -> None:
    feed.scores("pump-1", [0.9, 0.9, 0.9], start=3)  # alerts reach the aggregator first
    (opened,) = all_tickets(sessions)
    assert opened.kind == "maintenance"
    feed.condition("pump-1", "s11", "step", ["s11"], minute=8, since=2)  # began before them
    (ticket,) = all_tickets(sessions)
    assert (ticket.id, ticket.kind, ticket.status) == (opened.id, "sensor", "open")
    assert ticket.evidence["reclassified_from"]["kind"] == "maintenance"


def test_alerts_that_began_before_the_fault_keep_their_maintenance_ticket(
    feed: Feed, sessions: SessionFactory
) -> None:
    feed.scores("pump-1", [0.9, 0.9, 0.9], start=0)
    feed.condition("pump-1", "s11", "step", ["s11"], minute=8, since=5)
    assert sorted(live(sessions)) == [("maintenance", "pump-1"), ("sensor", "pump-1")]


def test_many_channels_out_of_the_envelope_make_an_inspect_ticket(
    feed: Feed, sessions: SessionFactory
) -> None:
    feed.scores("other-1", [0.1])  # the site knows more assets than this one
    feed.scores("other-2", [0.1])
    feed.scores("other-3", [0.1])
    for ch in ("s7", "s12", "s20"):
        feed.condition("pump-1", f"{ch}.mean", "envelope", [ch], minute=4, since=2)
    assert live(sessions) == [("inspect", "pump-1")]
    (ticket,) = [t for t in all_tickets(sessions) if t.kind == "inspect"]
    assert ticket.evidence["verdict"] == "foreign"
    assert sorted(ticket.evidence["channels"]) == ["s12", "s20", "s7"]


def test_one_channel_leaving_the_range_is_a_sensor_until_more_follow(
    feed: Feed, sessions: SessionFactory
) -> None:
    for asset in ("other-1", "other-2", "other-3"):
        feed.scores(asset, [0.1])
    feed.condition("pump-1", "s7.mean", "envelope", ["s7"], minute=4, since=2)
    assert live(sessions) == [("sensor", "pump-1")]
    first = all_tickets(sessions)[0]
    for ch in ("s12", "s20"):
        feed.condition("pump-1", f"{ch}.mean", "envelope", [ch], minute=9, since=6)
    (ticket,) = [t for t in all_tickets(sessions) if t.status != "resolved"]
    assert (ticket.id, ticket.kind) == (first.id, "inspect")


def test_a_site_wide_shift_is_one_retraining_ticket_not_an_inspect_ticket_per_asset(
    feed: Feed, sessions: SessionFactory
) -> None:
    assets = [f"engine-{i}" for i in range(4)]
    for asset in assets:  # the model alerts everywhere: maintenance tickets at first
        feed.scores(asset, [0.9, 0.9, 0.9], start=3)
    assert [k for k, _ in live(sessions)] == ["maintenance"] * 4
    for i, asset in enumerate(assets):  # the inputs left the envelope before the alerts
        feed.outside(asset, ["s2", "s3", "s4"], minute=6 + i, since=2)
    kinds = live(sessions)
    assert [k for k, _ in kinds] == ["retraining"], kinds
    (retraining,) = [t for t in all_tickets(sessions) if t.kind == "retraining"]
    ev = retraining.evidence
    assert retraining.asset == f"model:{MODEL.name}@{MODEL.version}"
    assert ev["assets"] == assets and ev["assets_moved"] == 4
    assert ev["blind"] == {"assets": 4, "scoring_healthy": 0, "alerting_not_trusted": 4}
    assert {s["signal"] for s in ev["signals"]} == {"s2.mean", "s3.mean", "s4.mean"}
    assert ev["p_value"] < 0.01 and ev["retrain_on"]["assets"] == assets
    # The first assets' tickets (inspect while they were few) were closed, pointing there.
    superseded = [t for t in all_tickets(sessions) if t.outcome == "superseded"]
    assert len(superseded) == 4 and all("retraining" in (t.note or "") for t in superseded)


def test_drift_within_the_budget_opens_no_retraining_ticket(
    feed: Feed, sessions: SessionFactory
) -> None:
    for asset in ("a", "b"):  # two assets: fewer than retraining_min_assets
        feed.condition(asset, "s2.mean", "envelope", ["s2"], minute=2)
    assert [k for k, _ in live(sessions)] == ["sensor", "sensor"]


def test_a_resolved_sensor_ticket_ends_its_conditions_and_trust_returns(
    feed: Feed, sessions: SessionFactory
) -> None:
    feed.condition("pump-1", "s11", "step", ["s11"], minute=5, since=1)
    (ticket,) = all_tickets(sessions)
    with sessions() as session:
        tickets.resolve(session, ticket.id, "other", "re-mounted the transmitter")
        session.commit()
        assert session.scalars(select(AssetCondition)).one().ended_at is not None
    feed.scores("pump-1", [0.9, 0.9, 0.9], start=10)
    assert live(sessions) == [("maintenance", "pump-1")]


def test_a_condition_that_ended_no_longer_holds_the_risk_back(
    feed: Feed, sessions: SessionFactory
) -> None:
    feed.condition("pump-1", "s2.mean", "envelope", ["s2"], minute=2)
    feed.condition("pump-1", "s2.mean", "envelope", ["s2"], minute=4, state="end")
    feed.scores("pump-1", [0.9, 0.9, 0.9], start=6)
    assert sorted(live(sessions)) == [("maintenance", "pump-1"), ("sensor", "pump-1")]


# Three assets' histories, in plant time: (minute of arrival, what came). pump-1's alerts
# come before the sensor fault that explains them is detected; pump-2's fault is known
# before its alerts; pump-3's alerts began before its fault did.
HISTORY: list[tuple[str, str, list[Any]]] = [
    ("predictions", "pump-1", [0.9, 0.9, 0.9]),  # windows ending at minutes 3..5
    ("drift", "pump-2", [_event("pump-2", "s11", "step", ["s11"], 2, 1, "start")]),
    ("predictions", "pump-2", [0.9, 0.9, 0.9]),
    ("predictions", "pump-3", [0.9, 0.9, 0.9]),
    ("drift", "pump-1", [_event("pump-1", "s11", "step", ["s11"], 8, 2, "start")]),
    ("drift", "pump-3", [_event("pump-3", "s4", "step", ["s4"], 9, 6, "start")]),
]


def _digest(sessions: SessionFactory, site: str) -> list[tuple[Any, ...]]:
    """What a maintenance lead sees of a site's tickets (not when they were received)."""
    return sorted(
        (t.asset, t.kind, t.status, t.opened_at, t.escalations,
         t.evidence.get("reclassified_from", {}).get("kind"),
         len(t.evidence.get("untrusted_risk", {}).get("scores", [])))
        for t in all_tickets(sessions) if t.site == site)


def test_a_backlog_is_judged_in_event_time_as_it_was_live(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    """The same history received live (a message at a time) and as one backlog batch whose
    messages arrive kind by kind (all drift first, as an outbox flush may send them):
    the same tickets, reclassifications included."""
    for asset in ("other-1", "other-2", "other-3"):  # the sites know more assets
        for site in ("live", "late"):
            ingestor.handle(data_topic(AGENT, site=site), payload(AGENT, 0, predictions(
                asset, [0.1])))
    backlog = []
    for seq, (kind, asset, items) in enumerate(HISTORY, start=1):
        if kind == "predictions":
            items = predictions(asset, items, start=3)
        outcome = ingestor.handle(data_topic(AGENT, kind, site="live"),
                                  payload(AGENT, seq, items))
        assert outcome.status == "accepted"
        backlog.append(RawMessage(data_topic(AGENT, kind, site="late"),
                                  payload(AGENT, seq, items)))
    backlog.sort(key=lambda m: "predictions" in m.topic)  # every drift message first
    assert {o.status for o in ingestor.handle_batch(backlog)} == {"accepted"}

    live_tickets = _digest(sessions, "live")
    assert [(asset, kind, reclassified) for asset, kind, _, _, _, reclassified, _
            in live_tickets] == [
        ("pump-1", "sensor", "maintenance"),  # opened on its alerts, then explained
        ("pump-2", "sensor", None),
        ("pump-3", "maintenance", None),  # its alerts began before the fault: they stand
        ("pump-3", "sensor", None)]
    assert live_tickets[1][-1] == 3  # pump-2's risk is evidence on its sensor ticket
    assert _digest(sessions, "late") == live_tickets
