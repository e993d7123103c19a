"""One contract, every series backend: the embedded SQLite store, InfluxDB 1.x (real) and
InfluxDB 2.x/3.x (influx2: writes against a real victoria-metrics, reads against 1.x).

Predictions, drift events and health reports: written, read back exactly, rewritten
without doubling, filtered and ordered alike on every backend; an asset's score history
and the assets each model version scored in a period, alike too.

The influx2 backend writes through InfluxDB's v2 write API, which victoria-metrics speaks;
it answers no InfluxQL, so the write side (what is stored, under which tags and timestamps,
rewrites, batching, gzip, outages) is checked on what it exports, for every backend alike
(``writer``), and influx2's InfluxQL reads against InfluxDB 1.x's ``/query``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aggregator_support import T0
from servers import VictoriaMetricsServer

from aggregator.errors import SeriesError, SeriesUnavailableError
from aggregator.series import (
    TIME_MAX,
    TIME_MIN,
    AssetsSeen,
    DriftPoint,
    HealthPoint,
    HealthSummary,
    PredictionPoint,
    ScoreCounts,
    SeriesStore,
    StoredEstimate,
    to_ns,
)
from aggregator.series.influx1 import Influx1Store, line_protocol
from aggregator.series.influx2 import Influx2Store
from aggregator.series.sqlite import SqliteSeriesStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "influx1"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SeriesStore]:
    if request.param == "sqlite":
        backend: SeriesStore = SqliteSeriesStore(tmp_path / "nested" / "series.db")
    else:
        db = request.getfixturevalue("influxdb")
        backend = Influx1Store(db.url, db.database)
    yield backend
    backend.close()


# Who sent a point, the same on all three kinds; a test changes any field by keyword.
SENDER: dict[str, Any] = {
    "site": "plant1", "line": "line3", "agent": "gw-1", "model": "bearing-gbt",
    "model_version": "1.2.0",
}


def point(i: int, *, score: float = 0.5, **changes: Any) -> PredictionPoint:
    fields = {
        "asset": "pump-1",
        "window_start": T0 + timedelta(seconds=10 * i),
        "window_end": T0 + timedelta(seconds=10 * i + 10, microseconds=123456),
        "score": score,
        "alert": score >= 0.7,
        "seq": i,
    }
    return PredictionPoint(**(SENDER | fields | changes))


def drift_point(i: int, **changes: Any) -> DriftPoint:
    fields = {
        "asset": "pump-1",
        "at": T0 + timedelta(seconds=10 * i, microseconds=654321),
        "monitor": "s2.mean",
        "detector": "range",
        "value": 640.25 + i,
        "detail": f"s2.mean={640.25 + i} outside training range [641.2, 644.5]",
        "seq": i,
    }
    return DriftPoint(**(SENDER | fields | changes))


def health_point(i: int, **changes: Any) -> HealthPoint:
    fields = {
        "at": T0 + timedelta(seconds=30 * i, microseconds=1),
        "windows_scored": 100 * i,
        "outbox_depth": i % 3,
        "outbox_dropped": 0,
        "rejected_readings": 2 * i,
        "inference_ms_median": 0.125 + i,
        "seq": i,
    }
    return HealthPoint(**(SENDER | fields | changes))


def test_write_then_read_back_exactly(store: SeriesStore) -> None:
    points = [
        point(i, score=s) for i, s in enumerate([0.1, 0.7, 0.123456789012345, 1.0, 0.0, 1e-9])
    ]
    store.write(list(reversed(points)))
    assert store.predictions() == points  # ordered by window_end, every field exact
    assert store.count() == len(points)


def test_rewrite_is_idempotent(store: SeriesStore) -> None:
    points = [point(i) for i in range(5)]
    store.write(points)
    store.write(points)
    store.write(points[:2])
    assert store.count() == 5
    assert store.predictions() == points


def test_rewrite_replaces_the_point(store: SeriesStore) -> None:
    store.write([point(0, score=0.2)])
    store.write([point(0, score=0.9, seq=42)])
    assert store.predictions() == [point(0, score=0.9, seq=42)]


def test_identity_is_agent_asset_model_window_end(store: SeriesStore) -> None:
    same_window = [
        point(0),
        point(0, agent="gw-2"),
        point(0, asset="pump-2"),
        point(0, model="other-model"),
    ]
    store.write(same_window)
    assert store.count() == 4
    key = lambda p: (p.agent, p.asset, p.model)  # noqa: E731
    assert sorted(store.predictions(), key=key) == sorted(same_window, key=key)


def test_filters(store: SeriesStore) -> None:
    points = [
        point(0, agent="gw-1", asset="a"),
        point(1, agent="gw-1", asset="b"),
        point(2, agent="gw-2", asset="a"),
        point(3, agent="gw-2", asset="c"),
    ]
    store.write(points)
    assert store.predictions(agent="gw-1") == points[:2]
    assert store.predictions(asset="a") == [points[0], points[2]]
    assert store.predictions(agent="gw-2", asset="c") == [points[3]]
    assert store.predictions(agent="nobody") == []
    assert (
        store.count(agent="gw-2"),
        store.count(asset="a"),
        store.count(agent="gw-1", asset="c"),
    ) == (2, 2, 0)


# -- score history and assets seen ------------------------------------------------------
def test_score_history_of_one_asset_in_a_time_range(store: SeriesStore) -> None:
    mine = [point(i, asset="pump-1", score=i / 10) for i in range(6)]
    other_site = point(2, asset="pump-1", site="plant2", agent="gw-9")
    other_asset = point(3, asset="pump-2")
    store.write(list(reversed(mine)) + [other_site, other_asset])
    assert store.scores("pump-1", site="plant1") == mine
    assert store.scores("pump-1") == sorted(mine + [other_site],
                                             key=lambda p: (p.window_end, p.site))
    ends = [p.window_end for p in mine]
    assert store.scores("pump-1", site="plant1", since=ends[2]) == mine[2:]
    assert store.scores("pump-1", site="plant1", until=ends[2]) == mine[:2]
    assert store.scores("pump-1", site="plant1", since=ends[1], until=ends[4]) == mine[1:4]
    assert store.scores("pump-1", site="plant1", since=ends[1], limit=2) == mine[1:3]
    assert store.scores("pump-1", site="plant1", since=ends[4], until=ends[1]) == []
    assert store.scores("nobody") == []
    assert store.scores("pump-1", site="plant1", since=TIME_MIN, until=TIME_MAX) == mine
    with pytest.raises(ValueError, match="limit"):
        store.scores("pump-1", limit=0)


def test_score_history_ties_are_ordered_by_agent_then_model(store: SeriesStore) -> None:
    tied = [point(0, agent="gw-2"), point(0, model="b-model"), point(0),
            point(0, agent="gw-2", model="a-model")]
    store.write(tied)
    assert [(p.agent, p.model) for p in store.scores("pump-1")] == [
        ("gw-1", "b-model"), ("gw-1", "bearing-gbt"), ("gw-2", "a-model"),
        ("gw-2", "bearing-gbt")]


@pytest.mark.parametrize("odd", ["pump 3", "a,b", "k=v", "it's", "C:\\line", "x'; DROP"])
def test_score_history_of_odd_names(store: SeriesStore, odd: str) -> None:
    odd_point = point(0, asset=odd, site=odd, agent=odd)
    store.write([odd_point, point(1)])
    assert store.scores(odd, site=odd) == [odd_point]


def test_assets_seen_per_site_line_and_model_version(store: SeriesStore) -> None:
    points = [
        point(0, asset="a"), point(1, asset="a"), point(2, asset="b"),
        point(3, asset="c", line="line4"),
        point(4, asset="a", model_version="1.3.0"),
        point(5, asset="a", site="plant2"),
        point(20, asset="late"),
    ]
    store.write(points)
    until = points[-1].window_end
    assert store.asset_counts(T0, until) == [
        AssetsSeen("plant1", "line3", "bearing-gbt", "1.2.0", 2),
        AssetsSeen("plant1", "line3", "bearing-gbt", "1.3.0", 1),
        AssetsSeen("plant1", "line4", "bearing-gbt", "1.2.0", 1),
        AssetsSeen("plant2", "line3", "bearing-gbt", "1.2.0", 1),
    ]
    assert store.asset_counts(points[2].window_end, points[4].window_end) == [
        AssetsSeen("plant1", "line3", "bearing-gbt", "1.2.0", 1),
        AssetsSeen("plant1", "line4", "bearing-gbt", "1.2.0", 1),
    ]
    assert store.asset_counts(TIME_MIN, TIME_MAX)[0].assets == 3  # a, b and late
    assert store.asset_counts(until, TIME_MAX) == [
        AssetsSeen("plant1", "line3", "bearing-gbt", "1.2.0", 1)]
    assert store.asset_counts(T0 - timedelta(days=1), T0) == []


ODD_NAMES = [
    "pump 3", "a,b", "k=v", "it's", 'say "hi"', "a, b = 'c'", "ünïcødé ⚙", "C:\\line", "x'; DROP",
]


@pytest.mark.parametrize("odd", ODD_NAMES)
def test_odd_names_round_trip_and_filter(store: SeriesStore, odd: str) -> None:
    odd_point = point(0, agent=odd, asset=odd, model=odd, model_version=odd, site=odd, line=odd)
    plain = point(1)
    store.write([odd_point, plain])
    assert store.predictions(agent=odd, asset=odd) == [odd_point]
    assert store.count(asset=odd) == 1
    assert store.predictions() == [odd_point, plain]


def test_large_write_is_batched(store: SeriesStore) -> None:
    points = [point(i, asset=f"asset-{i % 7}") for i in range(12_001)]  # > 2 x 5000 lines
    store.write(points)
    assert store.count() == 12_001
    assert store.count(asset="asset-3") == len(points[3::7])


def test_empty_store_and_empty_write(store: SeriesStore) -> None:
    store.write([])
    store.write([], drift=[], health=[])
    assert store.predictions() == []
    assert store.count() == 0
    assert store.drift_events() == [] and store.drift_count() == 0
    assert store.health() == [] and store.health_count() == 0
    assert store.latest_health() == {}
    assert store.ping() is True
    assert store.name in {"sqlite", "influx1"}


# -- drift events ------------------------------------------------------------------------
def test_drift_write_then_read_back_exactly_newest_first(store: SeriesStore) -> None:
    events = [
        drift_point(0),
        drift_point(1, asset=None, monitor="score", detector="ADWIN", value=None,
                    detail="the distribution of model scores changed"),
        drift_point(2, detector="nan", monitor="s3", value=None, detail=""),
        drift_point(3, value=1e-9),
        drift_point(4, value=-0.123456789012345),
    ]
    store.write([], drift=events)
    assert store.drift_events() == events[::-1]  # every field exact, None kept as None
    assert store.drift_count() == 5
    assert store.count() == 0  # drift events are not predictions


def test_drift_rewrite_is_idempotent(store: SeriesStore) -> None:
    events = [drift_point(i) for i in range(4)] + [drift_point(9, asset=None, value=None)]
    store.write([], drift=events)
    store.write([], drift=events)
    store.write([], drift=events[:2] + events[-1:])
    assert store.drift_count() == 5
    assert store.drift_events() == events[::-1]
    store.write([], drift=[drift_point(0, detail="rewritten", seq=42)])
    assert store.drift_events()[-1] == drift_point(0, detail="rewritten", seq=42)
    assert store.drift_count() == 5


def test_drift_identity_is_agent_asset_model_monitor_detector_at(store: SeriesStore) -> None:
    same_instant = [
        drift_point(0),
        drift_point(0, agent="gw-2"),
        drift_point(0, asset="pump-2"),
        drift_point(0, asset=None),
        drift_point(0, model="other-model"),
        drift_point(0, monitor="s3.std"),
        drift_point(0, detector="stuck"),
    ]
    store.write([], drift=same_instant)
    assert store.drift_count() == len(same_instant)
    assert sorted(store.drift_events(), key=repr) == sorted(same_instant, key=repr)


def test_drift_filters_since_and_limit(store: SeriesStore) -> None:
    events = [
        drift_point(0, agent="gw-1", asset="a"),
        drift_point(1, agent="gw-1", asset=None, detector="ADWIN", monitor="score"),
        drift_point(2, agent="gw-2", asset="a", detector="nan"),
        drift_point(3, agent="gw-2", asset="b"),
        drift_point(4, agent="gw-1", asset="b", detector="nan"),
    ]
    store.write([], drift=events)
    assert store.drift_events(agent="gw-1") == [events[4], events[1], events[0]]
    assert store.drift_events(asset="a") == [events[2], events[0]]
    assert store.drift_events(detector="nan") == [events[4], events[2]]
    assert store.drift_events(agent="gw-2", asset="b", detector="range") == [events[3]]
    assert store.drift_events(since=events[2].at) == events[:1:-1]
    assert store.drift_events(since=events[2].at + timedelta(microseconds=1)) == events[:2:-1]
    assert store.drift_events(limit=2) == [events[4], events[3]]
    assert store.drift_events(agent="gw-1", since=events[1].at, limit=1) == [events[4]]
    assert store.drift_events(agent="nobody") == []
    assert (store.drift_count(agent="gw-1"), store.drift_count(asset="a")) == (3, 2)
    assert store.drift_count(agent="gw-2", asset="a") == 1
    with pytest.raises(ValueError, match="limit"):
        store.drift_events(limit=0)


def test_drift_filters_until_site_and_offset(store: SeriesStore) -> None:
    events = [drift_point(i, asset=f"pump-{i % 2}") for i in range(6)]
    elsewhere = drift_point(2, asset="pump-0", site="plant2", agent="gw-9")
    store.write([], drift=events + [elsewhere])
    newest_first = events[::-1]
    assert store.drift_events(site="plant1") == newest_first
    assert store.drift_events(site="plant2") == [elsewhere]
    assert store.drift_events(until=events[3].at, site="plant1") == newest_first[3:]
    assert store.drift_events(since=events[1].at, until=events[4].at, site="plant1") == \
        newest_first[2:5]
    assert store.drift_events(site="plant1", limit=2, offset=0) == newest_first[:2]
    assert store.drift_events(site="plant1", limit=2, offset=2) == newest_first[2:4]
    assert store.drift_events(site="plant1", limit=2, offset=5) == newest_first[5:]
    assert store.drift_events(site="plant1", offset=6) == []
    assert store.drift_events(asset="pump-0", site="plant1", offset=1) == newest_first[3::2]
    with pytest.raises(ValueError, match="offset"):
        store.drift_events(offset=-1)


ODD_DETAILS = [
    'say "hi"',
    "back\\slash and \\\"",
    "ends with a backslash \\",
    "a, b = c d",
    "multi\nline\r\nand\ttab",
    "it's 'quoted'",
    "ünïcødé ⚙ 温度",
    "\\n is not a newline",
    "",
    "x" * 20_000,
]


@pytest.mark.parametrize("detail", ODD_DETAILS, ids=range(len(ODD_DETAILS)))
def test_odd_details_round_trip(store: SeriesStore, detail: str) -> None:
    odd = drift_point(0, detail=detail)
    plain = drift_point(1)
    store.write([], drift=[odd, plain])  # in one body: the odd line must not swallow the next
    assert store.drift_events() == [plain, odd]
    store.write([], drift=[odd])
    assert store.drift_count() == 2


@pytest.mark.parametrize("odd", ODD_NAMES)
def test_odd_names_in_drift_and_health(store: SeriesStore, odd: str) -> None:
    names = {"agent": odd, "site": odd, "line": odd, "model": odd, "model_version": odd}
    event = drift_point(0, asset=odd, monitor=odd, detector=odd, **names)
    report = health_point(0, **names)
    store.write([], drift=[event, drift_point(1)], health=[report, health_point(1)])
    assert store.drift_events(agent=odd, asset=odd, detector=odd) == [event]
    assert store.health(agent=odd) == [report]
    assert store.latest_health()[odd] == report
    assert (store.drift_count(asset=odd), store.health_count(agent=odd)) == (1, 1)


# -- health reports -----------------------------------------------------------------------
def test_health_write_then_read_back_exactly_newest_first(store: SeriesStore) -> None:
    reports = [
        health_point(0, inference_ms_median=None, windows_scored=0),
        health_point(1),
        health_point(2, outbox_dropped=7, inference_ms_median=0.1 + 0.2),
        health_point(3, windows_scored=2**53 + 1),  # an int field, not a float: exact
    ]
    store.write([], health=reports)
    assert store.health() == reports[::-1]
    assert store.health_count() == 4
    assert store.count() == 0 and store.drift_count() == 0


def test_health_rewrite_is_idempotent_and_filters(store: SeriesStore) -> None:
    gw1 = [health_point(i) for i in range(4)]
    gw2 = [  # at 45 s and 75 s, between gw-1's reports (every 30 s)
        health_point(i, agent="gw-2", windows_scored=7 * i, at=T0 + timedelta(seconds=45 + 30 * i))
        for i in range(2)
    ]
    store.write([], health=gw1 + gw2)
    store.write([], health=gw1[1:] + gw2)
    assert store.health_count() == 6
    assert (store.health_count(agent="gw-1"), store.health_count(agent="gw-2")) == (4, 2)
    assert store.health(agent="gw-1") == gw1[::-1]
    assert store.health(agent="gw-2", limit=1) == [gw2[1]]
    assert store.health(limit=3) == [gw1[3], gw2[1], gw1[2]]
    assert store.health(agent="nobody") == []
    with pytest.raises(ValueError, match="limit"):
        store.health(limit=0)


def test_latest_health_is_each_agents_newest(store: SeriesStore) -> None:
    reports = [
        health_point(5),
        health_point(2, agent="gw-2"),
        health_point(3),
        health_point(1, agent="gw-2", model_version="1.3.0"),
        health_point(0, agent="gw-3", inference_ms_median=None),
    ]
    store.write([], health=reports)
    assert store.latest_health() == {
        "gw-1": reports[0], "gw-2": reports[1], "gw-3": reports[4]
    }


ESTIMATE = StoredEstimate(
    windows=500, alerts=21, calibrated=True, expected_positives=19.25, precision=0.8125,
    precision_low=0.7, precision_high=0.9, recall=0.875, recall_low=0.75, recall_high=1.0,
    f1=0.84, f1_low=0.76, f1_high=0.9, horizon_s=18_000.0)


def test_health_with_an_estimate_round_trips(store: SeriesStore) -> None:
    """The agent's label-free estimate is kept with its report: every number exactly, an
    undefined metric as None, an uncalibrated agent's bare counts, and none at all."""
    reports = [
        health_point(0, estimate=ESTIMATE),
        health_point(1, estimate=StoredEstimate(windows=40, alerts=0, calibrated=True,
                                                expected_positives=0.5, recall=0.0,
                                                recall_low=0.0, recall_high=1.0)),
        health_point(2, estimate=StoredEstimate(windows=7, alerts=3, calibrated=False)),
        health_point(3),
    ]
    store.write([], health=reports)
    assert store.health() == reports[::-1]
    assert store.latest_health()["gw-1"].estimate is None


