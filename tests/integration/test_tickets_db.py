"""The one-open-ticket invariant, enforced by the database itself, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aggregator_support import data_topic, drop_schema, payload, predictions
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from aggregator import tickets
from aggregator.db import (
    AgentRecord,
    QuarantinedMessage,
    RuleState,
    SessionFactory,
    Ticket,
    open_engine,
    open_sessions,
)
from aggregator.ingest import Ingestor, RawMessage
from aggregator.series.sqlite import SqliteSeriesStore
from aggregator.settings import Settings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CONTEXT: dict[str, Any] = dict(
    agent="gw-1", site="plant1", line="line3", model_name="m", model_version="1", threshold=0.7
)
EVIDENCE = {
    "k": 3,
    "n": 5,
    "scores": [{"window_end": NOW.isoformat(), "score": 0.9, "alert": True}],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/tickets.db"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = open_engine(url)
    yield engine
    engine.dispose()
    drop_schema(url)


@pytest.fixture
def sessions(engine: Engine) -> SessionFactory:
    return open_sessions(engine)


def raw_ticket(
    asset: str = "pump-1", kind: str = "maintenance", status: str = "open", site: str = "plant1"
) -> Ticket:
    """A row inserted without tickets.py's check: only the database stands in the way."""
    return Ticket(
        kind=kind,
        asset=asset,
        status=status,
        opened_at=NOW,
        updated_at=NOW,
        evidence=EVIDENCE,
        escalations=0,
        **(CONTEXT | {"site": site}),
    )


def test_database_refuses_a_second_open_ticket(sessions: SessionFactory) -> None:
    with sessions() as session:
        session.add(raw_ticket())
        session.commit()
    with sessions() as session:
        session.add(raw_ticket(status="acknowledged"))  # acknowledged is not resolved either
        with pytest.raises(IntegrityError):
            session.commit()


def test_database_allows_a_new_ticket_after_resolve(sessions: SessionFactory) -> None:
    with sessions() as session:
        first = raw_ticket()
        session.add(first)
        session.commit()
        tickets.resolve(session, first.id, "confirmed_failure")
        session.commit()
        session.add(raw_ticket())
        session.commit()
        # Any number of resolved ones may pile up.
        session.add(raw_ticket(status="resolved"))
        session.commit()
        statuses = sorted(session.scalars(select(Ticket.status)))
    assert statuses == ["open", "resolved", "resolved"]


def test_database_scopes_the_rule_to_asset_and_kind(sessions: SessionFactory) -> None:
    with sessions() as session:
        session.add_all(
            [raw_ticket("pump-1"), raw_ticket("pump-2"), raw_ticket("pump-1", "retraining")]
        )
        session.commit()
        assert session.scalar(select(func.count()).select_from(Ticket)) == 3


def test_database_scopes_the_rule_to_site_asset_and_kind(sessions: SessionFactory) -> None:
    """Asset names are only unique within a site: the same (asset, kind) at another site is
    another machine's ticket, but a second open one at the same site is refused."""
    with sessions() as session:
        session.add_all([raw_ticket("engine-001"), raw_ticket("engine-001", site="plant2")])
        session.commit()
        assert session.scalar(select(func.count()).select_from(Ticket)) == 2
    with sessions() as session:
        session.add(raw_ticket("engine-001", status="acknowledged", site="plant2"))
        with pytest.raises(IntegrityError):
            session.commit()
    with sessions() as session:
        rows = sorted((t.site, t.asset, t.kind) for t in session.scalars(select(Ticket)))
    assert rows == [
        ("plant1", "engine-001", "maintenance"),
        ("plant2", "engine-001", "maintenance"),
    ]


def test_open_or_escalate_is_per_site_on_every_backend(sessions: SessionFactory) -> None:
    with sessions() as session:
        a, opened_a = tickets.open_or_escalate(
            session, tickets.Subject("engine-001", **CONTEXT), "maintenance", EVIDENCE
        )
        b, opened_b = tickets.open_or_escalate(
            session, tickets.Subject("engine-001", **(CONTEXT | {"site": "plant2"})),
            "maintenance", EVIDENCE,
        )
        again, opened_again = tickets.open_or_escalate(
            session, tickets.Subject("engine-001", **(CONTEXT | {"site": "plant2"})),
            "maintenance", EVIDENCE,
        )
        session.commit()
    assert (opened_a, opened_b, opened_again) == (True, True, False)
    assert a.id != b.id and again.id == b.id
    assert (a.escalations, b.escalations) == (0, 1)


