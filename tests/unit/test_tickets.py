"""Ticket lifecycle on SQLite in tmp_path (no servers); PostgreSQL runs in integration."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator import tickets
from aggregator.db import SessionFactory, Ticket, open_engine, open_sessions
from aggregator.errors import TicketNotFoundError, TicketStateError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CONTEXT: dict[str, Any] = dict(
    agent="gw-1", site="plant1", line="line3", model_name="m", model_version="1", threshold=0.7
)


def evidence(*scores: tuple[int, float]) -> dict[str, Any]:
    return {
        "k": 3,
        "n": 5,
        "scores": [
            {"window_end": (NOW + timedelta(minutes=m)).isoformat(), "score": s, "alert": s >= 0.7}
            for m, s in scores
        ],
    }


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[SessionFactory]:
    engine = open_engine(f"sqlite:///{tmp_path}/tickets.db")
    yield open_sessions(engine)
    engine.dispose()


def trigger(
    session: Session, asset: str = "pump-1", *scores: tuple[int, float], now: datetime = NOW
) -> tuple[Ticket, bool]:
    return tickets.open_or_escalate(
        session, tickets.Subject(asset, **CONTEXT), "maintenance",
        evidence(*scores or ((0, 0.9),)), now=now,
    )


def test_first_trigger_opens(sessions: SessionFactory) -> None:
    with sessions() as session:
        ticket, opened = trigger(session)
        session.commit()
    assert opened
    assert (ticket.status, ticket.opened_at, ticket.updated_at, ticket.escalations) == (
        "open",
        NOW,
        NOW,
        0,
    )
    assert ticket.resolved_at is None and ticket.outcome is None


def test_second_trigger_escalates_and_merges_evidence(sessions: SessionFactory) -> None:
    later = NOW + timedelta(minutes=5)
    with sessions() as session:
        first, _ = trigger(session, "pump-1", (0, 0.9), (1, 0.8))
        session.commit()
        second, opened = trigger(session, "pump-1", (1, 0.8), (2, 0.95), now=later)
        session.commit()
    assert not opened
    assert second.id == first.id
    assert (second.escalations, second.opened_at, second.updated_at) == (1, NOW, later)
    assert [s["score"] for s in second.evidence["scores"]] == [0.9, 0.8, 0.95]


def test_evidence_is_capped(sessions: SessionFactory) -> None:
    with sessions() as session:
        for m in range(0, tickets.MAX_EVIDENCE_SCORES + 50, 10):
            ticket, _ = trigger(session, "pump-1", *[(m + i, 0.9) for i in range(10)])
        session.commit()
    assert len(ticket.evidence["scores"]) == tickets.MAX_EVIDENCE_SCORES
    last = ticket.evidence["scores"][-1]["window_end"]
    assert last == (NOW + timedelta(minutes=tickets.MAX_EVIDENCE_SCORES + 49)).isoformat()


def test_kinds_and_assets_are_independent(sessions: SessionFactory) -> None:
    with sessions() as session:
        a, _ = trigger(session, "pump-1")
        b, _ = trigger(session, "pump-2")
        c, opened = tickets.open_or_escalate(
            session, tickets.Subject("pump-1", **CONTEXT), "retraining", evidence()
        )
        session.commit()
    assert opened
    assert len({a.id, b.id, c.id}) == 3


def test_unknown_kind_is_refused(sessions: SessionFactory) -> None:
    with sessions() as session, pytest.raises(ValueError, match="kind must be"):
        tickets.open_or_escalate(
            session, tickets.Subject("pump-1", **CONTEXT), "repaint", evidence()  # type: ignore[arg-type]
        )


def test_lost_race_escalates_instead_of_failing(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer opened the ticket between our check and our insert."""
    with sessions() as session:
        existing, _ = trigger(session)
        session.commit()
    real = tickets._open_ticket
    checks: list[str] = []

    def first_check_misses(session: Session, site: str, asset: str, kind: str) -> Ticket | None:
        checks.append(asset)  # the first check misses it, as if it were not committed yet
        return None if len(checks) == 1 else real(session, site, asset, kind)

    monkeypatch.setattr(tickets, "_open_ticket", first_check_misses)
    with sessions() as session:
        ticket, opened = trigger(session)
        session.commit()
    assert not opened
    assert len(checks) == 2  # the insert failed on the unique index, then it looked again
    assert ticket.id == existing.id
    assert ticket.escalations == 1
    with sessions() as session:
        assert len(list(session.scalars(select(Ticket)))) == 1


def test_acknowledge_then_resolve(sessions: SessionFactory) -> None:
    with sessions() as session:
        ticket, _ = trigger(session)
        session.commit()
        acked = tickets.acknowledge(session, ticket.id, now=NOW + timedelta(hours=1))
        session.commit()
        assert (acked.status, acked.updated_at) == ("acknowledged", NOW + timedelta(hours=1))
        # Acknowledging again changes nothing.
        assert tickets.acknowledge(session, ticket.id).updated_at == NOW + timedelta(hours=1)
        done = tickets.resolve(
            session, ticket.id, "no_fault_found", "sensor cable", now=NOW + timedelta(hours=2)
        )
        session.commit()
    assert (done.status, done.outcome, done.note) == ("resolved", "no_fault_found", "sensor cable")
    assert done.resolved_at == done.updated_at == NOW + timedelta(hours=2)