def test_estimates_are_each_senders_newest_in_the_period(store: SeriesStore) -> None:
    """Per agent, model and version: the newest report in [since, until) that carries an
    estimate; reports without one, and reports outside the period, are passed over."""
    def est(windows: int) -> StoredEstimate:
        return StoredEstimate(windows=windows, alerts=1, calibrated=True, precision=0.5,
                              precision_low=0.25, precision_high=0.75)

    reports = [
        health_point(1, estimate=est(10)),
        health_point(2, estimate=est(20)),
        health_point(3),  # newer, without an estimate
        health_point(9, estimate=est(90)),  # after the period
        health_point(2, agent="gw-2", estimate=est(22)),
        health_point(4, agent="gw-2", model_version="2.0.0", estimate=est(24)),
        health_point(0, agent="gw-3", estimate=est(30)),  # before the period
    ]
    store.write([], health=reports)
    since, until = T0 + timedelta(seconds=30), T0 + timedelta(seconds=30 * 9)
    assert store.estimates(since, until) == [reports[1], reports[4], reports[5]]
    assert store.estimates(until, until + timedelta(days=1)) == [reports[3]]
    assert store.estimates(T0 - timedelta(days=1), T0) == []


def test_alerts_of_a_period_oldest_first(store: SeriesStore) -> None:
    """Only alerting windows, ``since <= window_end < until``, oldest first (ties by agent,
    asset, model), at most ``limit``."""
    points = [point(i, score=0.9 if i % 3 == 0 else 0.2) for i in range(12)]
    points += [point(3, asset="pump-2", score=0.8), point(3, agent="gw-0", score=0.95)]
    store.write(points)
    since, until = points[1].window_end, points[10].window_end
    inside = [p for p in points if p.alert and since <= p.window_end < until]
    inside.sort(key=lambda p: (p.window_end, p.agent, p.asset, p.model))
    assert len(inside) == 5
    assert store.alerts(since, until) == inside
    # Cut after the three alerts at one instant: which of a tie is cut is the backend's.
    assert store.alerts(since, until, limit=3) == inside[:3]
    assert store.alerts(until, until + timedelta(days=1)) == []


