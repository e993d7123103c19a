"""Model health from the stores (aggregator.modelhealth) on SQLite in tmp_path: which facts
a period reads, where the target F1 comes from, periods; and the API's response model
holds every field of ``HealthFigures.to_dict()``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator import failures, tickets
from aggregator.api.schemas import HealthFiguresOut
from aggregator.db import AssetCondition, SessionFactory, open_engine, open_sessions
from aggregator.figures import AssetCount, DriftCondition, MissedFailure, TicketFact, compute
from aggregator.modelhealth import (
    Target,
    card_f1,
    load_facts,
    model_health,
    parse_period,
    period_ending,
    target_f1,
)
from aggregator.series.sqlite import SqliteSeriesStore
from aggregator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SINCE = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = datetime(2026, 4, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[SessionFactory]:
    engine = open_engine(f"sqlite:///{tmp_path}/health.db")
    yield open_sessions(engine)
    engine.dispose()


def ticket(session: Any, asset: str, opened: datetime, *, kind: tickets.Kind = "maintenance",
           outcome: tickets.Outcome | None = None, resolved: datetime | None = None,
           failed_at: datetime | None = None, model: tuple[str, str] = ("m", "1")) -> int:
    subject = tickets.Subject(asset, "plant1", "line3", "gw-1", *model, 0.7)
    made, _ = tickets.open_or_escalate(session, subject, kind, {"scores": [
        {"window_end": (opened - DAY).isoformat(), "score": 0.9, "alert": True}]}, now=opened)
    assert made is not None
    if outcome is not None:
        tickets.resolve(session, made.id, outcome, failed_at=failed_at, now=resolved)
    return made.id


def test_a_period_reads_the_tickets_failures_and_conditions_that_overlap_it(
    sessions: SessionFactory,
) -> None:
    with sessions() as session:
        before = ticket(session, "a", SINCE - 9 * DAY, outcome="no_fault_found",
                        resolved=SINCE - DAY)
        inside = ticket(session, "b", SINCE - DAY, outcome="confirmed_failure",
                        resolved=SINCE + DAY, failed_at=SINCE + DAY / 2)
        still_open = ticket(session, "c", SINCE + 2 * DAY)
        after = ticket(session, "d", UNTIL)
        retrain = ticket(session, "model:m@1", SINCE + DAY, kind="retraining")
        ticket(session, "e", SINCE + DAY, kind="sensor")
        for asset, at in (("x", SINCE - DAY), ("y", SINCE), ("z", UNTIL)):
            failures.report(session, failures.FailureReport("plant1", "line3", asset, at), "t")
        for asset, detector, since, ended in (
            ("p", "envelope", SINCE - 5 * DAY, SINCE - DAY),  # ended before: out
            ("q", "envelope", SINCE - 5 * DAY, None),
            ("r", "alert_rate", SINCE + DAY, SINCE + 2 * DAY),
            ("s", "stuck", SINCE + DAY, None),  # a sensor fault: not drift
            ("t", "envelope", UNTIL, None),  # began after: out
        ):
            session.add(AssetCondition(
                site="plant1", line="line3", agent="gw-1", asset=asset, model_name="m",
                model_version="1", monitor="s2", detector=detector, signal="feature",
                channels=["s2"], since=since, detected_at=since, ended_at=ended))
        session.commit()
    with sessions() as session:
        facts = load_facts(session, None, SINCE, UNTIL)
    assert [t.id for t in facts.tickets] == [inside, still_open, retrain]  # not before, after
    assert {before, after}.isdisjoint(t.id for t in facts.tickets)
    (b,) = [t for t in facts.tickets if t.id == inside]
    assert (b.failed_at, b.first_alert_at) == (SINCE + DAY / 2, SINCE - 2 * DAY)
    assert [m.asset for m in facts.missed] == ["y"]
    assert [c.asset for c in facts.conditions] == ["q", "r"]
    assert facts.assets == () and facts.estimates == ()
    assert facts.model_versions == {("m", "1")}


def test_assets_come_from_the_series_store(sessions: SessionFactory, tmp_path: Path) -> None:
    from aggregator.series import PredictionPoint

    store = SqliteSeriesStore(tmp_path / "series.db")
    try:
        store.write([PredictionPoint("plant1", "line3", "gw-1", f"pump-{i % 3}", "m", "1",
                                     SINCE + i * DAY, SINCE + i * DAY + DAY / 2, 0.1, False, i)
                     for i in range(9)])
        with sessions() as session:
            facts = load_facts(session, store, SINCE, UNTIL)
            figures = model_health(session, store, Settings(), since=SINCE, until=UNTIL)
    finally:
        store.close()
    assert facts.assets == (AssetCount(3, "plant1", "line3", "m", "1"),)
    assert figures.overall.assets == 3


def test_the_target_is_the_cards_test_f1_for_one_model_version(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "cmapss_fd001", models / "fd001",
                    ignore=shutil.ignore_patterns("*.onnx"))
    shutil.copytree(ROOT / "models" / "ai4i2020", models / "ai4i",
                    ignore=shutil.ignore_patterns("*.onnx"))
    (models / "broken").mkdir()
    (models / "broken" / "card.json").write_text("{")
    settings = Settings(models_dir=models, target_f1=0.7)
    fd001 = target_f1(settings, [("cmapss_fd001", "1.0.0")])
    assert fd001.source == "the model card's test F1, test_last_window_f1"
    assert fd001.f1 == pytest.approx(0.9804)
    assert target_f1(settings, [("ai4i2020", "1.0.0")]).source == \
        "the model card's test F1, test_f1"
    assert target_f1(settings, [("cmapss_fd001", "9.9")]) == Target(
        0.7, "the configured target, LINEWATCH_TARGET_F1")
    assert target_f1(settings, []) == Target(0.7, "the configured target, LINEWATCH_TARGET_F1")
    assert target_f1(settings, [("cmapss_fd001", "1.0.0"), ("ai4i2020", "1.0.0")]) == Target(
        0.7, "the configured target, LINEWATCH_TARGET_F1: the period has 2 model versions")
    assert target_f1(Settings(target_f1=0.6), [("cmapss_fd001", "1.0.0")]).f1 == 0.6
    assert card_f1(tmp_path / "nowhere", "cmapss_fd001", "1.0.0") is None


def test_periods() -> None:
    assert parse_period("30d") == timedelta(days=30)
    assert parse_period("2w") == timedelta(days=14)
    assert parse_period("99999h") == timedelta(hours=99999)
    for bad in ("0d", "30", "d", "1.5d", "10000d", "1000w", "100000h", "30D", " 30d"):
        with pytest.raises(ValueError, match="a whole number and h, d or w"):
            parse_period(bad)
    until = datetime(2026, 4, 1, tzinfo=UTC)
    assert period_ending(until, timedelta(days=31)) == (SINCE, until)
    since, end = period_ending(None, DAY)
    assert end - since == DAY and abs(end - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ValueError, match="timezone"):
        period_ending(datetime(2026, 4, 1), DAY)


def test_the_response_model_holds_every_field_of_the_figures() -> None:
    at = SINCE + DAY
    facts = [TicketFact(id=i, kind="maintenance", site="p1", line="l1", asset=f"e{i}",
                        model_name="m", model_version="1", opened_at=at, resolved_at=at + DAY,
                        outcome="confirmed_failure" if i < 5 else "no_fault_found",
                        failed_at=at + DAY / 2 if i == 0 else None)
             for i in range(7)]
    figures = compute(
        facts, [MissedFailure("e9", "p1", "l1", at, "m", "1", note="seized")], since=SINCE,
        until=UNTIL + 40 * DAY, target_f1=0.8, target_source="a target",
        assets=[AssetCount(10, "p1", "l1", "m", "1")], visit_cost=100.0, currency="EUR",
        conditions=[DriftCondition("e1", "p1", "l1", "m", "1", SINCE)])
    plain = figures.to_dict()
    assert plain["by_month"] and plain["overall"]["missed_failures"]  # every part filled
    out = HealthFiguresOut.model_validate(plain).model_dump(mode="json")

    def same(a: Any, b: Any) -> None:
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                same(a[k], b[k])
        elif isinstance(a, list):
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                same(x, y)
        elif isinstance(a, str) and isinstance(b, str) and a[:4].isdigit() and "T" in a:
            assert datetime.fromisoformat(a) == datetime.fromisoformat(b)
        else:
            assert a == b

    same(out, plain)
