"""How each model version ran (``aggregator.operations``) and how the report words it:
known inputs, figures derived here from them, the small-count and no-data cases."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from aggregator.figures import compute, wilson
from aggregator.operations import (
    ConditionFact,
    EventFact,
    Finding,
    ScoreReference,
    agents,
    latency,
    operations,
    score_shift,
    tally,
)
from aggregator.report import render_markdown
from aggregator.series import HealthSummary, ScoreCounts
from contract.card import Stats

SINCE, UNTIL = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
# Quartiles of a reference whose 5 % tail starts at 0.9: bins expect 25, 25, 25, 20, 5 %.
STATS = Stats(mean=0.3, std=0.3, min=0.0, max=1.0,
              quantiles={"p25": 0.01, "p50": 0.1, "p75": 0.5, "p95": 0.9})
REFERENCE = ScoreReference.from_stats(STATS, alert_rate=0.1)


def psi(observed: list[float], expected: list[float]) -> float:
    return sum((max(o, 1e-4) - max(e, 1e-4)) * math.log(max(o, 1e-4) / max(e, 1e-4))
               for o, e in zip(observed, expected, strict=True))


def test_findings_are_counted_per_monitor_and_detector_and_split_by_kind() -> None:
    found = tally([("sensor_4", "stuck", "e1"), ("sensor_4", "stuck", "e2"),
                   ("sensor_4", "stuck", "e2"), ("samples", "gap", "e3"),
                   ("sensor_11.mean", "envelope", "e1"), ("score", "alert_rate", None)])
    assert (found.drift, found.quality) == (2, 4)
    assert found.items[0] == Finding("quality", "sensor_4", "stuck", 3, 2)
    assert Finding("drift", "score", "alert_rate", 1, 0) in found.items
    assert Finding("quality", "samples", "gap", 1, 1) in found.items
    assert tally([]) == tally(())


def test_reference_bins_merge_tied_quantiles_and_end_at_the_maximum() -> None:
    assert REFERENCE is not None
    assert (REFERENCE.edges, REFERENCE.levels, REFERENCE.p95) == (
        (0.01, 0.1, 0.5, 0.9), (0.25, 0.5, 0.75, 0.95), 3)
    tied = ScoreReference.from_stats(Stats(mean=0, std=0, min=0, max=1, quantiles={
        "p01": 0.0, "p75": 0.0, "p95": 0.2, "p99": 1.0}))
    assert tied is not None
    assert (tied.edges, tied.levels, tied.names) == ((0.0, 0.2, 1.0), (0.75, 0.95, 1.0),
                                                     ("p01-p75", "p95", "p99"))
    assert ScoreReference.from_stats(Stats(mean=0, std=0, min=0, max=1)) is None


def test_scores_against_the_reference() -> None:
    assert REFERENCE is not None
    # 1000 windows: 200, 200, 200, 250, 150 per bin, 160 of them alerting.
    windows, per_bin, alert = 1000, [200, 200, 200, 250, 150], 160
    at_most = tuple(sum(per_bin[:i + 1]) for i in range(4))
    shift = score_shift(ScoreCounts(windows, alert, at_most), REFERENCE)
    expected = [0.25, 0.25, 0.25, 0.2, 0.05]
    value = psi([n / windows for n in per_bin], expected)
    assert shift.psi == pytest.approx(value)
    assert shift.reading == ("stable" if value < 0.1 else "moderate" if value <= 0.25
                             else "shifted")
    assert shift.direction == "upwards"  # mass moved into the upper bins
    assert [b.windows for b in shift.bins] == per_bin
    assert [b.expected for b in shift.bins] == pytest.approx(expected)
    assert (shift.above_p95, shift.above_p95_expected) == (pytest.approx(0.15),
                                                           pytest.approx(0.05))
    low, high = wilson(alert, windows)
    assert (shift.alert_rate.value, shift.alert_rate.low, shift.alert_rate.high) == (
        0.16, low, high)
    assert shift.alert_rate_reading == ("higher" if low > 0.1 else "in_line")

    same = score_shift(ScoreCounts(200, 20, (50, 100, 150, 190)), REFERENCE)
    assert (same.reading, same.psi, same.direction, same.alert_rate_reading) == (
        "stable", pytest.approx(0.0), None, "in_line")
    lower = score_shift(ScoreCounts(1000, 0, (1000, 1000, 1000, 1000)), REFERENCE)
    assert (lower.reading, lower.direction, lower.alert_rate_reading) == (
        "shifted", "downwards", "lower")


def test_few_or_no_windows_or_no_reference_say_so() -> None:
    few = score_shift(ScoreCounts(99, 3, (20, 40, 60, 90)), REFERENCE)
    assert (few.reading, few.psi, few.reason) == (
        "not_enough_data", None, "99 scored windows; at least 100 are needed")
    assert not few.alert_rate.enough and few.alert_rate_reading is None
    none = score_shift(ScoreCounts(0, 0, (0, 0, 0, 0)), REFERENCE)
    assert (none.reading, none.above_p95, none.alert_rate.value) == (
        "not_enough_data", None, None)
    assert score_shift(None, None).reason == \
        "no model card with a score reference for this version"
    assert score_shift(None, REFERENCE).reason == "the series store could not be read"
    with pytest.raises(ValueError, match="3 counts for 4 edges"):
        score_shift(ScoreCounts(1, 0, (0, 0, 0)), REFERENCE)


def test_agents_completeness_and_latency() -> None:
    a = agents(["gw-1", "gw-2", "gw-3", "gw-1"],
               {"gw-1": (990, 10), "gw-2": (500, 0), "gw-9": (7, 7)})
    assert (a.reporting, a.complete, a.incomplete) == (3, 2, ("gw-1",))
    assert (a.windows_received, a.windows_undeliverable) == (1490, 10)
    assert a.completeness == pytest.approx(1490 / 1500)
    assert agents([], {}).completeness is None

    h = [HealthSummary("p", "l", f"gw-{i}", "m", "1", 5, ms, top)
         for i, (ms, top) in enumerate([(0.4, 0.9), (0.8, 3.0), (2.0, 2.5)])]
    assert latency(h) == latency(reversed(h))
    got = latency(h)
    assert (got.reports, got.agents, got.median_ms, got.max_ms) == (15, 3, 0.8, 3.0)
    empty = latency([])
    assert (empty.median_ms, empty.max_ms, empty.agents) == (None, None, 0)


def test_operations_per_model_version_and_the_report_words_them() -> None:
    assert REFERENCE is not None
    h = [HealthSummary("p", "l", "gw-1", "m", "1", 10, 0.5, 0.7),
         HealthSummary("p", "l", "gw-2", "m", "2", 10, None, None)]
    conditions = [ConditionFact("m", "1", "sensor_4", "stuck", f"e{i}") for i in (1, 2)]
    events = [EventFact("m", "1", "sensor_4", "stuck", "e1")] * 2 + [
        EventFact("m", "2", "score", "alert_rate", None)]
    ops = operations([("m", "1")], summaries=h, delivery={"gw-1": (1000, 0)},
                     conditions=conditions, events=events, events_truncated=False,
                     scores={("m", "1"): ScoreCounts(1000, 100, (250, 500, 750, 950))},
                     references={("m", "1"): REFERENCE, ("m", "2"): REFERENCE})
    assert [o.key for o in ops] == ["m@1", "m@2"]
    one, two = ops
    assert (one.agents.reporting, one.latency.median_ms, one.scores.reading) == (
        1, 0.5, "stable")
    assert (one.conditions.quality, one.events.quality, two.events.drift) == (2, 2, 1)
    assert (two.scores.windows, two.scores.reading) == (0, "not_enough_data")
    assert two.agents.completeness is None

    figures = replace(compute([], since=SINCE, until=UNTIL, target_f1=0.8), operations=ops)
    text = render_markdown(figures)
    assert ("m 1: 1 agent reported, 1 complete (100.0 % of 1,000 windows arrived); "
            "inference 0.5 ms median") in text
    assert ("Scores of 1,000 windows: 5 % above the reference's 95th percentile (5 % "
            "expected); PSI 0.00 against the card's reference: stable") in text
    assert ("0 input-drift conditions and 2 data-quality conditions (sensor_4 stuck on 2 "
            "assets). The agents sent 0 drift events and 2 data-quality events") in text
    assert ("m 2: 1 agent reported, 1 complete (no delivery records for the period); no "
            "inference time reported.") in text
    assert ("Scores: not enough data to compare with the card's reference (0 scored "
            "windows; at least 100 are needed).") in text

    down = operations([("m", "1")], summaries=None, delivery={}, conditions=[],
                      events=None, events_truncated=False, scores={},
                      references={("m", "1"): REFERENCE})
    assert not down[0].series_available
    text = render_markdown(replace(figures, operations=down))
    assert "No agent sent a health report on it." in text
    assert "Scores: not compared with a reference (the series store could not be read)." \
        in text
    assert "The agents' events could not be read (series store down)." in text