def test_score_counts_of_one_model_version_in_a_period(store: SeriesStore) -> None:
    scores = [0.0, 7.0599647e-08, 0.25, 0.5, 0.5, 0.75, 0.999, 1.0]
    points = [point(i, score=s) for i, s in enumerate(scores)]
    others = [point(0, model_version="1.3.0", asset="pump-2", score=0.1),  # another version
              point(20, score=0.1)]  # after the period
    store.write(points + others)
    since, until = points[0].window_end, points[-1].window_end + timedelta(microseconds=1)
    edges = [-0.5, 7.0599647e-08, 0.5, 0.5, 0.999]
    counts = store.score_counts(SENDER["model"], "1.2.0", since, until, edges)
    assert counts == ScoreCounts(
        windows=len(scores), alerts=sum(s >= 0.7 for s in scores),
        at_most=tuple(sum(s <= e for s in scores) for e in edges))
    assert store.score_counts("nothing", "1", since, until, edges) == ScoreCounts(
        0, 0, (0,) * len(edges))
    assert store.score_counts(SENDER["model"], "1.2.0", since, until, []).windows == 8


def test_health_summary_per_agent_and_model_version_in_a_period(store: SeriesStore
                                                                 ) -> None:
    gw1 = [health_point(i, inference_ms_median=ms) for i, ms in enumerate([3.0, 1.0, None, 2.0,
                                                                          0.5])]
    gw2 = [health_point(i, agent="gw-2", inference_ms_median=None) for i in range(2)]
    late = health_point(40)  # after the period
    store.write([], health=[*gw1, *gw2, late])
    summary = store.health_summary(T0, late.at)
    assert summary == [
        HealthSummary("plant1", "line3", "gw-1", SENDER["model"], "1.2.0", 5, 1.5, 3.0),
        HealthSummary("plant1", "line3", "gw-2", SENDER["model"], "1.2.0", 2, None, None),
    ]
    assert store.health_summary(late.at, late.at + timedelta(seconds=1))[0].reports == 1
    assert store.health_summary(T0 - timedelta(days=1), T0) == []


