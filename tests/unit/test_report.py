"""The plain-language model health report (aggregator.report; pure, no servers)."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.figures import (
    AssetCount,
    DriftCondition,
    Figure,
    GatewayEstimate,
    Group,
    HealthFigures,
    MissedFailure,
    TicketFact,
    compute,
    wilson,
)
from aggregator.report import headline, render_html, render_markdown

SINCE = datetime(2025, 11, 1, tzinfo=UTC)
UNTIL = datetime(2025, 12, 1, tzinfo=UTC)


def fact(i: int, outcome: str | None, *, asset: str | None = None, lead_days: int = 5,
         model: tuple[str, str] = ("cmapss_fd001", "1.0.0"), kind: str = "maintenance",
         line: str = "l1") -> TicketFact:
    alert = SINCE + timedelta(days=i)
    return TicketFact(
        id=i, kind=kind, site="plant1", line=line, asset=asset or f"pump-{i}",
        model_name=model[0], model_version=model[1], opened_at=alert + timedelta(hours=2),
        first_alert_at=alert, resolved_at=None if outcome is None else alert + timedelta(
            days=lead_days + 1),
        outcome=outcome,
        failed_at=alert + timedelta(days=lead_days) if outcome == "confirmed_failure" else None)


ENGINE_7 = MissedFailure("engine-7", "plant1", "l1", datetime(2025, 11, 3, 14, tzinfo=UTC),
                         "cmapss_fd001", "1.0.0")


def scripted(**kw: object) -> HealthFigures:
    """8 confirmed failures (lead times 2..9 days), 2 no fault found, 1 missed failure,
    10 machines, November 2025."""
    tickets = [fact(i, "confirmed_failure", lead_days=i + 1) for i in range(1, 9)]
    tickets += [fact(i, "no_fault_found") for i in (9, 10)]
    args: dict[str, object] = dict(since=SINCE, until=UNTIL, target_f1=0.8,
                                   target_source="the model card's test F1",
                                   assets=[AssetCount(10, "plant1", "l1", "cmapss_fd001",
                                                      "1.0.0")])
    args.update(kw)
    return compute(tickets, [ENGINE_7], **args)  # type: ignore[arg-type]


def paragraphs(markdown: str) -> list[str]:
    return [p for p in markdown.split("\n\n") if p and not p.startswith(("#", "|"))]


# --------------------------------------------------------------------------- scripted


def test_report_words_and_figures_for_a_scripted_set_of_outcomes() -> None:
    f = scripted()
    md = render_markdown(f)
    expected = [
        "Period: 1 Nov 2025 to 30 Nov 2025. Model: cmapss_fd001 1.0.0.",
        "**Yes, the model still works: keep it.**",
        "8 of 10 alerts were real faults: 80 %, likely between 49 % and 94 %.",
        "The model caught 8 of 9 failures (89 %, likely between 57 % and 98 %); it missed 1: "
        "engine-7 (3 Nov).",
        "F1 is 0.84, likely between 0.61 and 0.95. F1 weighs wrong alerts and missed "
        "failures together; 1 would be perfect. The target is 0.80 (the model card's test "
        "F1).",
        "Real faults were flagged a median of 5.5 days before the failure (half of them "
        "between 3.8 days and 7.2 days; 8 faults).",
        "10 alerts meant 10 technician visits; 2 false alarms cost 2 technician visits "
        "(about 0.2 per machine per month).",
        "No: no drift condition is active and no retraining ticket is open.",
        "**Keep, because F1 is 0.84 (likely between 0.61 and 0.95), at or above the target "
        "0.80, and no drift is active.**",
    ]
    found = paragraphs(md)
    for sentence in expected:
        assert sentence in found, f"missing: {sentence!r}\nin:\n{md}"
    assert md.startswith("# Model health report\n")
    assert "| Nov 2025 | 10 | 8 | 2 | 1 | 80 % (49 % to 94 %) | 89 % (57 % to 98 %) | " \
           "0.84 (0.61 to 0.95) |" in md


def test_the_words_follow_the_figures() -> None:
    # The scripted numbers, read back from the figures object itself.
    g = scripted().overall
    assert (g.real, g.alerts, g.missed) == (8, 10, 1)
    assert g.precision.low == pytest.approx(0.4902, abs=1e-4)
    assert g.precision.high == pytest.approx(0.9433, abs=1e-4)
    assert g.recall.low == pytest.approx(0.5650, abs=1e-4)
    assert g.recall.high == pytest.approx(0.9801, abs=1e-4)
    assert g.f1.value == pytest.approx(16 / 19)
    assert (g.f1.low, g.f1.high) == (pytest.approx(0.6057, abs=1e-4),
                                     pytest.approx(0.9488, abs=1e-4))
    assert g.false_alarms_per_asset_month == pytest.approx(2 / (10 * 30 / (365.2425 / 12)))


def test_every_number_comes_from_the_figures_object() -> None:
    f = scripted()
    # Change the figures without changing the counts: the report must follow the figures.
    overall = dataclasses.replace(
        f.overall, precision=Figure(0.5, 0.25, 0.75, 10, True),
        f1=Figure(0.123, 0.1, 0.2, 11, True), false_alarms_per_asset_month=7.0)
    md = render_markdown(dataclasses.replace(f, overall=overall))
    assert "8 of 10 alerts were real faults: 50 %, likely between 25 % and 75 %." in md
    assert "F1 is 0.12, likely between 0.10 and 0.20." in md
    assert "(about 7.0 per machine per month)" in md


def test_money_when_a_visit_has_a_price() -> None:
    md = render_markdown(scripted(visit_cost=350.0, currency="EUR"))
    assert "At 350 EUR a visit: 3,500 EUR in all, 700 EUR of it on false alarms." in md


def test_gateway_estimate_beside_the_tickets_when_no_window_is_judged() -> None:
    md = render_markdown(scripted(estimates=[
        GatewayEstimate(Group.overall(), f1=0.8, f1_low=0.72, f1_high=0.86, precision=0.3)]))
    assert ("The gateways estimated F1 per scored window at 0.80 (likely between 0.72 and "
            "0.86) without waiting for outcomes; no window can be judged yet, and the "
            "tickets' outcomes give 0.84 (likely between 0.61 and 0.95), which count "
            "machines, not windows, so they can differ for that reason alone: they agree.") in md
    assert ("The gateways estimated the share of alerts that are right per scored window at "
            "30 % without waiting for outcomes; no window can be judged yet, and the tickets' "
            "outcomes give 80 % (likely between 49 % and 94 %), which count machines, not "
            "windows, so they can differ for that reason alone: they disagree; trust the "
            "outcomes, and have the estimate checked.") in md


def test_gateway_estimate_beside_the_windows_judged() -> None:
    """With windows judged against reported failures, the estimate is checked in its own
    unit: 40 alerting windows right, 10 false, 5 positive windows missed."""
    md = render_markdown(scripted(estimates=[GatewayEstimate(
        Group.overall(), precision=0.75, precision_low=0.7, precision_high=0.85, recall=0.5,
        recall_low=0.45, recall_high=0.55, window_real=40, window_false=10,
        window_missed=5)]))
    low, high = wilson(40, 50)
    assert ("The gateways estimated the share of alerts that are right per scored window at "
            "75 % (likely between 70 % and 85 %) without waiting for outcomes; the windows "
            f"judged against the failures reported give 80 % (likely between "
            f"{round(low * 100)} % and {round(high * 100)} %, 50 windows): they agree.") in md
    assert "the windows judged against the failures reported give 89 %" in md  # 40 of 45
    assert "45 windows): they disagree" in md


# --------------------------------------------------------------------------- few and none


def test_small_counts_say_not_enough_yet() -> None:
    f = compute([fact(1, "confirmed_failure"), fact(2, "no_fault_found")], since=SINCE,
                until=UNTIL, target_f1=0.8)
    md = render_markdown(f)
    found = paragraphs(md)
    assert ("Not enough outcomes yet to say: 2 alerts resolved so far; at least 5 are "
            "needed for a useful figure.") in found
    assert "So far 1 of 2 were real faults (50 %, likely between 9 % and 91 %)." in found
    assert ("Not enough outcomes yet to say: 1 failure known (caught or missed) so far; at "
            "least 5 are needed for a useful figure.") in found
    assert headline(f) == "Too early to say: not enough outcomes yet."
    assert "50 % (9 % to 91 %), too few" in md


def test_no_data_says_so_and_never_shows_zero_or_hundred_percent() -> None:
    f = compute([], since=SINCE, until=UNTIL, target_f1=0.8)
    md = render_markdown(f)
    found = paragraphs(md)
    for sentence in [
        "**Too early to say: not enough outcomes yet.**",
        "Not enough outcomes yet to say: no alerts resolved so far; at least 5 are needed "
        "for a useful figure.",
        "Not enough outcomes yet to say: no failures known (caught or missed) so far; at "
        "least 5 are needed for a useful figure.",
        "No real faults yet, so no warning time to measure.",
        "No alerts were resolved, so there are no technician visits to count.",
    ]:
        assert sentence in found, f"missing: {sentence!r}\nin:\n{md}"
    assert not re.search(r"\b(0|100) %", md)
    assert not re.search(r"\bnan\b", md.lower()) and "None" not in md
    assert "| Nov 2025 | 0 | 0 | 0 | 0 | - | - | - |" in md


# --------------------------------------------------------------------------- verdicts


def test_retrain_and_drift_words() -> None:
    retraining = TicketFact(id=50, kind="retraining", site="plant1", line="*",
                            asset="model:cmapss_fd001@1.0.0", model_name="cmapss_fd001",
                            model_version="1.0.0", opened_at=SINCE + timedelta(days=25))
    f = compute([*(fact(i, "confirmed_failure") for i in range(1, 9)), retraining],
                [ENGINE_7], since=SINCE, until=UNTIL, target_f1=0.8,
                conditions=[DriftCondition("pump-3", "plant1", "l1", "cmapss_fd001",
                                           "1.0.0", SINCE + timedelta(days=20))])
    md = render_markdown(f)
    assert headline(f) == "No, it needs work: retrain it."
    assert ("Yes: 1 retraining ticket is open (\\#50): its evidence says why (the model's "
            "inputs moved beyond what it was trained on, or its F1 fell below the target). "
            "1 drift condition is active on 1 machine. "
            "(1 drift condition began during the period.)") in md


def test_watch_when_drift_is_active() -> None:
    f = scripted(conditions=[DriftCondition("pump-3", "plant1", "l1", "cmapss_fd001",
                                            "1.0.0", SINCE + timedelta(days=20))])
    md = render_markdown(f)
    assert headline(f) == "Probably, but not for certain: watch it."
    assert ("Its inputs are moving: 1 drift condition is active on 1 machine, but not yet "
            "enough for a retraining ticket. (1 drift condition began during the period.)"
            ) in md


def test_several_model_versions_get_a_table_and_a_verdict_each() -> None:
    tickets = [fact(i, "confirmed_failure") for i in range(1, 9)]
    tickets += [fact(i, "no_fault_found", model=("cmapss_fd001", "2.0.0"))
                for i in range(9, 15)]
    md = render_markdown(compute(tickets, since=SINCE, until=UNTIL, target_f1=0.8))
    assert "## By model version" in md
    assert "| cmapss_fd001 2.0.0 | 6 | 0 | 6 | 0 |" in md
    assert "cmapss_fd001 1.0.0: keep, because" in md
    assert "cmapss_fd001 2.0.0: retrain, because F1 is 0.00 and at most" in md


# --------------------------------------------------------------------------- safety


HOSTILE = "<script>alert('x')</script>"


def hostile() -> HealthFigures:
    tickets = [fact(i, "confirmed_failure") for i in range(1, 21)]
    missed = [MissedFailure(HOSTILE, "<b>site</b>", "l1", SINCE + timedelta(days=2),
                            "cmapss_fd001", "1.0.0"),
              MissedFailure("pump|*x*", "plant1", "l1", SINCE + timedelta(days=3)),
              MissedFailure("two\n# lines", "plant1", "l1", SINCE + timedelta(days=4))]
    return compute(tickets, missed, since=SINCE, until=UNTIL, target_f1=0.8)


def test_html_escapes_names_and_is_self_contained() -> None:
    page = render_html(hostile(), title="Health & <safety>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;site&lt;/b&gt;" in page and "<b>" not in page
    assert "<title>Health &amp; &lt;safety&gt;: 1 Nov 2025 to 30 Nov 2025</title>" in page
    assert page.startswith("<!DOCTYPE html>")
    for external in ("http:", "https:", "src=", "<link", "@import", "url("):
        assert external not in page
    assert '<p class="answer keep">Yes, the model still works: keep it.</p>' in page


def test_markdown_escapes_names() -> None:
    md = render_markdown(hostile())
    assert "<" not in md.replace("\\<", "")
    assert "\\<script\\>alert('x')\\</script\\>" in md
    assert "pump\\|\\*x\\*" in md
    assert "two \\# lines" in md


def test_html_says_what_markdown_says() -> None:
    f = scripted(visit_cost=350.0, currency="EUR")
    page = render_html(f)
    for sentence in ("8 of 10 alerts were real faults: 80 %, likely between 49 % and 94 %.",
                     "it missed 1: engine-7 (3 Nov).",
                     "At 350 EUR a visit: 3,500 EUR in all, 700 EUR of it on false alarms.",
                     "the model card&#x27;s test F1"):
        assert sentence in page
