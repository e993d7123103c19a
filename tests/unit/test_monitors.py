"""The agent's monitors on small, hand-made streams (pure logic, no servers)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.monitors.cusum import ReferenceCusum, excursion_peaks, step
from agent.monitors.envelope import EnvelopeMonitor
from agent.monitors.quality import ChannelLimits, QualityMonitor
from agent.monitors.score import ScoreMonitor


def quality(**limits: ChannelLimits) -> QualityMonitor:
    return QualityMonitor(["a", "b", "unused"], limits or {
        "a": ChannelLimits(0.0, 10.0, stuck_samples=4), "b": ChannelLimits(0.0, 100.0)})


def starts(events, detector: str | None = None) -> list:
    return [e for e in events if e.state == "start" and detector in (None, e.detector)]


def test_nan_rows_are_skipped_counted_and_reported_once_per_stretch() -> None:
    q = quality()
    t = np.arange(4.0)
    v = np.array([[1.0, 1.0, 0], [np.nan, 1.0, 0], [1.0, np.inf, 0], [np.nan, 1.0, 0]])
    t2, v2 = q.clean("m1", t, v)
    assert t2.tolist() == [0.0] and v2.tolist() == [[1.0, 1.0, 0.0]]
    assert q.rejected_readings == 3
    events = q.events()
    assert sorted((e.monitor, e.detector) for e in starts(events)) == [("a", "nan"), ("b", "nan")]
    assert [e.since_s for e in starts(events) if e.monitor == "a"] == [1.0]
    q.clean("m1", np.array([5.0]), np.array([[np.nan, 2.0, 0]]))
    assert starts(q.events()) == []  # a still bad: no repeat
    q.clean("m1", np.array([6.0]), np.array([[1.0, 2.0, 0]]))
    assert [(e.monitor, e.state) for e in q.events()] == [("a", "end")]
    q.clean("m1", np.array([7.0]), np.array([[np.nan, 2.0, 0]]))
    assert [e.monitor for e in starts(q.events())] == ["a"]  # bad again: a new condition


def test_impossible_values_are_skipped_like_nan() -> None:
    q = quality()
    t, v = q.clean("m1", np.arange(3.0), np.array([[5.0, 50, 0], [45.0, 50, 0], [5, 50, 0]]))
    assert t.tolist() == [0.0, 2.0] and q.rejected_readings == 1
    assert [(e.monitor, e.detector, e.state) for e in q.events()] == [
        ("a", "impossible", "start"), ("a", "impossible", "end")]


@pytest.mark.parametrize("block", [1, 2, 7])
def test_stuck_channels_the_model_reads_are_reported_once_per_stretch(block: int) -> None:
    q = quality()
    a = [1, 2, 3, 3, 3, 3, 3, 3, 4, 5, 5, 5, 5, 6]  # stuck from the 3rd sample, again at the 10th
    values = np.column_stack([a, np.arange(14.0), np.zeros(14)]).astype(float)
    events = []
    for lo in range(0, 14, block):
        q.clean("m1", np.arange(lo, min(lo + block, 14), dtype=float), values[lo:lo + block])
        events += q.events()
    # "b" changes every sample; "unused" is constant but the model does not read it.
    stuck = starts(events, "stuck")
    assert [(e.monitor, e.at_s, e.since_s) for e in stuck] == [("a", 5.0, 2.0), ("a", 12.0, 9.0)]
    assert [e.at_s for e in events if e.state == "end"] == [8.0, 13.0]


def test_stuck_check_is_off_without_a_limit() -> None:
    q = quality(a=ChannelLimits(0.0, 10.0))
    q.clean("m1", np.arange(50.0), np.ones((50, 3)))
    assert q.events() == []


def _noisy(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(5.0, 0.1, n)


def test_a_step_of_one_channel_is_found_and_a_slow_trend_is_not() -> None:
    limits = ChannelLimits(0.0, 10.0, noise=0.1, step_threshold=8.0, step_rearm=4.0)
    q = QualityMonitor(["a"], {"a": limits}, step_window=10)
    offset = _noisy(120)
    offset[60:] += 1.0  # ten times the noise
    q.clean("m1", np.arange(120.0), offset[:, None])
    (event,) = q.events()
    assert (event.detector, event.channels) == ("step", ("a",))
    assert 60 <= event.at_s <= 70 and event.since_s is not None and event.since_s <= 60
    assert event.current is not None and event.reference is not None
    # Found before the recent mean holds the whole step: part of it, in the right direction.
    assert 0.2 < event.current - event.reference[2] < 1.2
    trend = _noisy(120, seed=1) + np.linspace(0.0, 2.0, 120)  # twice as far, but slowly
    q.clean("m2", np.arange(120.0), trend[:, None])
    assert q.events() == []


def test_a_step_is_reported_once_until_the_test_has_come_back_down() -> None:
    limits = ChannelLimits(0.0, 10.0, noise=0.1, step_threshold=8.0, step_rearm=4.0)
    q = QualityMonitor(["a"], {"a": limits}, step_window=10)
    x = _noisy(200)
    x[50:] += 1.0
    x[150:] += 1.0
    for i in range(200):  # one sample a tick, as a live gateway sees them
        q.clean("m1", np.array([float(i)]), x[i:i + 1, None])
    assert [50 <= e.at_s <= 60 or 150 <= e.at_s <= 160 for e in q.events()] == [True, True]


def test_gaps_are_reported_against_the_usual_interval() -> None:
    q = quality()
    t = np.r_[np.arange(20.0), 60.0, 61.0]
    q.clean("m1", t, np.column_stack([np.arange(22.0) % 7, t, np.zeros(22)]))
    (gap,) = q.events()
    assert (gap.detector, gap.at_s, gap.since_s, gap.value) == ("gap", 60.0, 19.0, 41.0)


def envelope(thresholds=(2.0, 2.0)) -> EnvelopeMonitor:
    return EnvelopeMonitor(["x.mean", "y.mean"], ["K", "bar"], low=[0.0, 0.0], high=[1.0, 1.0],
                           mean=[0.5, 0.5], scale=[0.5, 0.5], channels=[("x",), ("y",)],
                           allowance=0.5, thresholds=thresholds)


def test_inside_the_training_range_nothing_accumulates() -> None:
    m = envelope()
    rng = np.random.default_rng(3)
    for i in range(500):
        m.update(["a", "b"], rng.uniform(0.0, 1.0, (2, 2)), np.array([i, i], float))
    assert m.events() == [] and m.alarms == 0


def test_an_asset_foreign_from_its_first_window_is_caught_at_once() -> None:
    m = envelope()
    m.update(["a", "b"], np.array([[3.0, 0.5], [0.5, 0.5]]), np.array([100.0, 100.0]))
    (event,) = m.events()
    assert (event.asset, event.monitor, event.state, event.since_s, event.at_s) == (
        "a", "x.mean", "start", 100.0, 100.0)
    assert event.reference == (0.0, 1.0, 0.5) and event.current == 3.0
    assert m.outside("a") == ["x.mean"] and m.outside("b") == []


def test_a_condition_ends_when_the_asset_is_back_inside() -> None:
    m = envelope()
    # Exceedance 3 twice (CUSUM 2.5, 5.0), then inside: the CUSUM loses the allowance
    # (0.5) a window and is back at zero ten windows later.
    for i, v in enumerate([1.2, 2.5, 2.5] + [0.5] * 12):
        m.update(["a"], np.array([[v, 0.5]]), np.array([float(i)]))
    assert [(e.state, e.at_s, e.since_s) for e in m.events()] == [
        ("start", 1.0, 1.0), ("end", 12.0, 1.0)]


def test_several_windows_of_one_asset_in_one_call_are_taken_in_order() -> None:
    x = np.array([[1.6, 0.0], [1.6, 0.0], [1.6, 0.0], [0.5, 0.0]])
    one_call, one_by_one = envelope(), envelope()
    one_call.update(["a"] * 4, x, np.arange(4.0))
    for i in range(4):
        one_by_one.update(["a"], x[i:i + 1], np.array([float(i)]))
    assert one_call.events() == one_by_one.events() != []


def test_the_river_detector_and_the_array_recursion_agree() -> None:
    x = np.random.default_rng(5).exponential(0.4, 300)
    d = ReferenceCusum(allowance=0.5, threshold=1.5)
    s, online = np.zeros(1), []
    for v in x:
        d.update(float(v))
        s = step(s, np.array([v]), 0.5)
        online.append(d.statistic)
        assert d.statistic == pytest.approx(float(s[0]))
    _, peaks = excursion_peaks(x[:, None], 0.5)
    # Every excursion's peak is the largest statistic between two zeros.
    assert max(peaks) == pytest.approx(max(online))
    assert len(peaks) == sum(1 for a, b in zip([0.0, *online], online, strict=False)
                             if a == 0 and b > 0)


@pytest.mark.parametrize(("allowance", "threshold"), [(-1.0, 1.0), (0.5, 0.0)])
def test_the_detector_refuses_bad_parameters(allowance: float, threshold: float) -> None:
    with pytest.raises(ValueError):
        ReferenceCusum(allowance, threshold)


def test_the_alert_rate_monitor_is_quiet_at_the_reference_rate_and_fires_above_it() -> None:
    rng = np.random.default_rng(11)
    m = ScoreMonitor(p0=0.1, p1=0.2, threshold=12.0)
    m.update(rng.random(20_000) < 0.1, np.arange(20_000.0))
    assert m.events() == []
    m.update(rng.random(2_000) < 0.3, 20_000 + np.arange(2_000.0))
    (event,) = m.events()
    assert event.state == "start" and 19_900 <= event.since_s <= event.at_s < 20_500
    assert event.current is not None and event.current > 0.2


def test_a_new_models_limits_take_over_and_the_old_conditions_end_saying_why() -> None:
    old = QualityMonitor(["t", "p"], {"t": ChannelLimits(0.0, 10.0, stuck_samples=3),
                                      "p": ChannelLimits(0.0, 1.0)})
    stuck = np.array([[2.0, 0.5]] * 4)
    old.clean("a", np.arange(4.0), stuck)
    old.clean("b", np.arange(2.0), np.array([[np.nan, 0.5], [3.0, 0.5]]))  # one rejected
    assert [(e.asset, e.monitor, e.detector, e.state) for e in old.events()] == [
        ("a", "t", "stuck", "start"), ("b", "t", "nan", "start"), ("b", "t", "nan", "end")]

    # The new card no longer counts a flat t as stuck.
    new = old.handover({"t": ChannelLimits(0.0, 10.0), "p": ChannelLimits(0.0, 1.0)},
                       step_window=old.step_window)
    (ended,) = new.events()
    assert (ended.asset, ended.monitor, ended.detector, ended.state) == ("a", "t", "stuck", "end")
    assert ended.at_s == 3.0 and "the model changed" in ended.detail
    assert new.rejected_readings == old.rejected_readings == 1
    new.clean("a", np.arange(4.0, 10.0), np.array([[2.0, 0.5]] * 6))
    assert new.events() == []  # judged by the new limits only

    # Limits that still call it stuck: it starts again once they see it.
    again = old.handover(old.limits, step_window=old.step_window)
    again.clean("a", np.arange(4.0, 8.0), stuck)
    assert [(e.detector, e.state) for e in again.events()] == [("stuck", "start")]