# -- roles: a shadow model's points are kept apart, and live figures ignore them --------
SHADOW = {"role": "shadow", "model_version": "2.0.0"}


def test_a_shadow_point_beside_the_live_one_is_a_point_of_its_own(store: SeriesStore
                                                                    ) -> None:
    """Same agent, asset, model name and window: the shadow version's score is stored
    beside the live one's, and neither overwrites the other, on every kind."""
    live = [point(i, score=0.9 if i == 1 else 0.2) for i in range(3)]
    shadow = [point(i, score=0.8, **SHADOW) for i in range(3)]
    events = [drift_point(0), drift_point(0, **SHADOW)]
    reports = [health_point(0), health_point(0, **SHADOW, windows_scored=7)]
    store.write(live + shadow, drift=events, health=reports)
    store.write(shadow)  # a retry doubles nothing
    assert store.count() == 6
    got = store.predictions()
    assert [p for p in got if p.role == "live"] == live
    assert [p for p in got if p.role == "shadow"] == shadow
    assert sorted(store.health(), key=lambda p: p.role) == reports
    assert store.drift_count() == 2


def test_live_reads_count_live_points_only(store: SeriesStore) -> None:
    """Every read that feeds a live figure ignores shadow points, whatever they hold."""
    live = [point(i, score=0.2) for i in range(4)]
    shadow = [point(i, score=0.95, **SHADOW) for i in range(4)]
    shadow += [point(1, asset="pump-9", score=0.95, **SHADOW)]  # an asset only it scored
    est = StoredEstimate(windows=50, alerts=2, calibrated=True, f1=0.5, f1_low=0.4,
                         f1_high=0.6)
    reports = [health_point(1, estimate=est),
               health_point(2, **SHADOW, estimate=est),  # newer than the live one
               health_point(3, agent="gw-2", **SHADOW, estimate=est)]
    events = [drift_point(1), drift_point(2, **SHADOW)]
    store.write(live + shadow, drift=events, health=reports)
    since, until = T0, T0 + timedelta(days=1)
    assert store.alerts(since, until) == []
    assert store.scores("pump-1", since=since, until=until) == live
    assert store.scores("pump-9") == []
    assert store.asset_counts(since, until) == [
        AssetsSeen("plant1", "line3", SENDER["model"], "1.2.0", 1)]
    assert store.score_counts(SENDER["model"], "2.0.0", since, until, [0.5]) == \
        ScoreCounts(0, 0, (0,))
    assert store.score_counts(SENDER["model"], "1.2.0", since, until, [0.5]) == \
        ScoreCounts(4, 0, (4,))
    assert [h.reports for h in store.health_summary(since, until)] == [1]
    assert store.latest_health() == {"gw-1": reports[0]}
    assert store.estimates(since, until) == [reports[0]]
    assert store.estimates(since, until, role="shadow") == reports[1:]
    assert store.estimates(since, until, role=None) == reports
    assert store.drift_events() == [events[0]]


