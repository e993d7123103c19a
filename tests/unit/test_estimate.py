"""The agent's label-free estimate of its alerts' precision, recall and F1 (CBPE,
``agent.estimate``): the expected counts, the intervals, the sliding window, what an
uncalibrated card gets, and that the agent publishes it in its health reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from agent_support import MODEL, TEST_FILE

from agent import config as agent_config
from agent.estimate import PerformanceEstimator
from agent.pipeline import Agent
from contract import wire
from contract.card import CalibrationMap, ModelCard, ProbabilityCalibration, ReliabilityBin

SHIPPED = ModelCard.load(MODEL)


def _card(*, threshold: float = 0.5, calibrated: bool | None = True,
          cal_map: CalibrationMap | None = None) -> ModelCard:
    """The FD001 card with another threshold and a calibration block of our choosing
    (None: no block at all, as in cards written before calibrations existed)."""
    cal = None if calibrated is None else ProbabilityCalibration(
        method="none" if cal_map is None else "isotonic", calibrated=calibrated,
        tolerance=0.05, evaluated_on="synthetic", n=1, ece_before=0.0, ece_chance=0.0,
        brier_before=0.0, bins=[ReliabilityBin(predicted=0.5, observed=0.5, n=1)],
        map=cal_map, ece_after=None if cal_map is None else 0.0)
    return SHIPPED.model_copy(update={
        "threshold": SHIPPED.threshold.model_copy(update={"value": threshold}),
        "calibration": cal})


def test_expected_counts_give_the_point_estimates() -> None:
    est = PerformanceEstimator(_card(threshold=0.5))
    est.update(np.array([0.9, 0.8, 0.3, 0.1]))
    e = est.estimate()
    # TP = 0.9 + 0.8, FP = 0.1 + 0.2, FN = 0.3 + 0.1.
    assert (e.windows, e.alerts, e.calibrated) == (4, 2, True)
    assert e.expected_positives == pytest.approx(2.1)
    assert e.precision is not None and e.precision.value == pytest.approx(0.85)
    assert e.recall is not None and e.recall.value == pytest.approx(round(1.7 / 2.1, 4))
    assert e.f1 is not None and e.f1.value == pytest.approx(round(3.4 / 4.1, 4))
    for m in (e.precision, e.recall, e.f1):
        assert m.low <= m.value <= m.high


def test_alerts_follow_the_score_and_the_map_gives_the_probabilities() -> None:
    """A window alerts on its score (as published); its probability is the mapped score."""
    halve = CalibrationMap(x=[0.0, 1.0], y=[0.0, 0.5])
    est = PerformanceEstimator(_card(threshold=0.5, cal_map=halve))
    est.update(np.array([1.0, 0.6, 0.2]))
    e = est.estimate()
    assert e.alerts == 2
    assert e.expected_positives == pytest.approx(0.5 + 0.3 + 0.1)
    assert e.precision is not None and e.precision.value == pytest.approx(0.4)


@pytest.mark.parametrize("calibrated", [None, False])
def test_an_uncalibrated_card_yields_no_numbers(calibrated: bool | None) -> None:
    est = PerformanceEstimator(_card(calibrated=calibrated))
    est.update(np.array([0.9, 0.8, 0.3, 0.1]))
    e = est.estimate()
    assert (e.windows, e.alerts, e.calibrated) == (4, 2, False)
    assert (e.expected_positives, e.precision, e.recall, e.f1) == (None, None, None, None)
    assert json.loads(e.model_dump_json()) == {"windows": 4, "calibrated": False, "alerts": 2}


def test_the_regressor_card_yields_no_numbers() -> None:
    rul = ModelCard.load(MODEL.parent / "cmapss_fd001_rul")
    est = PerformanceEstimator(rul)
    est.update(np.array([0.1, 0.9]))
    assert not est.estimate().calibrated


def _calibrated_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that are probabilities, and labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.4, 1.6, size=n)
    return p, rng.random(n) < p


def _width(i: wire.Interval | None) -> float:
    assert i is not None
    return i.high - i.low


def test_the_interval_narrows_with_a_larger_window() -> None:
    p, _ = _calibrated_stream(20_000, seed=5)
    small, large = (PerformanceEstimator(_card(), window=w) for w in (500, 8000))
    small.update(p)
    large.update(p)
    a, b = small.estimate(), large.estimate()
    for m in ("precision", "recall", "f1"):
        assert _width(getattr(b, m)) < _width(getattr(a, m)) / 2.5, m


def test_the_interval_holds_the_realised_figure_as_often_as_it_says() -> None:
    """Labels that really are Bernoulli(p): over 400 windows of 1000, the realised
    precision, recall and F1 fall inside the 95 % interval about 95 % of the time (93.5 to
    97 % over 600; the simulation's 400 draws estimate the 2.5 % tails from 10 draws)."""
    inside = {"precision": 0, "recall": 0, "f1": 0}
    runs = 400
    for seed in range(runs):
        p, y = _calibrated_stream(1000, seed=100 + seed)
        est = PerformanceEstimator(_card(), window=1000, draws=400)
        est.update(p)
        e = est.estimate()
        a = p >= 0.5
        tp, fp, fn = int(np.sum(a & y)), int(np.sum(a & ~y)), int(np.sum(~a & y))
        real = {"precision": tp / (tp + fp), "recall": tp / (tp + fn),
                "f1": 2 * tp / (2 * tp + fp + fn)}
        for m, v in real.items():
            i = getattr(e, m)
            inside[m] += i.low <= v <= i.high
    for m, k in inside.items():
        assert 0.90 <= k / runs <= 0.99, (m, k)


def test_the_window_slides_and_the_same_windows_give_the_same_estimate() -> None:
    p, _ = _calibrated_stream(5000, seed=6)
    fed = PerformanceEstimator(_card(), window=1000)
    for chunk in np.array_split(p, 37):
        fed.update(chunk)
    fresh = PerformanceEstimator(_card(), window=1000)
    fresh.update(p[-1000:])
    assert len(fed) == 1000
    assert fed.estimate() == fresh.estimate()
    big = PerformanceEstimator(_card(), window=1000)
    big.update(p)  # more at once than the window holds
    assert big.estimate() == fresh.estimate()


def test_undefined_figures_are_left_out() -> None:
    est = PerformanceEstimator(_card(threshold=0.5))
    e = est.estimate()
    assert (e.windows, e.alerts, e.precision, e.recall, e.f1) == (0, 0, None, None, None)
    est.update(np.array([0.2, 0.1]))  # no alert: precision undefined; misses expected
    e = est.estimate()
    assert e.precision is None and e.recall is not None and e.recall.value == 0.0


def test_the_wire_refuses_numbers_from_an_uncalibrated_estimate() -> None:
    with pytest.raises(ValueError, match="carries no numbers"):
        wire.Estimate(windows=3, calibrated=False, alerts=1, expected_positives=1.0)
    with pytest.raises(ValueError, match="more alerts than windows"):
        wire.Estimate(windows=1, calibrated=True, alerts=2)
    with pytest.raises(ValueError, match="low is above high"):
        wire.Interval(value=0.5, low=0.6, high=0.4)


def test_the_agent_publishes_its_estimate_in_every_health_report(tmp_path: Path) -> None:
    cfg = agent_config.parse({
        "agent": {"id": "gw-estimate", "site": "plant1", "line": "line1"},
        "model": {"dir": str(MODEL)},
        "source": {"type": "replay", "path": str(TEST_FILE), "speed": 0, "step_s": 600,
                   "start": "2026-01-01T00:00:00Z",
                   "assets": [f"engine-{i:03d}" for i in range(1, 21)]},
        "mqtt": {"url": "mqtt://127.0.0.1:9"},  # never connected: no publisher started
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "estimate": {"window": 300},
    })
    agent = Agent(cfg, record=True)
    health: list[wire.Health] = []
    add = agent.batcher.add

    def capture(kind: str, items: list[wire.Item]) -> None:
        health.extend(i for i in items if isinstance(i, wire.Health))
        add(kind, items)

    agent.batcher.add = capture  # type: ignore[method-assign]
    try:
        for n, readings in enumerate(agent.source.ticks()):
            ready = agent._window(readings)
            if ready:
                agent._score(ready)
            if n % 50 == 49:
                agent._health(force=True)
        agent._health(force=True)
    finally:
        agent.outbox.close()
    scores = np.array([s.score for s in agent._scored])
    assert len(health) >= 3 and len(scores) > 300
    assert all(h.estimate is not None for h in health)
    last = health[-1].estimate
    assert last is not None and last.windows == 300 and last.calibrated
    # The card's horizon (30 cycles) in plant seconds, at the config's seconds per cycle.
    horizon_s = SHIPPED.output.horizon * agent.config.source.step_s
    again = PerformanceEstimator(SHIPPED, window=300, horizon_s=horizon_s)
    again.update(scores)
    assert last == again.estimate() and last.horizon_s == horizon_s
    payload = json.loads(wire.encode(wire.Envelope.build("gw-estimate", 0, agent.model_ref,
                                                         [health[-1]])))
    assert payload["items"][0]["estimate"]["windows"] == 300
