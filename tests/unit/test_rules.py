"""k-of-n hysteresis and the per-asset maintenance rule (pure logic, no I/O)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.rules import KOfN, MaintenanceRule, ScoredWindow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def feed(rule: KOfN, alerts: list[bool]) -> list[bool]:
    out = []
    for alert in alerts:
        rule.update(alert)
        out.append(rule.triggered)
    return out


@pytest.mark.parametrize(
    ("k", "n", "match"),
    [
        (0, 5, "k must be"),
        (6, 5, "k must be"),
        (-1, 5, "k must be"),
        (1, 0, "n must be"),
        (1, -3, "n must be"),
        (1.5, 5, "k must be"),
        (1, 2.0, "n must be"),
    ],
)
def test_kofn_refuses_bad_parameters(k: object, n: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KOfN(k, n)  # type: ignore[arg-type]


def test_kofn_starts_untriggered() -> None:
    rule = KOfN(1, 1)
    assert not rule.triggered
    assert rule.alerts == 0


def test_kofn_one_of_one_follows_the_last_update() -> None:
    assert feed(KOfN(1, 1), [True, False, True, True, False]) == [True, False, True, True, False]


def test_kofn_n_of_n_needs_every_window() -> None:
    assert feed(KOfN(3, 3), [True, True, False, True, True, True]) == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]


def test_kofn_triggers_before_the_window_is_full() -> None:
    # k of "the last n" counts what there is: 2 alerts out of 2 updates is enough for 2-of-5.
    assert feed(KOfN(2, 5), [True, True]) == [False, True]


def test_kofn_forgets_alerts_older_than_n() -> None:
    rule = KOfN(2, 3)
    assert feed(rule, [True, True, False, False, False]) == [False, True, True, False, False]
    assert rule.alerts == 0  # both alerts slid out


def test_kofn_matches_a_brute_force_count() -> None:
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(1, 8)
        k = rng.randint(1, n)
        alerts = [rng.random() < 0.4 for _ in range(40)]
        expected = [sum(alerts[max(0, i + 1 - n) : i + 1]) >= k for i in range(len(alerts))]
        assert feed(KOfN(k, n), alerts) == expected, (k, n, alerts)


def window(i: int, score: float, threshold: float = 0.7) -> ScoredWindow:
    return ScoredWindow(T0 + timedelta(minutes=i), score, score >= threshold)


def test_rule_keeps_assets_apart() -> None:
    rule = MaintenanceRule(k=2, n=3)
    assert not rule.update("a", window(0, 0.9))
    assert not rule.update("b", window(0, 0.9))
    assert rule.update("a", window(1, 0.95))
    assert not rule.triggered("b")
    assert rule.triggered("a")


def test_rule_ignores_stale_and_repeated_windows() -> None:
    rule = MaintenanceRule(k=2, n=3)
    rule.update("a", window(5, 0.9))
    # Redelivery of the same window, and an older one: neither counts.
    assert not rule.update("a", window(5, 0.9))
    assert not rule.update("a", window(4, 0.9))
    assert not rule.triggered("a")
    assert [w.window_end for w in rule.windows("a")] == [T0 + timedelta(minutes=5)]


def test_rule_keeps_the_last_n_windows_as_evidence() -> None:
    rule = MaintenanceRule(k=1, n=3)
    for i, s in enumerate([0.1, 0.2, 0.8, 0.9, 0.3]):
        rule.update("a", window(i, s))
    assert [w.score for w in rule.windows("a")] == [0.8, 0.9, 0.3]
    assert rule.windows("unknown") == []


def test_rule_restore_continues_where_it_stopped() -> None:
    first = MaintenanceRule(k=3, n=5)
    for i, s in enumerate([0.9, 0.1, 0.9]):
        first.update("a", window(i, s))
    saved = [ScoredWindow.from_json(w.to_json()) for w in first.windows("a")]

    second = MaintenanceRule(k=3, n=5)
    second.restore("a", saved)
    assert second.windows("a") == first.windows("a")
    assert not second.triggered("a")
    assert second.update("a", window(3, 0.95))  # third alert of the last five


def test_rule_restore_replaces_state() -> None:
    rule = MaintenanceRule(k=1, n=2)
    rule.update("a", window(0, 0.9))
    rule.restore("a", [])
    assert not rule.triggered("a")
    assert rule.windows("a") == []


def test_rule_validates_like_kofn() -> None:
    with pytest.raises(ValueError, match="k must be"):
        MaintenanceRule(k=4, n=3)


def test_scored_window_json_round_trip() -> None:
    w = window(3, 0.123456789)
    assert ScoredWindow.from_json(w.to_json()) == w


def test_rule_keeps_the_same_asset_at_two_sites_apart() -> None:
    # ingest keys the rule by (site, asset): asset names are only unique within a site.
    rule = MaintenanceRule(k=2, n=3)
    a, b = ("plant1", "engine-001"), ("plant2", "engine-001")
    assert not rule.update(a, window(0, 0.9))
    assert not rule.update(b, window(1, 0.9))
    assert not rule.update(b, window(0, 0.9))  # stale for b only, though new for a's key
    assert rule.update(a, window(2, 0.95))
    assert (rule.triggered(a), rule.triggered(b)) == (True, False)
    assert [w.window_end for w in rule.windows(b)] == [T0 + timedelta(minutes=1)]