def test_paired_read_compares_two_versions_on_the_windows_both_scored(store: SeriesStore
                                                                      ) -> None:
    """Same agent, asset and window end, in [since, until), on the agents asked: both
    roles count, since a candidate is judged as shadow and again as canary."""
    base = {"model_version": "1.2.0"}
    cand = SHADOW
    baseline = [point(i, score=0.1 * i, **base) for i in range(10)]
    candidate = [point(i, score=0.1 * i + (0.3 if i in (6, 8) else 0.05), **cand)
                 for i in range(2, 12)]  # windows 2..9 common, 10 and 11 its own
    elsewhere = [point(i, agent="gw-9", score=0.99, **cand) for i in range(10)] + \
        [point(i, agent="gw-9", score=0.0, **base) for i in range(10)]
    other_asset = [point(3, asset="pump-2", score=0.9, **cand)]  # baseline never scored it
    store.write(baseline + candidate + elsewhere + other_asset)
    since, until = T0, T0 + timedelta(days=1)
    paired = store.paired((SENDER["model"], "2.0.0"), (SENDER["model"], "1.2.0"),
                          ["gw-1", "gw-2"], since, until)
    # Windows 2..9: alerts (score >= 0.7) candidate at 6 (0.9), 7 (0.75), 8 (1.1), 9;
    # baseline at 7, 8, 9 (0.7 rounds below: 0.1 * 7 = 0.7000000000000001 alerts).
    common = range(2, 10)
    c_alert = [candidate[i - 2].alert for i in common]
    b_alert = [baseline[i].alert for i in common]
    assert paired.windows == 8
    assert paired.agreements == sum(x == y for x, y in zip(c_alert, b_alert, strict=True))
    assert paired.candidate_alerts == sum(c_alert)
    assert paired.baseline_alerts == sum(b_alert)
    assert paired.score_mad == pytest.approx(0.05)
    # The period bounds window_end, the limit each version's newest windows.
    later = store.paired((SENDER["model"], "2.0.0"), (SENDER["model"], "1.2.0"),
                         ["gw-1"], baseline[6].window_end, until, limit=3)
    assert later.windows == 3 - 2  # candidate's newest 3 are 9, 10, 11: only 9 common
    assert store.paired((SENDER["model"], "2.0.0"), (SENDER["model"], "1.2.0"), [],
                        since, until).windows == 0
    assert store.paired((SENDER["model"], "2.0.0"), (SENDER["model"], "1.2.0"), ["gw-9"],
                        since, until).agreements == 0


def test_one_write_stores_all_three_kinds(store: SeriesStore) -> None:
    points = [point(i) for i in range(3)]
    events = [drift_point(i) for i in range(2)]
    reports = [health_point(i) for i in range(2)]
    store.write(points, drift=events, health=reports)
    store.write(points, drift=events, health=reports)  # the retry of a whole batch
    assert store.predictions() == points
    assert store.drift_events() == events[::-1]
    assert store.health() == reports[::-1]


def test_large_mixed_write_is_batched(store: SeriesStore) -> None:
    points = [point(i) for i in range(4_000)]
    events = [drift_point(i, asset=f"asset-{i % 5}") for i in range(3_000)]
    reports = [health_point(i) for i in range(3_001)]  # 10,001 lines: three request bodies
    store.write(points, drift=events, health=reports)
    assert (store.count(), store.drift_count(), store.health_count()) == (4_000, 3_000, 3_001)
    assert store.drift_count(asset="asset-2") == len(events[2::5])
    assert store.drift_events(limit=10_000) == events[::-1]


# -- InfluxDB specifics: database creation and outages ------------------------------------
def test_influx1_creates_its_database(influxdb) -> None:  # type: ignore[no-untyped-def]
    name = influxdb.database + "_new"
    store = Influx1Store(influxdb.url, name)
    try:
        store.write([point(0)])
        assert influxdb.server.query("SELECT count(score) FROM prediction", name)[0]["count"] == 1
    finally:
        store.close()
        influxdb.server.drop_database(name)


def test_influx1_outage_raises_unavailable_then_recovers(influxdb) -> None:  # type: ignore[no-untyped-def]
    store = Influx1Store(influxdb.url, influxdb.database, timeout_s=2.0)
    try:
        store.write([point(0)], drift=[drift_point(0)], health=[health_point(0)])
        influxdb.server.stop()
        assert store.ping() is False
        with pytest.raises(SeriesUnavailableError):
            store.write([point(1)], drift=[drift_point(1)], health=[health_point(1)])
        with pytest.raises(SeriesUnavailableError):
            store.count()
        with pytest.raises(SeriesUnavailableError):
            store.drift_events()
        with pytest.raises(SeriesUnavailableError):
            store.latest_health()
        influxdb.server.start()
        # The retry rewrites the first points: still one of each.
        store.write(
            [point(0), point(1)],
            drift=[drift_point(0), drift_point(1)],
            health=[health_point(0), health_point(1)],
        )
        assert store.count() == 2
        assert (store.drift_count(), store.health_count()) == (2, 2)
    finally:
        store.close()


def test_influx1_server_unreachable_at_open(influxdb) -> None:  # type: ignore[no-untyped-def]
    influxdb.server.stop()
    store = Influx1Store(influxdb.url, influxdb.database + "_late", timeout_s=2.0)
    try:
        influxdb.server.start()
        store.write([point(0)])  # creates the database now
        assert store.count() == 1
    finally:
        store.close()
        influxdb.server.drop_database(influxdb.database + "_late")


