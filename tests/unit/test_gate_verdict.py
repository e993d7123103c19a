"""The promotion gate's verdict over chosen figures: when it is ready, what passes, and
each failure named in words a plant manager reads."""

from __future__ import annotations

import dataclasses

import pytest

from aggregator.rollout.gate import Figures, GatePolicy, judge

POLICY = GatePolicy()
GOOD = Figures(windows=250, agreement=0.97, score_mad=0.01, candidate_alerts=12,
               baseline_alerts=11, estimated_f1=0.80, f1_target=0.78, new_drift=0)


def with_(**changes: object) -> Figures:
    return dataclasses.replace(GOOD, **changes)  # type: ignore[arg-type]


def test_good_figures_pass() -> None:
    verdict = judge(GOOD, POLICY)
    assert (verdict.ready, verdict.passed, verdict.reasons) == (True, True, ())
    assert verdict.figures == GOOD


def test_too_few_common_windows_is_not_ready_and_says_how_many() -> None:
    verdict = judge(with_(windows=120), POLICY)
    assert (verdict.ready, verdict.passed) == (False, False)
    assert verdict.reasons == ("120 of 200 windows compared so far",)
    assert judge(with_(windows=200), POLICY).passed  # the bound itself is enough


def test_low_agreement_fails_with_both_percentages() -> None:
    verdict = judge(with_(agreement=0.91), POLICY)
    assert (verdict.ready, verdict.passed) == (True, False)
    assert verdict.reasons == ("agrees with the live model on 91 % of windows, needs 95 %",)
    # Just below the bound never reads as the bound itself.
    assert judge(with_(agreement=0.9499), POLICY).reasons == (
        "agrees with the live model on 94.9 % of windows, needs 95 %",)
    assert judge(with_(agreement=0.95), POLICY).passed


def test_estimated_f1_below_the_cards_target_by_more_than_the_margin_fails() -> None:
    verdict = judge(with_(estimated_f1=0.61), POLICY)
    assert verdict.reasons == ("estimated F1 0.61 against the card's 0.78 (margin 0.05)",)
    assert judge(with_(estimated_f1=0.74), POLICY).passed  # within the margin
    assert not judge(with_(estimated_f1=0.72), POLICY).passed


def test_a_missing_estimate_or_target_skips_the_f1_check_unless_required() -> None:
    assert judge(with_(estimated_f1=None), POLICY).passed
    assert judge(with_(f1_target=None, estimated_f1=0.1), POLICY).passed
    strict = GatePolicy(require_estimate=True)
    assert judge(with_(estimated_f1=None), strict).reasons == (
        "no estimated F1 from its agents yet",)


def test_new_drift_fails_and_is_counted() -> None:
    assert judge(with_(new_drift=2), POLICY).reasons == (
        "2 new drift conditions on its agents since the stage began",)
    assert judge(with_(new_drift=1), POLICY).reasons == (
        "1 new drift condition on its agents since the stage began",)
    lenient = GatePolicy(max_new_drift=1)
    assert judge(with_(new_drift=1), lenient).passed
    assert judge(with_(new_drift=3), lenient).reasons == (
        "3 new drift conditions on its agents since the stage began, 1 allowed",)


def test_every_failure_is_named_in_order() -> None:
    verdict = judge(with_(agreement=0.5, estimated_f1=0.2, new_drift=4), POLICY)
    assert [r.split(" ")[0] for r in verdict.reasons] == ["agrees", "estimated", "4"]


def test_before_it_is_ready_a_failing_f1_or_drift_is_already_named() -> None:
    """A canary that drifts must not wait for its window count to be rolled back."""
    verdict = judge(with_(windows=10, agreement=0.2, new_drift=1), POLICY)
    assert (verdict.ready, verdict.passed) == (False, False)
    assert verdict.reasons == ("10 of 200 windows compared so far",
                               "1 new drift condition on its agents since the stage began")


@pytest.mark.parametrize("windows", [0, 1, 199])
def test_no_common_window_judges_nothing(windows: int) -> None:
    verdict = judge(with_(windows=windows, agreement=None if windows == 0 else 1.0,
                          score_mad=None), POLICY)
    assert not verdict.ready and not verdict.passed