def test_lost_race_escalates_on_every_backend(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sessions() as session:
        existing, _ = tickets.open_or_escalate(
            session, tickets.Subject("pump-1", **CONTEXT), "maintenance", EVIDENCE
        )
        session.commit()
    real = tickets._open_ticket
    checks: list[str] = []

    def first_check_misses(*args: Any) -> Ticket | None:
        checks.append("x")
        return None if len(checks) == 1 else real(*args)

    monkeypatch.setattr(tickets, "_open_ticket", first_check_misses)
    with sessions() as session:
        ticket, opened = tickets.open_or_escalate(
            session, tickets.Subject("pump-1", **CONTEXT), "maintenance", EVIDENCE
        )
        session.commit()
    assert (opened, ticket.id, ticket.escalations) == (False, existing.id, 1)


def test_concurrent_writers_open_exactly_one_ticket(sessions: SessionFactory) -> None:
    """Two replicas (threads with their own connections) trigger the same assets at once."""
    assets = [f"asset-{i}" for i in range(20)]
    barrier = threading.Barrier(2)
    opened: list[bool] = []
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            for asset in assets:
                barrier.wait(timeout=10)
                with sessions() as session:
                    _, was_opened = tickets.open_or_escalate(
                        session, tickets.Subject(asset, **CONTEXT), "maintenance", EVIDENCE
                    )
                    session.commit()
                opened.append(was_opened)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert opened.count(True) == len(assets)
    with sessions() as session:
        rows = list(session.scalars(select(Ticket)))
    assert sorted(t.asset for t in rows) == sorted(assets)
    assert all(t.escalations == 1 for t in rows)


def test_ingest_opens_then_escalates_on_every_backend(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    """The whole SQL side of ingest (dedupe, agents, rule state, tickets) on this backend."""
    series = SqliteSeriesStore(tmp_path / "series.db")
    ingestor = Ingestor(series, sessions, Settings(rule_k=2, rule_n=3))
    topic = data_topic("gw-1")
    try:
        first = payload("gw-1", 0, predictions("pump-1", [0.9, 0.95]))
        outcomes = ingestor.handle_batch([RawMessage(topic, first), RawMessage(topic, b"{")])
        assert [o.status for o in outcomes] == ["accepted", "rejected"]
        assert ingestor.handle(topic, first).status == "duplicate"
        # A restarted aggregator (a new Ingestor) continues from the rule state in SQL.
        restarted = Ingestor(series, sessions, Settings(rule_k=2, rule_n=3))
        restarted.handle(topic, payload("gw-1", 1, predictions("pump-1", [0.99], start=2)))
    finally:
        series.close()
    with sessions() as session:
        (ticket,) = session.scalars(select(Ticket))
        agent = session.get(AgentRecord, "gw-1")
        quarantined = session.scalar(select(func.count()).select_from(QuarantinedMessage))
    assert (ticket.asset, ticket.status, ticket.escalations) == ("pump-1", "open", 1)
    assert [s["score"] for s in ticket.evidence["scores"]] == [0.9, 0.95, 0.99]
    assert agent is not None and (agent.last_seq, agent.predictions_count) == (1, 3)
    assert quarantined == 1


def test_ingest_keeps_sites_apart_on_every_backend(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    """The same asset name at two sites: two rule_state rows, two k-of-n windows, two tickets."""
    series = SqliteSeriesStore(tmp_path / "series.db")
    topic_a, topic_b = data_topic("gw-1", site="plant1"), data_topic("gw-2", site="plant2")
    try:
        ingestor = Ingestor(series, sessions, Settings(rule_k=2, rule_n=3))
        # Interleaved single alerts: 2 of 3 if the sites shared a window, 1 of 3 each apart.
        ingestor.handle_batch(
            [
                RawMessage(topic_a, payload("gw-1", 0, predictions("engine-001", [0.9]))),
                RawMessage(topic_b, payload("gw-2", 0, predictions("engine-001", [0.9], start=1))),
            ]
        )
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Ticket)) == 0
        restarted = Ingestor(series, sessions, Settings(rule_k=2, rule_n=3))
        restarted.handle_batch(
            [
                RawMessage(topic_a, payload("gw-1", 1, predictions("engine-001", [0.95], start=2))),
                RawMessage(topic_b, payload("gw-2", 1, predictions("engine-001", [0.97], start=3))),
            ]
        )
    finally:
        series.close()
    with sessions() as session:
        found = sorted(
            (t.site, t.asset, t.agent, t.escalations, [s["score"] for s in t.evidence["scores"]])
            for t in session.scalars(select(Ticket))
        )
        states = sorted((r.site, r.asset) for r in session.scalars(select(RuleState)))
    assert found == [
        ("plant1", "engine-001", "gw-1", 0, [0.9, 0.95]),
        ("plant2", "engine-001", "gw-2", 0, [0.9, 0.97]),
    ]
    assert states == [("plant1", "engine-001"), ("plant2", "engine-001")]