def test_escalating_an_acknowledged_ticket_keeps_it_acknowledged(sessions: SessionFactory) -> None:
    with sessions() as session:
        ticket, _ = trigger(session)
        tickets.acknowledge(session, ticket.id)
        again, opened = trigger(session, "pump-1", (1, 0.9))
        session.commit()
    assert not opened and again.id == ticket.id
    assert again.status == "acknowledged"


def test_resolved_tickets_refuse_changes(sessions: SessionFactory) -> None:
    with sessions() as session:
        ticket, _ = trigger(session)
        tickets.resolve(session, ticket.id, "confirmed_failure")
        session.commit()
        with pytest.raises(TicketStateError) as excinfo:
            tickets.acknowledge(session, ticket.id)
        assert (excinfo.value.ticket_id, excinfo.value.status) == (ticket.id, "resolved")
        with pytest.raises(TicketStateError):
            tickets.resolve(session, ticket.id, "other")


def test_resolve_needs_a_known_outcome(sessions: SessionFactory) -> None:
    with sessions() as session:
        ticket, _ = trigger(session)
        with pytest.raises(ValueError, match="outcome must be"):
            tickets.resolve(session, ticket.id, "fixed_itself")  # type: ignore[arg-type]


def test_missing_ticket(sessions: SessionFactory) -> None:
    with sessions() as session:
        with pytest.raises(TicketNotFoundError):
            tickets.acknowledge(session, 404)
        with pytest.raises(TicketNotFoundError):
            tickets.resolve(session, 404, "other")
        with pytest.raises(TicketNotFoundError):
            tickets.get(session, 404)


def test_after_resolve_a_new_ticket_opens(sessions: SessionFactory) -> None:
    with sessions() as session:
        first, _ = trigger(session)
        tickets.resolve(session, first.id, "confirmed_failure")
        second, opened = trigger(session)
        session.commit()
    assert opened and second.id != first.id


def test_find_filters_newest_first(sessions: SessionFactory) -> None:
    with sessions() as session:
        a, _ = trigger(session, "pump-1", now=NOW)
        b, _ = trigger(session, "pump-2", now=NOW + timedelta(minutes=1))
        c, _ = tickets.open_or_escalate(
            session, tickets.Subject("pump-1", **CONTEXT), "retraining", evidence(),
            now=NOW + timedelta(minutes=2),
        )
        tickets.resolve(session, b.id, "other")
        session.commit()
        assert [t.id for t in tickets.find(session)] == [c.id, b.id, a.id]
        assert [t.id for t in tickets.find(session, status="open")] == [c.id, a.id]
        assert [t.id for t in tickets.find(session, kind="maintenance")] == [b.id, a.id]
        assert [t.id for t in tickets.find(session, asset="pump-1", kind="retraining")] == [c.id]


def test_same_asset_at_another_site_gets_its_own_ticket(sessions: SessionFactory) -> None:
    other_site = CONTEXT | {"site": "plant2", "agent": "gw-9"}
    with sessions() as session:
        a, _ = trigger(session, "engine-001")
        b, opened = tickets.open_or_escalate(
            session, tickets.Subject("engine-001", **other_site), "maintenance",
            evidence((0, 0.9)), now=NOW,
        )
        session.commit()
        assert opened and b.id != a.id
        # Each site's next trigger escalates its own ticket only.
        again, opened = trigger(session, "engine-001", (1, 0.95))
        session.commit()
        assert (opened, again.id, again.escalations) == (False, a.id, 1)
        assert tickets.get(session, b.id).escalations == 0
        assert [t.id for t in tickets.find(session, asset="engine-001")] == [b.id, a.id]
        assert [t.id for t in tickets.find(session, site="plant2")] == [b.id]
        assert [t.id for t in tickets.find(session, site="plant1", asset="engine-001")] == [a.id]
        assert tickets.find(session, site="plant3") == []


def test_cooldown_counts_from_the_resolution_per_site_asset_and_kind(
    sessions: SessionFactory,
) -> None:
    hour = timedelta(hours=1)
    with sessions() as session:
        first, _ = trigger(session)
        tickets.resolve(session, first.id, "no_fault_found", now=NOW)

        def again(at: datetime, asset: str = "pump-1") -> tuple[Ticket | None, bool]:
            return tickets.open_or_escalate(
                session, tickets.Subject(asset, **CONTEXT), "maintenance", evidence((1, 0.9)),
                now=at, cooldown=hour,
            )

        assert again(NOW + hour - timedelta(seconds=1)) == (None, False)
        other, opened = again(NOW + timedelta(minutes=1), asset="fan-2")
        assert opened and other is not None
        later, opened = again(NOW + hour)
        assert opened and later is not None and later.id != first.id
        session.commit()