def test_influx1_schema(influxdb) -> None:  # type: ignore[no-untyped-def]
    """Measurements, tags and fields as documented in influx1.py, for tools that query
    InfluxDB directly (Grafana, Chronograf)."""
    store = Influx1Store(influxdb.url, influxdb.database)
    try:
        store.write(
            [point(0)],
            drift=[drift_point(0), drift_point(1, asset=None, value=None)],
            health=[health_point(0, inference_ms_median=None)],
        )
    finally:
        store.close()

    def keys(what: str, measurement: str) -> dict[str, str]:
        rows = influxdb.server.query(f"SHOW {what} KEYS FROM {measurement}", influxdb.database)
        return {r.get("fieldKey", r.get("tagKey")): r.get("fieldType", "tag") for r in rows}

    assert keys("TAG", "drift") == dict.fromkeys(
        ["agent", "asset", "detector", "line", "model", "model_version", "monitor", "site"],
        "tag",
    )
    assert keys("FIELD", "drift") == {"value": "float", "detail": "string", "seq": "integer"}
    assert keys("TAG", "health") == dict.fromkeys(
        ["agent", "line", "model", "model_version", "site"], "tag"
    )
    assert keys("FIELD", "health") == {
        "windows_scored": "integer", "outbox_depth": "integer", "outbox_dropped": "integer",
        "rejected_readings": "integer", "seq": "integer",
    }  # inference_ms_median was None: omitted, not written as a placeholder
    fleet = influxdb.server.query(
        "SELECT detail, value FROM drift WHERE asset = ''", influxdb.database
    )
    assert [(r["detail"], r["value"]) for r in fleet] == [(drift_point(1).detail, None)]


def test_sqlite_file_of_an_older_version_gains_the_estimate_columns(tmp_path: Path) -> None:
    """An embedded store written before estimates were kept opens, keeps its reports, and
    stores estimates from then on."""
    import sqlite3

    path = tmp_path / "series.db"
    SqliteSeriesStore(path).close()
    with sqlite3.connect(path) as conn:  # back to the older layout, with one report in it
        for column in [r[1] for r in conn.execute("PRAGMA table_info(health)")]:
            if column.startswith("est_"):
                conn.execute(f"ALTER TABLE health DROP COLUMN {column}")
    old = SqliteSeriesStore(path)
    old.close()
    with sqlite3.connect(path) as conn:
        assert "est_windows" in {r[1] for r in conn.execute("PRAGMA table_info(health)")}
    store = SqliteSeriesStore(path)
    try:
        store.write([], health=[health_point(1), health_point(2, estimate=ESTIMATE)])
        assert [p.estimate for p in store.health()] == [ESTIMATE, None]
    finally:
        store.close()


# The embedded store's tables before the role was part of each point's identity.
_SCHEMA_BEFORE_ROLES = """
CREATE TABLE IF NOT EXISTS prediction (
    agent TEXT NOT NULL,
    asset TEXT NOT NULL,
    model TEXT NOT NULL,
    window_end_ns INTEGER NOT NULL,
    site TEXT NOT NULL,
    line TEXT NOT NULL,
    model_version TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    score REAL NOT NULL,
    alert INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (agent, asset, model, window_end_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS prediction_asset ON prediction (asset, window_end_ns);
CREATE INDEX IF NOT EXISTS prediction_end ON prediction (window_end_ns);

CREATE TABLE IF NOT EXISTS drift (
    agent TEXT NOT NULL,
    asset TEXT NOT NULL,
    model TEXT NOT NULL,
    monitor TEXT NOT NULL,
    detector TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    site TEXT NOT NULL,
    line TEXT NOT NULL,
    model_version TEXT NOT NULL,
    value REAL,
    detail TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (agent, asset, model, monitor, detector, at_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS drift_at ON drift (at_ns);

CREATE TABLE IF NOT EXISTS health (
    agent TEXT NOT NULL,
    model TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    site TEXT NOT NULL,
    line TEXT NOT NULL,
    model_version TEXT NOT NULL,
    windows_scored INTEGER NOT NULL,
    outbox_depth INTEGER NOT NULL,
    outbox_dropped INTEGER NOT NULL,
    rejected_readings INTEGER NOT NULL,
    inference_ms_median REAL,
    seq INTEGER NOT NULL,
    est_windows INTEGER,
    est_alerts INTEGER,
    est_calibrated INTEGER,
    est_expected_positives REAL,
    est_precision REAL,
    est_precision_low REAL,
    est_precision_high REAL,
    est_recall REAL,
    est_recall_low REAL,
    est_recall_high REAL,
    est_f1 REAL,
    est_f1_low REAL,
    est_f1_high REAL,
    est_horizon_s REAL,
    PRIMARY KEY (agent, model, at_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS health_at ON health (at_ns);
"""


def test_sqlite_file_from_before_roles_is_rebuilt_with_its_points_live(tmp_path: Path
                                                                        ) -> None:
    """An embedded store written before shadow models opens with every point kept, as
    live, and stores a shadow version's points beside them from then on."""
    import sqlite3

    path = tmp_path / "series.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_BEFORE_ROLES)
        conn.execute("INSERT INTO prediction VALUES ('gw-1', 'pump-1', 'bearing-gbt', 20000, "
                     "'plant1', 'line3', '1.2.0', 10000, 0.75, 1, 3)")
        conn.execute("INSERT INTO drift (agent, asset, model, monitor, detector, at_ns, site, "
                     "line, model_version, value, detail, seq) VALUES ('gw-1', '', 'm', "
                     "'score', 'ADWIN', 5, 'plant1', 'line3', '1', NULL, 'd', 1)")
        conn.execute("INSERT INTO health (agent, model, at_ns, site, line, model_version, "
                     "windows_scored, outbox_depth, outbox_dropped, rejected_readings, seq) "
                     "VALUES ('gw-1', 'm', 7, 'plant1', 'line3', '1', 4, 0, 0, 0, 2)")
    store = SqliteSeriesStore(path)
    try:
        (before,) = store.predictions()
        assert (before.role, before.score, before.alert, before.seq) == ("live", 0.75, True, 3)
        assert [(e.role, e.asset) for e in store.drift_events()] == [("live", None)]
        assert [(h.role, h.windows_scored) for h in store.health()] == [("live", 4)]
        shadow = dataclasses.replace(before, role="shadow", model_version="2.0.0", score=0.5)
        store.write([shadow])
        assert store.predictions() == [before, shadow]
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE "
                                              "type = 'index' AND sql IS NOT NULL")}
    assert {"prediction_asset", "prediction_end", "drift_at", "health_at"} <= indexes
    SqliteSeriesStore(path).close()  # opening it again changes nothing


