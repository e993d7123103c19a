"""Monitor calibration: the shipped cards hold what ``linewatch calibrate`` computes, and a
budget turns into thresholds the way a plant would expect (stricter, more assets or more
signals: higher thresholds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.monitors.budget import FIXED_ENVELOPE_THRESHOLD, calibrate, tail_threshold
from contract.card import ModelCard, Tail
from contract.wire import Budget
from linewatch.calibration import calibrate as measure
from linewatch.calibration import load_lives

ROOT = Path(__file__).resolve().parents[2]
FD001 = ROOT / "models" / "cmapss_fd001"
TRAIN = ROOT / "models" / "data" / "cmapss_fd001" / "train_FD001.txt.gz"


def budget(alarms: float = 1.0, per_days: float = 90.0, per_day: float = 144.0) -> Budget:
    return Budget(alarms=alarms, per_days=per_days, windows_per_day=per_day)


def test_the_shipped_fd001_calibration_is_what_the_training_lives_give() -> None:
    """Counts are exact; rates and statistics agree to float noise (they are sums and
    medians of the same numbers on any CPU), so a change of data, features or detectors
    shows here."""
    card = ModelCard.load(FD001)
    shipped = card.reference.monitoring
    assert shipped is not None
    fresh = measure(card, load_lives(card, TRAIN))
    for tail in ("envelope", "step"):
        a, b = getattr(shipped, tail), getattr(fresh, tail)
        assert (a.counts, a.lives, a.windows, a.u) == (b.counts, b.lives, b.windows, b.u)
        assert a.theta == pytest.approx(b.theta, rel=1e-6)
        assert a.thetas.keys() == b.thetas.keys()
        assert all(a.thetas[k] == pytest.approx(b.thetas[k], rel=1e-6) for k in a.thetas)
    assert {k: v.longest_run for k, v in shipped.channels.items()} == {
        k: v.longest_run for k, v in fresh.channels.items()}
    assert all(shipped.channels[k].noise == pytest.approx(fresh.channels[k].noise, rel=1e-6)
               for k in shipped.channels)


def test_a_changed_feature_changes_the_calibration() -> None:
    card = ModelCard.load(FD001)
    lives = load_lives(card, TRAIN)
    for life in lives[::7]:  # a few engines read sensor_11 one noise step higher at the end
        j = card.channel_names.index("sensor_11")
        life.values[-30:, j] += 0.5
    assert measure(card, lives).envelope.counts != card.reference.monitoring.envelope.counts  # type: ignore[union-attr]


def test_stricter_budgets_more_assets_and_more_signals_raise_thresholds() -> None:
    card = ModelCard.load(FD001)

    def env(b: Budget, assets: int = 25) -> np.ndarray:
        return calibrate(card, b, assets).envelope

    assert (env(budget(1, 90)) > env(budget(1, 7))).all()
    assert (env(budget(1, 7)) > env(budget(10, 1))).all()
    assert (env(budget(), 100) > env(budget(), 10)).all()
    assert (env(budget(per_day=1440)) > env(budget(per_day=144))).all()
    # A signal that moved more often in the held-out lives gets a higher threshold; the
    # same peaks in all keep the pooled tail (and its uncertainty) the same.
    t = Tail(u=0.0, theta=2.0, lives=100, windows=10_000, counts={"a": 0, "b": 20})
    assert tail_threshold(t, "a", 1e-5) > tail_threshold(t, "a", 1e-4)
    more = Tail(u=0.0, theta=2.0, lives=100, windows=10_000, counts={"a": 5, "b": 15})
    assert tail_threshold(more, "a", 1e-4) > tail_threshold(t, "a", 1e-4)
    # Fewer peaks to fit the tail on: less known, so a higher threshold.
    few = Tail(u=0.0, theta=2.0, lives=100, windows=10_000, counts={"a": 0, "b": 2})
    assert tail_threshold(few, "a", 1e-4) > tail_threshold(t, "a", 1e-4)


def test_the_report_states_the_budget_and_every_threshold() -> None:
    card = ModelCard.load(FD001)
    cal = calibrate(card, budget(), 25)
    r = cal.report
    assert r.calibrated and (r.budget.alarms, r.budget.per_days) == (1.0, 90.0)
    assert set(r.envelope) == set(card.feature_names)
    assert r.signals == len(card.features) + len(r.step) + 1
    assert r.stuck_samples["sensor_17"] == 2 * 11 + 2  # sensor_17 repeats up to 11 times


def test_a_card_without_calibration_runs_on_fixed_rules_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    card = ModelCard.load(FD001)
    bare = card.model_copy(update={"reference": card.reference.model_copy(
        update={"monitoring": None})})
    cal = calibrate(bare, budget(), 25)
    assert not cal.report.calibrated and cal.score is None
    assert (cal.envelope == FIXED_ENVELOPE_THRESHOLD).all()
    assert "no monitor calibration" in caplog.text
