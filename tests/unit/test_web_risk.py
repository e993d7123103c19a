"""The web pages' risk card (``aggregator.web.risk``): a chance only where the model card
vouches for the scores as probabilities, similar alerts from outcomes, drivers from the
conditions in the evidence; otherwise the card says what is missing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aggregator.web import risk
from contract.card import ModelCard

MODELS = Path(__file__).resolve().parents[2] / "models"
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def scores(*values: float) -> list[dict[str, object]]:
    return [{"window_end": (T0 + timedelta(minutes=i)).isoformat(), "score": v,
             "alert": v >= 0.37} for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.load(MODELS / "cmapss_fd001")


def test_the_newest_score_is_read_through_the_cards_calibration_map(card: ModelCard) -> None:
    ev = {"scores": scores(0.2, 0.9, 0.45)}
    got = risk.chance(risk.latest_score(ev), card, kind="maintenance", threshold=0.37)
    assert card.calibration is not None and card.calibration.map is not None
    expected = float(np.interp(0.45, card.calibration.map.x, card.calibration.map.y))
    assert got.probability == pytest.approx(expected)
    assert got.words == (f"{risk.tenths(expected).capitalize()} chance that the engine "
                         "fails within the next 30 cycles.")


def test_no_chance_is_made_up(card: ModelCard) -> None:
    newest = risk.latest_score({"scores": scores(0.9)})
    no_card = risk.chance(newest, None, kind="maintenance", threshold=0.37)
    assert no_card.probability is None and "model card is not available" in no_card.words
    assert "0.90" in no_card.words and "0.37" in no_card.words
    vague = card.model_copy(update={"calibration": card.calibration.model_copy(  # type: ignore[union-attr]
        update={"calibrated": False})})
    assert risk.chance(newest, vague, kind="maintenance", threshold=0.37).probability is None
    rul = ModelCard.load(MODELS / "cmapss_fd001_rul")
    assert "not a probability" in risk.chance(newest, rul, kind="maintenance",
                                              threshold=0.5).words
    sensor = risk.chance(newest, card, kind="sensor", threshold=0.37)
    assert sensor.probability is None and "not trusted" in sensor.words
    assert risk.chance(None, card, kind="maintenance", threshold=0.37).words == (
        "No risk score is in this ticket's evidence.")


def test_a_sensor_tickets_untrusted_risk_is_its_newest_score() -> None:
    ev = {"verdict": "sensor", "untrusted_risk": {"scores": scores(0.5, 0.8)},
          "scores": [{"window_end": "not a time", "score": 1.0}]}
    newest = risk.latest_score(ev)
    assert newest is not None and newest.score == 0.8


def test_similar_alerts_count_what_confirms_each_kind() -> None:
    assert risk.similar("sensor", "l1", ["sensor_fault", "no_fault_found", "sensor_fault"]) == (
        "2 of the last 3 similar alerts on l1 were confirmed (1 was not).")
    many = ["confirmed_failure"] * 8 + ["no_fault_found"] * 6
    assert risk.similar("maintenance", "l1", many).startswith("8 of the last 10 ")
    assert risk.similar("maintenance", "l1", ["no_fault_found"]) == (
        "The last similar alert on l1 was not confirmed.")


def test_drivers_rank_the_furthest_out_first_and_name_stuck_sensors() -> None:
    conditions = [
        {"monitor": "sensor_2.mean", "detector": "envelope", "current": 643.0,
         "reference": {"low": 641.0, "high": 644.0, "mean": 642.5}},
        {"monitor": "sensor_7.mean", "detector": "envelope", "current": 550.0,
         "reference": {"low": 552.0, "high": 555.0}},
        {"monitor": "sensor_9.last", "detector": "stuck"},
        {"monitor": "sensor_4.mean", "detector": "envelope", "current": 1450.0,
         "reference": {"low": 1380.0, "high": 1420.0}},
    ]
    assert risk.drivers({"conditions": conditions}) == (
        "Main drivers: sensor 9 (last) stuck, sensor 4 (mean) up, sensor 7 (mean) down.")
    retraining = {"signals": [{"signal": "sensor_11.mean", "assets": 30},
                              {"signal": "sensor_4.mean", "assets": 12}]}
    assert risk.drivers(retraining) == "Main drivers: sensor 11 (mean), sensor 4 (mean)."


def test_a_card_is_found_by_name_and_version() -> None:
    assert risk.card_of(MODELS, "cmapss_fd001", "1.0.0") is not None
    assert risk.card_of(MODELS, "cmapss_fd001", "9.9.9") is None
    assert risk.card_of(None, "cmapss_fd001", "1.0.0") is None