# -- the write side, on every backend: influx2 through victoria-metrics ---------------------
# What a backend stored, as victoria-metrics keeps it: one series per measurement_field and
# tag set, its (millisecond, value) samples in time order. A string field's value is not
# kept there, only that it was written ("<string>").
Samples = dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float | str]]]
AnyPoint = PredictionPoint | DriftPoint | HealthPoint

_MEASUREMENTS = {PredictionPoint: "prediction", DriftPoint: "drift", HealthPoint: "health"}
_TAGS = {
    PredictionPoint: {"site", "line", "agent", "asset", "model", "model_version"},
    DriftPoint: {"site", "line", "agent", "asset", "model", "model_version", "monitor",
                 "detector"},
    HealthPoint: {"site", "line", "agent", "model", "model_version"},
}
_TIMESTAMPS = {PredictionPoint: "window_end", DriftPoint: "at", HealthPoint: "at"}
_STRING = "<string>"


def samples(written: Iterable[AnyPoint]) -> Samples:
    """The series documented in influx1.py's schema for these points (each identity once):
    every field of the point that is neither a tag nor the timestamp becomes a series, a
    datetime its ``<name>_ns``, None none."""
    out: Samples = {}
    for p in written:
        kind = type(p)
        tags = frozenset((t, getattr(p, t)) for t in _TAGS[kind] if getattr(p, t) is not None)
        if p.role != "live":  # the role tag exists on shadow points only
            tags |= {("role", p.role)}
        ms = to_ns(getattr(p, _TIMESTAMPS[kind])) // 1_000_000
        values = [(f.name, getattr(p, f.name)) for f in dataclasses.fields(p)]
        if isinstance(p, HealthPoint) and p.estimate is not None:
            values += list(p.estimate.columns().items())  # stored flat, one field each
        for name, value in values:
            if name in _TAGS[kind] or name in ("role", _TIMESTAMPS[kind]) or value is None \
                    or isinstance(value, StoredEstimate):
                continue
            if isinstance(value, datetime):
                name, value = f"{name}_ns", to_ns(value)
            stored = _STRING if isinstance(value, str) else float(value)
            out.setdefault((f"{_MEASUREMENTS[kind]}_{name}", tags), []).append((ms, stored))
    return {key: sorted(series) for key, series in out.items()}


_STRING_SERIES = {
    f"{_MEASUREMENTS[kind]}_{f.name}"
    for kind in _MEASUREMENTS for f in dataclasses.fields(kind)
    if f.type == "str" and f.name not in _TAGS[kind] and f.name != "role"
}


def exported(vm: VictoriaMetricsServer) -> Samples:
    """What victoria-metrics stored, in the shape of :func:`samples`."""
    out: Samples = {}
    for series in vm.export():
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        values = [_STRING if name in _STRING_SERIES else v for v in series["values"]]
        key = (name, frozenset(labels.items()))
        assert key not in out, f"{key} exported twice"
        out[key] = sorted(zip(series["timestamps"], values, strict=True))
    return out


def assert_stored(stored: Samples, expected: Samples, *, rel: float = 0.0) -> None:
    """The same series with the same timestamps, their values equal within ``rel``."""
    assert set(stored) == set(expected)
    for key, series in expected.items():
        assert [t for t, _ in stored[key]] == [t for t, _ in series], key
        values, wanted = [v for _, v in stored[key]], [v for _, v in series]
        if key[0] in _STRING_SERIES:
            assert values == wanted, key
        else:
            assert values == pytest.approx(wanted, rel=rel, abs=0), key


class Writer(NamedTuple):
    """A backend; what it stored; how exactly it keeps a float (victoria-metrics keeps
    about 14 significant digits); whether a rewrite's values replace the earlier ones
    (victoria-metrics keeps one sample per series and millisecond, but not always the last
    written)."""

    store: SeriesStore
    stored: Callable[[], Samples]
    rel: float = 0.0
    last_write_wins: bool = True


@pytest.fixture(params=["sqlite", "influx1", "influx2"])
def writer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Writer]:
    """A backend and what it stored: read back for SQLite and InfluxDB 1.x, exported by
    victoria-metrics for influx2."""
    if request.param == "influx2":
        vm = request.getfixturevalue("victoria_metrics")
        backend: SeriesStore = Influx2Store(vm.url, "linewatch", token="a-token", org="plant")
        yield Writer(backend, lambda: exported(vm), rel=1e-12, last_write_wins=False)
    else:
        if request.param == "sqlite":
            backend = SqliteSeriesStore(tmp_path / "series.db")
        else:
            db = request.getfixturevalue("influxdb")
            backend = Influx1Store(db.url, db.database)
        read = backend
        yield Writer(backend, lambda: samples([
            *read.predictions(), *read.drift_events(limit=100_000), *read.health(limit=100_000)
        ]))
    backend.close()


def test_written_points_are_stored_as_sent(writer: Writer) -> None:
    points = [point(i, score=s) for i, s in enumerate([0.1, 0.7, 0.123456789012345, 1e-9])]
    points += [point(0, agent="gw-2"), point(0, asset="pump-2"), point(0, model="other")]
    points += [point(9, agent=odd, asset=odd, site=odd, line=odd, model=odd,
                     model_version=odd) for odd in ODD_NAMES]
    events = [
        drift_point(0),
        drift_point(1, asset=None, monitor="score", detector="ADWIN", value=None),
        # No newline in it: victoria-metrics ends a line there, quoted or not (InfluxDB does
        # not), and drops the point.
        drift_point(2, value=-0.123456789012345, detail='say "hi", a=b \\ c'),
        drift_point(0, detector="stuck"),
        drift_point(3, monitor=ODD_NAMES[4], detector=ODD_NAMES[7]),
    ]
    # A shadow beside the live model, with its name, on the same windows and instants.
    points += [point(0, role="shadow", model_version="2.0.0", score=0.25)]
    reports = [health_point(0, inference_ms_median=None), health_point(1),
               health_point(1, agent="gw-2", windows_scored=2**53),
               health_point(2, estimate=ESTIMATE),
               health_point(2, role="shadow", model_version="2.0.0", estimate=ESTIMATE)]
    writer.store.write(points[::-1], drift=events, health=reports)
    assert_stored(writer.stored(), samples(points + events + reports), rel=writer.rel)


