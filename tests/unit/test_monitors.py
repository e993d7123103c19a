from __future__ import annotations

from types import SimpleNamespace as S

import numpy as np
import pytest

from agent.monitors import DriftMonitor, QualityMonitor


def _card():
    return S(channel_names=["a", "b", "unused"],
             features=[S(name="a.mean", inputs=["a"], range=(0.0, 10.0)),
                       S(name="b.last", inputs=["b"], range=None)])


def test_nan_rows_are_dropped_counted_and_reported_once_per_stretch() -> None:
    q = QualityMonitor(_card(), range_margin=0.0)
    t = np.arange(4.0)
    v = np.array([[1.0, 1.0, 0], [np.nan, 1.0, 0], [1.0, np.inf, 0], [np.nan, 1.0, 0]])
    t2, v2 = q.clean("m1", t, v)
    assert t2.tolist() == [0.0] and v2.tolist() == [[1.0, 1.0, 0.0]]
    assert q.rejected_readings == 3
    events = q.events()
    assert sorted((e.monitor, e.detector) for e in events) == [("a", "nan"), ("b", "nan")]
    assert events[0].at_s == 1.0 or events[0].at_s == 2.0
    q.clean("m1", np.array([5.0]), np.array([[np.nan, 2.0, 0]]))
    assert q.events() == []  # a still bad: no repeat
    q.clean("m1", np.array([6.0]), np.array([[1.0, 2.0, 0]]))
    q.clean("m1", np.array([7.0]), np.array([[np.nan, 2.0, 0]]))
    assert [e.monitor for e in q.events()] == ["a"]  # recovered, then bad again: new event


@pytest.mark.parametrize("block", [1, 2, 7])
def test_stuck_channels_the_model_reads_are_reported_once_per_stretch(block: int) -> None:
    q = QualityMonitor(_card(), stuck_samples=4)
    a = [1, 2, 3, 3, 3, 3, 3, 3, 4, 5, 5, 5, 5, 6]  # stuck from the 6th sample, again at the 13th
    values = np.column_stack([a, np.arange(14.0), np.zeros(14)]).astype(float)
    events = []
    for lo in range(0, 14, block):
        q.clean("m1", np.arange(lo, min(lo + block, 14), dtype=float), values[lo:lo + block])
        events += q.events()
    # "b" changes every sample; "unused" is constant but the model does not read it.
    assert [(e.monitor, e.detector) for e in events] == [("a", "stuck"), ("a", "stuck")]
    assert [e.at_s for e in events] == [5.0, 12.0]


def test_stuck_check_is_off_by_default() -> None:
    q = QualityMonitor(_card())
    q.clean("m1", np.arange(50.0), np.ones((50, 3)))
    assert q.events() == []


def test_features_outside_the_widened_training_range_are_flagged() -> None:
    q = QualityMonitor(_card(), range_margin=0.5)
    ok = q.check_features(["m1", "m1", "m2"], np.array([[14.9, 1e9], [15.1, 0.0], [-5.1, 0.0]]),
                          np.array([1.0, 2.0, 3.0]))
    assert ok.tolist() == [True, False, False]
    events = q.events()
    assert [(e.asset, e.monitor, e.detector) for e in events] == [
        ("m1", "a.mean", "range"), ("m2", "a.mean", "range")]
    assert q.out_of_range == 2


def test_negative_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        QualityMonitor(_card(), range_margin=-1)
    with pytest.raises(ValueError):
        QualityMonitor(_card(), stuck_samples=-1)


def test_drift_monitor_fires_on_a_shift_and_not_on_a_stationary_stream() -> None:
    rng = np.random.default_rng(0)
    quiet = DriftMonitor("adwin", delta=0.002)
    for s in rng.uniform(0, 0.2, 3000):
        quiet.update(float(s), 0.0)
    assert quiet.detections == 0 and quiet.events() == []
    shifted = DriftMonitor("adwin", delta=0.002)
    stream = np.r_[rng.uniform(0, 0.2, 1000), rng.uniform(0.5, 0.9, 1000)]
    for i, s in enumerate(stream):
        shifted.update(float(s), float(i))
    events = shifted.events()
    assert shifted.detections >= 1 and events
    assert events[0].monitor == "score" and events[0].detector == "ADWIN"
    assert 1000 <= events[0].at_s < 1200


@pytest.mark.parametrize(("detector", "delta"), [("kswin", 0.1), ("adwin", 0.0), ("adwin", 1.0)])
def test_drift_monitor_refuses_bad_parameters(detector: str, delta: float) -> None:
    with pytest.raises(ValueError):
        DriftMonitor(detector, delta)
