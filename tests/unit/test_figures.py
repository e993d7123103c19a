"""Model health figures from ticket outcomes (aggregator.figures; pure, no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from aggregator import db, outcomes
from aggregator.figures import (
    AssetCount,
    Drift,
    DriftCondition,
    GatewayEstimate,
    Group,
    HealthFigures,
    MissedFailure,
    TicketFact,
    compute,
    decide,
    f1_figure,
    f1_interval,
    proportion,
    wilson,
)

SINCE = datetime(2025, 10, 1, tzinfo=UTC)
UNTIL = datetime(2025, 12, 1, tzinfo=UTC)
MID = datetime(2025, 11, 10, tzinfo=UTC)
NO_DRIFT = Drift((), 0, 0, 0)

_ids = iter(range(1, 10**6))


def ticket(outcome: str | None = "confirmed_failure", *, kind: str = "maintenance",
           site: str = "p1", line: str = "l1", asset: str | None = None,
           model: tuple[str, str] = ("m", "1"), opened: datetime | None = None,
           first_alert: datetime | None = None, resolved: datetime | None = MID,
           failed: datetime | None = None) -> TicketFact:
    i = next(_ids)
    opened = opened if opened is not None else (resolved or MID) - timedelta(days=2)
    return TicketFact(id=i, kind=kind, site=site, line=line, asset=asset or f"e{i}",
                      model_name=model[0], model_version=model[1], opened_at=opened,
                      first_alert_at=first_alert,
                      resolved_at=resolved if outcome is not None else None,
                      outcome=outcome, failed_at=failed)


def many(n: int, outcome: str, **kw: Any) -> list[TicketFact]:
    return [ticket(outcome, **kw) for _ in range(n)]


def run(tickets: list[TicketFact], missed: list[MissedFailure] | None = None,
        **kw: Any) -> HealthFigures:
    kw.setdefault("since", SINCE)
    kw.setdefault("until", UNTIL)
    kw.setdefault("target_f1", 0.8)
    return compute(tickets, missed or [], **kw)


def missed_failure(asset: str = "e-missed", *, site: str = "p1", line: str = "l1",
                   at: datetime = MID, model: tuple[str, str] | None = ("m", "1")
                   ) -> MissedFailure:
    return MissedFailure(asset, site, line, at, *(model or (None, None)))


# --------------------------------------------------------------------------- vocabulary


def test_the_outcome_classes_partition_the_vocabulary_and_each_has_a_meaning() -> None:
    assert set(outcomes.OUTCOMES) == (outcomes.REAL_FAULT | outcomes.FALSE_ALARM
                                      | outcomes.NOT_COUNTED)
    assert not outcomes.REAL_FAULT & outcomes.FALSE_ALARM
    assert all(meaning and "\n" not in meaning for _, meaning in outcomes.OUTCOME_MEANINGS)
    assert {"preventive_action", "sensor_fault"} <= set(outcomes.OUTCOMES)


def test_every_outcome_the_database_allows_has_a_class() -> None:
    assert set(db.OUTCOMES) <= set(outcomes.OUTCOMES)


def test_classify_refuses_an_unknown_outcome() -> None:
    with pytest.raises(ValueError, match="outcome must be one of"):
        outcomes.classify("fixed")


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (31, 40, 0.6250, 0.8768),
        # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_known_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_without_trials_is_none_and_bounds_are_exact_at_the_ends() -> None:
    assert wilson(0, 0) is None
    assert wilson(5, 5) == (pytest.approx(0.5655, abs=1e-4), 1.0)
    assert wilson(0, 5)[0] == 0.0  # type: ignore[index]


@pytest.mark.parametrize(("k", "n"), [(-1, 3), (4, 3)])
def test_wilson_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(k, n)


@pytest.mark.parametrize(
    "counts",
    [(5, 0, 0), (0, 5, 0), (0, 0, 5), (1, 0, 0), (3, 2, 1), (31, 9, 4), (2, 40, 1),
     (200, 30, 25), (1, 1, 1)],
)
def test_f1_interval_contains_the_point_estimate(counts: tuple[int, int, int]) -> None:
    fig = f1_figure(*counts)
    assert fig.value is not None and fig.low is not None and fig.high is not None
    assert 0.0 <= fig.low <= fig.value <= fig.high <= 1.0


def test_f1_interval_reaches_one_without_errors_and_zero_without_real_faults() -> None:
    assert f1_interval(5, 0, 0)[1] == 1.0  # type: ignore[index]
    assert f1_interval(0, 3, 2)[0] == 0.0  # type: ignore[index]
    assert f1_interval(0, 0, 0) is None


def test_f1_interval_narrows_with_more_data() -> None:
    widths = []
    for scale in (1, 10, 100):
        low, high = f1_interval(3 * scale, scale, scale)  # type: ignore[misc]
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.08  # 300 real, 100 false, 100 missed: about +-0.03


def test_f1_interval_is_deterministic_and_pinned() -> None:
    # Exact arithmetic, no sampling: the same bounds on every run and every machine.
    assert f1_interval(31, 9, 4) == f1_interval(31, 9, 4)
    assert f1_interval(31, 9, 4) == pytest.approx((0.7161, 0.9002), abs=1e-4)


@pytest.mark.parametrize("counts", [(31, 9, 4), (50, 10, 10), (8, 20, 12), (120, 15, 30)])
def test_f1_interval_agrees_with_the_dirichlet_posterior_for_moderate_counts(
        counts: tuple[int, int, int]) -> None:
    # The Bayesian reading: uniform Dirichlet(1, 1, 1) prior over (real, false, missed),
    # posterior by Monte Carlo with a fixed seed (400k draws: bounds stable to ~0.002).
    rng = np.random.default_rng(20260101)
    p = rng.dirichlet(np.array(counts) + 1.0, size=400_000)
    f1 = 2 * p[:, 0] / (2 * p[:, 0] + p[:, 1] + p[:, 2])
    bayes = np.quantile(f1, [0.025, 0.975])
    assert f1_interval(*counts) == pytest.approx(tuple(bayes), abs=0.02)


def test_a_figure_below_the_minimum_keeps_its_interval_but_is_flagged() -> None:
    few = proportion(4, 4)
    assert (few.value, few.high, few.n, few.enough) == (1.0, 1.0, 4, False)
    assert few.low == pytest.approx(0.5101, abs=1e-4)
    assert proportion(4, 5).enough
    assert proportion(4, 5, min_outcomes=6).enough is False


def test_no_outcomes_means_no_value_not_zero_nor_hundred_percent() -> None:
    for fig in (proportion(0, 0), f1_figure(0, 0, 0)):
        assert (fig.value, fig.low, fig.high, fig.n, fig.enough) == (None, None, None, 0,
                                                                     False)


# --------------------------------------------------------------------------- counting


def test_real_false_and_not_counted_outcomes() -> None:
    f = run(many(3, "confirmed_failure") + many(2, "preventive_action")
            + many(2, "no_fault_found") + many(1, "sensor_fault")
            + many(4, "superseded") + many(3, "other") + many(2, None))
    o = f.overall
    assert (o.real, o.false_alarms, o.alerts, o.not_counted, o.open) == (5, 3, 8, 7, 2)
    assert o.precision.value == pytest.approx(5 / 8)
    assert o.precision.n == 8
    assert (o.cost.visits, o.cost.wasted_visits) == (8, 3)


def test_superseded_and_other_change_no_figure() -> None:
    base = many(6, "confirmed_failure") + many(2, "no_fault_found")
    with_noise = base + many(5, "superseded") + many(5, "other")
    a, b = run(base).overall, run(with_noise).overall
    assert (a.precision, a.recall, a.f1) == (b.precision, b.recall, b.f1)


def test_only_maintenance_tickets_are_alerts() -> None:
    f = run(many(3, "confirmed_failure", kind="sensor") + many(2, "no_fault_found",
                                                                 kind="inspect"))
    assert f.overall.alerts == 0
    assert f.overall.precision.value is None


def test_tickets_belong_to_the_period_they_were_resolved_in() -> None:
    before = many(3, "confirmed_failure", resolved=SINCE - timedelta(seconds=1))
    after = many(3, "confirmed_failure", resolved=UNTIL)
    inside = many(2, "no_fault_found", resolved=SINCE, opened=SINCE - timedelta(days=30))
    o = run(before + after + inside).overall
    assert (o.real, o.false_alarms) == (0, 2)
    assert o.open == 3  # resolved at `until`: still open when the period ended


def test_missed_failures_lower_recall_and_f1_but_not_precision() -> None:
    tickets = many(8, "confirmed_failure") + many(2, "no_fault_found")
    without = run(tickets).overall
    with_missed = run(tickets, [missed_failure(f"x{i}") for i in range(4)]).overall
    assert without.recall.value == 1.0
    assert with_missed.recall.value == pytest.approx(8 / 12)
    assert with_missed.missed == 4
    assert with_missed.precision == without.precision
    assert with_missed.f1.value < without.f1.value  # type: ignore[operator]
    assert [m.asset for m in with_missed.missed_failures] == ["x0", "x1", "x2", "x3"]


def test_missed_failures_outside_the_period_are_left_out() -> None:
    f = run(many(5, "confirmed_failure"), [missed_failure(at=UNTIL),
                                           missed_failure(at=SINCE - timedelta(days=1))])
    assert f.overall.missed == 0


# --------------------------------------------------------------------------- groups


def test_grouping_per_model_version() -> None:
    old = many(6, "confirmed_failure", model=("m", "1")) + many(4, "no_fault_found",
                                                                   model=("m", "1"))
    new = many(9, "confirmed_failure", model=("m", "2")) + many(1, "no_fault_found",
                                                                   model=("m", "2"))
    f = run(old + new, [missed_failure(model=("m", "2"))])
    assert [g.group.key for g in f.by_model] == ["m@1", "m@2"]
    v1, v2 = f.by_model
    assert (v1.real, v1.false_alarms, v1.missed) == (6, 4, 0)
    assert (v2.real, v2.false_alarms, v2.missed) == (9, 1, 1)
    assert f.overall.alerts == 20
    assert v2.group.label == "m 2"


def test_a_missed_failure_without_a_model_counts_everywhere_but_per_model() -> None:
    f = run(many(5, "confirmed_failure"), [missed_failure(model=None)])
    assert f.overall.missed == 1
    assert f.by_site[0].missed == 1 and f.by_line[0].missed == 1
    assert f.by_model[0].missed == 0
    assert f.unattributed_missed == 1


def test_grouping_per_site_and_per_line_keeps_same_named_lines_apart() -> None:
    tickets = (many(3, "confirmed_failure", site="p1", line="l1")
               + many(2, "no_fault_found", site="p1", line="l2")
               + many(4, "confirmed_failure", site="p2", line="l1"))
    f = run(tickets)
    assert {g.group.key: g.alerts for g in f.by_site} == {"p1": 5, "p2": 4}
    assert {g.group.key: g.alerts for g in f.by_line} == {"p1/l1": 3, "p1/l2": 2,
                                                          "p2/l1": 4}
    assert f.by_line[0].group.label == "l1 (p1)"


def test_grouping_per_calendar_month() -> None:
    october = many(2, "confirmed_failure", resolved=datetime(2025, 10, 31, 23, tzinfo=UTC))
    november = (many(3, "no_fault_found", resolved=datetime(2025, 11, 1, tzinfo=UTC))
                + many(1, "confirmed_failure", resolved=datetime(2025, 11, 30, tzinfo=UTC)))
    f = run(october + november,
            [missed_failure(at=datetime(2025, 10, 5, tzinfo=UTC))])
    assert [(g.group.key, g.group.label) for g in f.by_month] == [
        ("2025-10", "Oct 2025"), ("2025-11", "Nov 2025")]
    oct_, nov = f.by_month
    assert (oct_.real, oct_.false_alarms, oct_.missed) == (2, 0, 1)
    assert (nov.real, nov.false_alarms, nov.missed) == (1, 3, 0)
    assert oct_.start == SINCE and oct_.end == datetime(2025, 11, 1, tzinfo=UTC)
    assert oct_.verdict is None and nov.verdict is None


def test_months_are_cut_to_the_period() -> None:
    f = run([], since=datetime(2025, 10, 15, tzinfo=UTC),
            until=datetime(2025, 12, 2, tzinfo=UTC))
    assert [g.group.key for g in f.by_month] == ["2025-10", "2025-11", "2025-12"]
    assert f.by_month[0].start == datetime(2025, 10, 15, tzinfo=UTC)
    assert f.by_month[-1].months == pytest.approx(1 / (365.2425 / 12))


# --------------------------------------------------------------------------- lead time, rates, cost


def test_lead_time_median_and_quartiles_from_first_alert_to_failure() -> None:
    t0 = datetime(2025, 11, 1, tzinfo=UTC)
    tickets = [ticket("confirmed_failure", opened=t0, first_alert=t0 - timedelta(days=1),
                      failed=t0 + timedelta(days=d), resolved=t0 + timedelta(days=d + 1))
               for d in (1, 3, 5, 7, 9)]  # lead times 2, 4, 6, 8, 10 days
    lt = run(tickets).overall.lead_time
    assert (lt.n, lt.from_resolution) == (5, 0)
    assert lt.median_s == pytest.approx(6 * 86_400)
    assert (lt.q1_s, lt.q3_s) == (pytest.approx(4 * 86_400), pytest.approx(8 * 86_400))


def test_lead_time_uses_the_resolution_time_when_no_failure_time_and_says_so() -> None:
    t0 = datetime(2025, 11, 1, tzinfo=UTC)
    tickets = [ticket("preventive_action", opened=t0, resolved=t0 + timedelta(hours=10)),
               ticket("confirmed_failure", opened=t0, resolved=t0 + timedelta(days=9),
                      failed=t0 + timedelta(hours=30)),
               ticket("no_fault_found", opened=t0, resolved=t0 + timedelta(days=1))]
    lt = run(tickets).overall.lead_time
    assert (lt.n, lt.from_resolution) == (2, 1)
    assert lt.median_s == pytest.approx(20 * 3600)  # median of 10 h and 30 h


def test_no_real_faults_no_lead_time() -> None:
    lt = run(many(3, "no_fault_found")).overall.lead_time
    assert (lt.n, lt.median_s, lt.q1_s, lt.q3_s) == (0, None, None, None)


def test_false_alarms_per_asset_per_month() -> None:
    since, until = datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
    resolved = datetime(2025, 6, 1, tzinfo=UTC)
    tickets = many(12, "no_fault_found", resolved=resolved, site="p1", line="l1") + many(
        6, "no_fault_found", resolved=resolved, site="p1", line="l2")
    f = run(tickets, since=since, until=until,
            assets=[AssetCount(40, "p1", "l1", "m", "1"), AssetCount(10, "p1", "l2", "m", "1")])
    months = 365 / (365.2425 / 12)
    assert f.overall.assets == 50
    assert f.overall.false_alarms_per_asset_month == pytest.approx(18 / (50 * months))
    by_line = {g.group.key: g for g in f.by_line}
    assert by_line["p1/l1"].assets == 40
    assert by_line["p1/l2"].false_alarms_per_asset_month == pytest.approx(6 / (10 * months))
    june = next(g for g in f.by_month if g.group.key == "2025-06")
    assert june.false_alarms_per_asset_month == pytest.approx(18 / (50 * 30 / (365.2425 / 12)))


def test_asset_count_unknown_for_a_breakdown_it_lacks() -> None:
    f = run(many(2, "no_fault_found"), assets=[AssetCount(100)])
    assert f.overall.assets == 100 and f.overall.false_alarms_per_asset_month is not None
    assert f.by_site[0].assets is None and f.by_site[0].false_alarms_per_asset_month is None
    assert run(many(2, "no_fault_found")).overall.false_alarms_per_asset_month is None


def test_cost_in_visits_and_money() -> None:
    f = run(many(7, "confirmed_failure") + many(3, "sensor_fault"), visit_cost=250.0,
            currency="EUR")
    c = f.overall.cost
    assert (c.visits, c.wasted_visits, c.total, c.wasted, c.currency) == (10, 3, 2500.0,
                                                                          750.0, "EUR")
    assert run(many(2, "confirmed_failure")).overall.cost.total is None


# --------------------------------------------------------------------------- drift


def test_open_retraining_tickets_and_active_conditions_are_drift_facts() -> None:
    retraining = [ticket(None, kind="retraining", line="*", asset="model:m@1",
                         opened=MID),
                  ticket("other", kind="retraining", line="*", asset="model:m@1",
                         opened=SINCE, resolved=MID)]
    conditions = [DriftCondition("e1", "p1", "l1", "m", "1", since=MID),
                  DriftCondition("e1", "p1", "l1", "m", "1", since=MID, monitor="score"),
                  DriftCondition("e2", "p1", "l2", "m", "1", since=SINCE, ended_at=MID),
                  DriftCondition("e3", "p2", "l1", "m", "1", since=MID)]
    f = run(many(6, "confirmed_failure") + retraining, conditions=conditions)
    d = f.overall.drift
    assert d.retraining_tickets == (retraining[0].id,)
    assert (d.conditions, d.assets, d.started) == (3, 2, 4)
    by_line = {g.group.key: g.drift for g in f.by_line}
    # A site-wide retraining ticket (line "*") concerns every line of its site, and only it.
    assert by_line["p1/l1"].retraining_tickets == (retraining[0].id,)
    assert by_line["p1/l2"].retraining_tickets == (retraining[0].id,)
    assert by_line["p2/l1"].retraining_tickets == ()
    assert "p1/*" not in by_line
    assert (by_line["p1/l2"].conditions, by_line["p1/l2"].started) == (0, 1)


# --------------------------------------------------------------------------- verdict


@pytest.mark.parametrize(
    ("counts", "drift", "action", "words"),
    [
        ((45, 5, 5), NO_DRIFT, "keep", "at or above the target 0.80"),
        # F1 = 0.75 (0.59 to 0.87): below the target, interval includes it.
        ((12, 4, 4), NO_DRIFT, "watch", "still includes the target"),
        ((45, 5, 5), Drift((), 3, 2, 3), "watch", "3 drift conditions active on 2 machines"),
        # F1 = 0.5, at most 0.66: even the best reading misses 0.80.
        ((10, 10, 10), NO_DRIFT, "retrain", "at most 0.6"),
        ((45, 5, 5), Drift((17,), 0, 0, 0), "retrain", "retraining ticket is open (#17)"),
        ((2, 1, 0), NO_DRIFT, "not_enough_data", "only 3 counted outcomes"),
        ((0, 0, 0), NO_DRIFT, "not_enough_data", "only 0 counted outcomes"),
        # A retraining ticket decides even before outcomes do; drift makes few outcomes
        # "watch", and too few outcomes never "retrain" on F1 alone.
        ((0, 0, 0), Drift((3,), 0, 0, 0), "retrain", "#3"),
        ((1, 0, 0), Drift((), 1, 1, 1), "watch", "too few outcomes yet to judge F1"),
        ((0, 4, 0), NO_DRIFT, "not_enough_data", "only 4"),
    ],
)
def test_verdict_rule(counts: tuple[int, int, int], drift: Drift, action: str,
                      words: str) -> None:
    verdict = decide(f1_figure(*counts), drift, target_f1=0.8)
    assert verdict.action == action
    assert words in verdict.reason


def test_verdicts_for_every_group_but_the_months() -> None:
    good = many(20, "confirmed_failure", model=("m", "1"))
    bad = many(5, "confirmed_failure", model=("m", "2")) + many(15, "no_fault_found",
                                                                   model=("m", "2"))
    f = run(good + bad)
    assert {g.group.key: g.verdict.action for g in f.by_model  # type: ignore[union-attr]
            } == {"m@1": "keep", "m@2": "retrain"}
    assert f.overall.verdict is not None
    assert all(g.verdict is not None for g in (*f.by_site, *f.by_line))
    assert all(g.verdict is None for g in f.by_month)


# --------------------------------------------------------------------------- estimates


def test_gateway_estimates_are_set_beside_the_realised_figures() -> None:
    tickets = many(16, "confirmed_failure") + many(4, "no_fault_found")  # precision 0.8
    estimates = [
        GatewayEstimate(Group.overall(), f1=0.85, f1_low=0.8, f1_high=0.9, precision=0.3),
        GatewayEstimate(Group.of_model("m", "1"), recall=0.9),
    ]
    f = run(tickets, estimates=estimates)
    checks = {c.metric: c for c in f.overall.estimates}
    assert set(checks) == {"precision", "f1"}
    assert checks["f1"].agrees is True and checks["f1"].realised == f.overall.f1
    assert checks["precision"].agrees is False  # 0.3 is outside 0.58..0.92
    (recall,) = f.by_model[0].estimates
    assert recall.agrees is True and recall.realised == f.by_model[0].recall


def test_an_estimate_is_not_judged_on_too_few_outcomes() -> None:
    f = run(many(2, "confirmed_failure"),
            estimates=[GatewayEstimate(Group.overall(), f1=0.1)])
    assert f.overall.estimates[0].agrees is None


def test_two_estimates_for_one_group_are_refused() -> None:
    with pytest.raises(ValueError, match="two gateway estimates"):
        run([], estimates=[GatewayEstimate(Group.overall(), f1=0.5)] * 2)


def test_an_estimate_alone_makes_its_group_appear() -> None:
    f = run([], estimates=[GatewayEstimate(Group.of_model("m", "3"), f1=0.5)])
    assert [g.group.key for g in f.by_model] == ["m@3"]
    assert f.by_model[0].estimates[0].agrees is None


# --------------------------------------------------------------------------- inputs and output


def test_from_ticket_reads_the_first_alert_from_the_evidence() -> None:
    opened = datetime(2025, 11, 1, 12, tzinfo=UTC)
    row = SimpleNamespace(
        id=7, kind="maintenance", site="p1", line="l1", asset="e7", model_name="m",
        model_version="1", opened_at=opened, resolved_at=opened + timedelta(days=1),
        outcome="confirmed_failure",
        evidence={"k": 3, "n": 5, "scores": [
            {"window_end": "2025-11-01T08:00:00+00:00", "score": 0.1, "alert": False},
            {"window_end": "2025-11-01T09:00:00+00:00", "score": 0.9, "alert": True},
            {"window_end": "2025-11-01T11:00:00+00:00", "score": 0.9, "alert": True}]})
    fact = TicketFact.from_ticket(row, failed_at=opened + timedelta(hours=20))
    assert fact.first_alert_at == datetime(2025, 11, 1, 9, tzinfo=UTC)
    assert fact.alerted_at == fact.first_alert_at
    row.evidence = {}
    assert TicketFact.from_ticket(row).first_alert_at == opened


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"outcome": "fixed"}, "outcome must be one of"),
        ({"outcome": "other", "resolved_at": None}, "no resolved_at"),
        ({"opened_at": datetime(2025, 11, 1)}, "naive"),
    ],
)
def test_ticket_facts_refuse_bad_values(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = dict(id=1, kind="maintenance", site="p", line="l", asset="a",
                                model_name="m", model_version="1", opened_at=MID,
                                resolved_at=MID, outcome="other")
    with pytest.raises(ValueError, match=match):
        TicketFact(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"since": UNTIL, "until": SINCE}, "must be before"),
        ({"until": datetime(2026, 1, 1)}, "naive"),
        ({"target_f1": 0.0}, "target_f1"),
        ({"target_f1": 1.5}, "target_f1"),
        ({"min_outcomes": 0}, "min_outcomes"),
        ({"visit_cost": -1.0}, "visit_cost"),
    ],
)
def test_compute_refuses_bad_parameters(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run([], **kwargs)


def test_to_dict_is_plain_json() -> None:
    f = run(many(5, "confirmed_failure") + many(1, "no_fault_found"), [missed_failure()],
            estimates=[GatewayEstimate(Group.overall(), f1=0.8)], visit_cost=100.0)
    data = json.loads(json.dumps(f.to_dict()))
    assert data["since"] == SINCE.isoformat()
    assert data["overall"]["group"] == {"dimension": "all", "site": None, "line": None,
                                        "model_name": None, "model_version": None,
                                        "month": None, "key": "all", "label": "all"}
    assert data["overall"]["precision"]["n"] == 6
    assert data["overall"]["missed_failures"][0]["at"] == MID.isoformat()
    assert data["overall"]["verdict"]["action"] in ("keep", "watch", "retrain",
                                                    "not_enough_data")
    assert f.overall.to_dict() == data["overall"]