def test_rewrites_keep_one_point_per_identity_the_last(writer: Writer) -> None:
    points = [point(i) for i in range(5)]
    events = [drift_point(i) for i in range(3)] + [drift_point(4, asset=None, value=None)]
    reports = [health_point(i) for i in range(3)]
    writer.store.write(points, drift=events, health=reports)
    writer.store.write(points, drift=events, health=reports)  # a retried batch
    writer.store.write(points[:2], drift=events[-1:], health=reports[1:2])
    assert_stored(writer.stored(), samples(points + events + reports), rel=writer.rel)
    changed = [point(0, score=0.9, seq=42)], [drift_point(1, value=1.5, seq=42)], \
        [health_point(2, windows_scored=7, seq=42)]
    writer.store.write(*changed)
    final = samples(changed[0] + points[1:] + events[:1] + changed[1] + events[2:] +
                    reports[:2] + changed[2])
    stored = writer.stored()
    if writer.last_write_wins:
        assert_stored(stored, final, rel=writer.rel)
    else:  # still one point per identity
        assert {k: [t for t, _ in v] for k, v in stored.items()} == \
            {k: [t for t, _ in v] for k, v in final.items()}


def test_influx2_large_write_is_batched_and_gzipped(
    victoria_metrics: VictoriaMetricsServer,
) -> None:
    points = [point(i, asset=f"asset-{i % 7}") for i in range(2_001)]  # > 2 x 1000 lines
    body_bytes = sum(len(line_protocol(p).encode()) + 1 for p in points)

    def received() -> tuple[float, float]:
        metrics = victoria_metrics.metrics()
        return (metrics.total("vm_http_requests_total", path="/influx/write"),
                metrics.total("vm_tcplistener_read_bytes_total"))

    for gzip in (False, True):
        store = Influx2Store(victoria_metrics.url, "linewatch", token="t", gzip=gzip,
                             batch_lines=1000)
        try:
            requests, read = received()
            store.write(points)
            requests_now, read_now = received()
        finally:
            store.close()
        assert requests_now - requests == 3
        if gzip:  # line protocol this repetitive shrinks far more than fourfold
            assert read_now - read < body_bytes / 4
        else:
            assert read_now - read > body_bytes
    stored = exported(victoria_metrics)  # the second, compressed, write rewrote the first
    assert_stored(stored, samples(points), rel=1e-12)
    assert sum(len(series) for (name, _), series in stored.items()
               if name == "prediction_score") == 2_001


def test_influx2_outage_mid_stream_raises_unavailable_and_loses_nothing(
    victoria_metrics: VictoriaMetricsServer,
) -> None:
    """The server stops while a writer streams batches, as the ingestor does: every write
    either returns with its points stored or raises SeriesUnavailableError, and the writer
    retries that batch until the server is back."""
    batches = [[point(20 * b + i, asset=f"pump-{i % 4}") for i in range(20)] for b in range(30)]
    store = Influx2Store(victoria_metrics.url, "linewatch", token="t", timeout_s=2.0,
                         retries=2, retry_interval_s=0.05, max_retry_delay_s=0.1,
                         max_retry_time_s=1.0)
    written, failed = threading.Semaphore(0), threading.Event()
    failures: list[int] = []

    def stream() -> None:
        for number, batch in enumerate(batches):
            while True:
                try:
                    store.write(batch)
                except SeriesUnavailableError:
                    failures.append(number)
                    failed.set()
                    threading.Event().wait(0.05)
                else:
                    written.release()
                    break

    writer = threading.Thread(target=stream, name="stream")
    try:
        writer.start()
        for _ in range(10):
            assert written.acquire(timeout=30)
        victoria_metrics.stop()  # while the stream goes on
        assert failed.wait(timeout=30)
        assert store.ping() is False
        victoria_metrics.start()
        writer.join(timeout=60)
        assert not writer.is_alive()
    finally:
        victoria_metrics.start()
        writer.join(timeout=60)
        store.close()
    assert failures and failures[0] >= 10
    assert_stored(exported(victoria_metrics), samples(p for batch in batches for p in batch),
                  rel=1e-12)


def test_influx2_refused_write_is_a_series_error_and_not_retried(
    victoria_metrics: VictoriaMetricsServer,
) -> None:
    store = Influx2Store(victoria_metrics.url, "linewatch", token="t", retry_interval_s=0.05)
    try:
        before = victoria_metrics.metrics().total("vm_http_requests_total",
                                                  path="/influx/write")
        # victoria-metrics refuses a line over 256 KiB with 400; InfluxDB refuses bad lines,
        # a bad token or a missing bucket with a 4xx too.
        with pytest.raises(SeriesError, match="400") as refused:
            store.write([], drift=[drift_point(0, detail="x" * 300_000)])
        assert refused.value.status == 400
        assert not isinstance(refused.value, SeriesUnavailableError)
        after = victoria_metrics.metrics().total("vm_http_requests_total",
                                                 path="/influx/write")
        assert after - before == 1
        store.write([point(0)])
    finally:
        store.close()
    assert_stored(exported(victoria_metrics), samples([point(0)]), rel=1e-12)


def test_influx2_reads_influxql_through_the_v1_query_api(influxdb) -> None:  # type: ignore[no-untyped-def]
    """influx2's reads are InfluxQL at /query with ``Authorization: Token``: checked on the
    InfluxDB 1.x server, which answers that API (and ignores the token without auth), with
    points written by influx1 in the schema both backends share."""
    points = [point(i, asset=f"pump-{i % 2}", score=i / 10) for i in range(6)]
    events = [drift_point(0), drift_point(1, asset=None, value=None)]
    reports = [health_point(0), health_point(1, agent="gw-2", inference_ms_median=None)]
    writer = Influx1Store(influxdb.url, influxdb.database)
    reader = Influx2Store(influxdb.url, "a-bucket", database=influxdb.database, token="t")
    try:
        writer.write(points, drift=events, health=reports)
        assert reader.ping() is True
        assert reader.predictions() == points
        assert reader.count(asset="pump-1") == 3
        assert reader.scores("pump-0", since=points[2].window_end) == points[2::2]
        assert reader.asset_counts(TIME_MIN, TIME_MAX) == [
            AssetsSeen("plant1", "line3", "bearing-gbt", "1.2.0", 2)]
        assert reader.drift_events() == events[::-1]
        assert reader.health() == reports[::-1]
        assert reader.latest_health() == {"gw-1": reports[0], "gw-2": reports[1]}
    finally:
        writer.close()
        reader.close()
