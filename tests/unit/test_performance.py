"""Retraining tickets from performance: the gateways' estimated F1, and the realised F1
from outcomes, each below the model card's (issue #10)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aggregator_support import T0, data_topic, envelope, store_settings
from sqlalchemy import select

from aggregator import tickets
from aggregator.db import SessionFactory, Ticket, open_engine, open_sessions
from aggregator.ingest import Ingestor, RawMessage
from aggregator.reactions.performance import check_realised, window_f1
from aggregator.reactions.retraining import scope_key
from aggregator.series.sqlite import SqliteSeriesStore
from aggregator.settings import Settings
from contract.card import ModelCard
from contract.wire import Estimate, Health, Interval, ModelRef, encode

MODELS = Path(__file__).parents[2] / "models"
CARD = ModelCard.load(MODELS / "cmapss_fd001")
FD001 = ModelRef(name=CARD.name, version=CARD.version, sha256=CARD.sha256.model,
                 threshold=CARD.threshold.value)
TARGET = CARD.metrics["test_window_f1"].value
KEY = scope_key(CARD.name, CARD.version, None)


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[tuple[Ingestor, SessionFactory, Settings]]:
    settings = store_settings(tmp_path, models_dir=MODELS)
    series = SqliteSeriesStore(tmp_path / "series.db")
    engine = open_engine(settings.db_url)
    sessions = open_sessions(engine)
    yield Ingestor(series, sessions, settings), sessions, settings
    series.close()
    engine.dispose()


def report(minute: int, high: float) -> Health:
    """A health report whose F1 estimate has ``high`` as its upper bound."""
    f1 = Interval(value=high - 0.05, low=high - 0.1, high=high)
    return Health(at=T0 + timedelta(minutes=minute), windows_scored=500 + minute,
                  outbox_depth=0, estimate=Estimate(
                      windows=500, calibrated=True, alerts=40, expected_positives=35.0,
                      f1=f1))


def send(ingestor: Ingestor, seq: int, *health: Health, agent: str = "gw-1",
         model: ModelRef = FD001) -> None:
    env = envelope(agent, seq, list(health), model=model)
    (outcome,) = ingestor.handle_batch([RawMessage(data_topic(agent, "health"), encode(env))])
    assert outcome.status == "accepted", outcome


def retraining(sessions: SessionFactory) -> list[Ticket]:
    with sessions() as session:
        return list(session.scalars(select(Ticket).where(Ticket.kind == "retraining")))


def test_the_target_is_the_cards_per_window_f1() -> None:
    assert window_f1(MODELS, CARD.name, CARD.version) == (TARGET, "test_window_f1")
    assert window_f1(MODELS, CARD.name, "9.9.9") is None and window_f1(None, "a", "b") is None


def test_three_estimates_in_a_row_wholly_below_the_card_open_one_retraining_ticket(
    plant: tuple[Ingestor, SessionFactory, Settings],
) -> None:
    ingestor, sessions, settings = plant
    below, above = TARGET - 0.01, TARGET + 0.01
    send(ingestor, 0, report(0, below), report(1, below))
    send(ingestor, 1, report(2, above))  # the interval reaches the target: the run ends
    send(ingestor, 2, report(3, below), report(4, below))
    send(ingestor, 3, report(4, below))  # the same report again counts once
    assert retraining(sessions) == []
    send(ingestor, 4, report(5, below))
    (ticket,) = retraining(sessions)
    assert (ticket.asset, ticket.site, ticket.model_version) == (KEY, "plant1", CARD.version)
    why = ticket.evidence["performance"]
    assert (why["source"], why["reports_below"], why["target"]) == ("estimate", 3, TARGET)
    assert f"below the card's test_window_f1 of {TARGET:.2f}" in why["reason"]
    send(ingestor, 5, report(6, below))  # the run goes on: the same ticket, escalated
    (again,) = retraining(sessions)
    assert again.id == ticket.id and again.escalations == 1


def test_an_uncalibrated_or_alert_free_estimate_neither_counts_nor_breaks_the_run(
    plant: tuple[Ingestor, SessionFactory, Settings],
) -> None:
    ingestor, sessions, _ = plant
    bare = Health(at=T0 + timedelta(minutes=2), windows_scored=1, outbox_depth=0,
                  estimate=Estimate(windows=10, calibrated=False, alerts=0))
    send(ingestor, 0, report(0, TARGET - 0.2), report(1, TARGET - 0.2), bare)
    assert retraining(sessions) == []
    send(ingestor, 1, report(3, TARGET - 0.2))
    assert len(retraining(sessions)) == 1


def test_a_shadow_models_estimates_open_nothing_and_leave_the_live_run_alone(
    plant: tuple[Ingestor, SessionFactory, Settings],
) -> None:
    """A shadow model is judged by the promotion gate, not by tickets; its reports come
    from the same gateway, so they must not count in (or break) the live model's run."""
    ingestor, sessions, _ = plant
    shadow = FD001.model_copy(update={"role": "shadow"})  # the card's version: a target
    below, above = TARGET - 0.01, TARGET + 0.01
    send(ingestor, 0, report(0, below), report(1, below), report(2, below), model=shadow)
    assert retraining(sessions) == []
    send(ingestor, 1, report(3, below), report(4, below))  # live: two in a row
    send(ingestor, 2, report(5, above), model=shadow)  # would end the live run if counted
    send(ingestor, 3, report(6, below))
    (ticket,) = retraining(sessions)
    assert ticket.evidence["performance"]["reports_below"] == 3


def outcomes(sessions: SessionFactory, settings: Settings, real: int, false: int) -> None:
    """``real + false`` resolved maintenance tickets of FD001 at plant1, then the check."""
    with sessions() as session:
        for i in range(real + false):
            subject = tickets.Subject(asset=f"engine-{i:03d}", site="plant1", line="line1",
                                      agent="gw-1", model_name=CARD.name,
                                      model_version=CARD.version, threshold=0.37)
            ticket, _ = tickets.open_or_escalate(session, subject, "maintenance", {})
            assert ticket is not None
            session.flush()
            tickets.resolve(session, ticket.id,
                            "confirmed_failure" if i < real else "no_fault_found")
        session.flush()
        check_realised(session, None, settings, site="plant1", model_name=CARD.name,
                       model_version=CARD.version, now=tickets.get(session, 1).updated_at
                       + timedelta(seconds=1))
        session.commit()


def test_realised_f1_confidently_below_the_target_opens_a_retraining_ticket(
    plant: tuple[Ingestor, SessionFactory, Settings],
) -> None:
    _, sessions, settings = plant
    outcomes(sessions, settings, real=4, false=8)  # F1 0.50, at most about 0.72
    (ticket,) = retraining(sessions)
    why: dict[str, Any] = ticket.evidence["performance"]
    assert (why["source"], why["outcomes"], why["real"], why["false_alarms"]) == (
        "outcomes", 12, 4, 8)
    assert why["high"] < why["target"] == CARD.metrics["test_last_window_f1"].value
    assert ticket.asset == KEY


def test_realised_f1_whose_interval_reaches_the_target_opens_nothing(
    plant: tuple[Ingestor, SessionFactory, Settings],
) -> None:
    _, sessions, settings = plant
    outcomes(sessions, settings, real=12, false=0)
    assert retraining(sessions) == []
