"""One contract, every series backend: the embedded SQLite store and InfluxDB 1.x (real)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aggregator_support import T0

from aggregator.errors import SeriesUnavailableError
from aggregator.series import PredictionPoint, SeriesStore
from aggregator.series.influx1 import Influx1Store
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


def point(
    i: int, *, agent: str = "gw-1", asset: str = "pump-1", score: float = 0.5, **changes: object
) -> PredictionPoint:
    base = PredictionPoint(
        site="plant1",
        line="line3",
        agent=agent,
        asset=asset,
        model="bearing-gbt",
        model_version="1.2.0",
        window_start=T0 + timedelta(seconds=10 * i),
        window_end=T0 + timedelta(seconds=10 * i + 10, microseconds=123456),
        score=score,
        alert=score >= 0.7,
        seq=i,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


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


@pytest.mark.parametrize(
    "odd",
    ["pump 3", "a,b", "k=v", "it's", 'say "hi"', "a, b = 'c'", "ünïcødé ⚙", "C:\\line", "x'; DROP"],
)
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
    assert store.predictions() == []
    assert store.count() == 0
    assert store.ping() is True
    assert store.name in {"sqlite", "influx1"}


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
        store.write([point(0)])
        influxdb.server.stop()
        assert store.ping() is False
        with pytest.raises(SeriesUnavailableError):
            store.write([point(1)])
        with pytest.raises(SeriesUnavailableError):
            store.count()
        influxdb.server.start()
        store.write([point(0), point(1)])  # the retry rewrites point 0: still one
        assert store.count() == 2
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
