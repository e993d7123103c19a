"""The gateways' estimates: combined per group, and windows judged against failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aggregator.estimates import Failure, WindowTally, combine, tally
from aggregator.figures import Group, compute
from aggregator.series import HealthPoint, PredictionPoint, StoredEstimate

T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(seconds=2000)
H = {("gw-1", "m", "1"): 100.0}


def window(asset: str, end_s: int, alert: bool, agent: str = "gw-1",
           line: str = "l1") -> PredictionPoint:
    end = T0 + timedelta(seconds=end_s)
    return PredictionPoint(site="s", line=line, agent=agent, asset=asset, model="m",
                           model_version="1", window_start=end - timedelta(seconds=30),
                           window_end=end, score=0.9 if alert else 0.1, alert=alert, seq=0)


def test_windows_are_judged_by_the_failures_within_the_horizon() -> None:
    fail_a = T0 + timedelta(seconds=1000)
    alerts = [
        window("A", 950, True),   # failure 50 s later: right
        window("A", 850, True),   # horizon ended at 950, before the failure: false
        window("B", 500, True),   # no failure, horizon over by UNTIL: false
        window("B", 1950, True),  # horizon not over by UNTIL: not judged yet
        window("C", 400, True),   # a real fault of unknown time: not judged
        window("D", 300, True, agent="gw-9"),  # an agent without a horizon: not judged
    ]
    before_a = [window("A", 920, False), window("A", 950, True), window("A", 990, False),
                window("A", 880, False)]  # 880 + 100 < 1000: not a positive
    failures = [Failure("s", "A", fail_a), Failure("s", "C", None)]
    out = tally(alerts, before_a, failures, H, until=UNTIL)
    assert out[Group.overall()] == WindowTally(real=1, false=2, missed=2)
    assert out[Group.of_line("s", "l1")] == out[Group.of_model("m", "1")]


def test_a_failure_after_the_period_still_makes_an_alert_right() -> None:
    alerts = [window("A", 1990, True)]
    out = tally(alerts, [], [Failure("s", "A", UNTIL + timedelta(seconds=50))], H,
                until=UNTIL)
    assert out[Group.overall()] == WindowTally(real=1)


def report(agent: str, est: StoredEstimate, line: str = "l1") -> HealthPoint:
    return HealthPoint(site="s", line=line, agent=agent, at=T0, windows_scored=est.windows,
                       outbox_depth=0, outbox_dropped=0, rejected_readings=0,
                       inference_ms_median=None, model="m", model_version="1", seq=0,
                       estimate=est)


def test_combine_is_the_exact_pooled_figure_and_skips_the_uncalibrated() -> None:
    """Pooled precision is expected true positives over alerts: the alerts-weighted mean
    of the agents' precisions; recall weighs by expected positives."""
    a = StoredEstimate(windows=200, alerts=10, calibrated=True, expected_positives=12.0,
                       precision=0.9, precision_low=0.8, precision_high=1.0, recall=0.75,
                       recall_low=0.6, recall_high=0.85)
    b = StoredEstimate(windows=300, alerts=30, calibrated=True, expected_positives=18.0,
                       precision=0.5, precision_low=0.4, precision_high=0.6, recall=0.8333,
                       recall_low=0.7, recall_high=0.9)
    c = StoredEstimate(windows=1000, alerts=400, calibrated=False)
    got = combine(Group.overall(), [report("a", a), report("b", b), report("c", c)])
    assert got is not None
    tp = 0.9 * 10 + 0.5 * 30
    assert abs(got.precision - tp / 40) < 1e-12  # type: ignore[operator]
    assert abs(got.recall - (0.75 * 12 + 0.8333 * 18) / 30) < 1e-12  # type: ignore[operator]
    assert got.f1 is None  # neither agent sent an F1
    assert got.windows == 500 and got.window_real is None
    assert got.precision_low < got.precision < got.precision_high  # type: ignore[operator]
    assert combine(Group.overall(), [report("c", c)]) is None


def test_the_check_uses_windows_when_judged_and_says_so() -> None:
    est = combine(Group.overall(), [report("a", StoredEstimate(
        windows=100, alerts=10, calibrated=True, expected_positives=9.0, precision=0.8,
        precision_low=0.7, precision_high=0.9))], WindowTally(real=8, false=2, missed=1))
    assert est is not None
    f = compute([], since=T0, until=UNTIL, target_f1=0.8, estimates=[est])
    (check,) = f.overall.estimates
    assert check.basis == "windows" and check.realised.n == 10
    assert check.realised.value == 0.8 and check.agrees is True
