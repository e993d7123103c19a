"""The fast paths of ingest give what the checked paths give.

``series.prediction_points`` builds stored points without ``PredictionPoint.__init__``'s
checks (the contract already made them); ``series.to_ns`` reads a time's parts instead of
dividing timedeltas; ``influx1.prediction_lines`` formats a batch's lines with each tag set
XX indistinguishable from the slow way, or the store and
the rules would see different points depending on how they were built.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aggregator_support import data_topic, payload, predictions

from aggregator.series import (
    SHADOW,
    TIME_MAX,
    TIME_MIN,
    PredictionPoint,
    prediction_points,
    to_ns,
)
from aggregator.series.influx1 import line_protocol, prediction_lines
from aggregator.validate import DataMessage, RawMessage, parse

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_fast_points_equal_checked_points() -> None:
    preds = predictions("engine-007", [0.1, 0.95, 0.5])
    fast = prediction_points("plant", "line-1", "gw-1", "m", "3", 42, SHADOW, preds)
    slow = [PredictionPoint("plant", "line-1", "gw-1", p.asset, "m", "3", p.window_start,
                            p.window_end, p.score, p.alert, 42, SHADOW) for p in preds]
    assert fast == slow
    assert [hash(p) for p in fast] == [hash(p) for p in slow]
    assert all(type(p) is PredictionPoint for p in fast)
    assert [dataclasses.astuple(p) for p in fast] == [dataclasses.astuple(p) for p in slow]


def test_fast_points_are_frozen() -> None:
    point = prediction_points("plant", "line-1", "gw-1", "m", "3", 0, "live",
                              predictions("a", [0.2]))[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.score = 0.9  # type: ignore[misc]
    assert dataclasses.replace(point, score=0.9).score == 0.9


def test_parsed_message_carries_the_envelopes_predictions() -> None:
    preds = predictions("engine-001", [0.3, 0.8])
    parsed = parse(RawMessage(data_topic("gw-1"), payload("gw-1", 5, list(preds))))
    assert isinstance(parsed, DataMessage)
    assert [(p.asset, p.window_end, p.score, p.alert, p.seq, p.agent) for p in parsed.points] \
        == [(p.asset, p.window_end, p.score, p.alert, 5, "gw-1") for p in preds]


def test_checked_points_still_refuse_naive_times() -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="window_start and window_end must be timezone-aware"):
        PredictionPoint("s", "l", "a", "x", "m", "1", naive, naive, 0.1, False, 0)


@pytest.mark.parametrize("value", [
    TIME_MIN, TIME_MAX, _EPOCH, _EPOCH - timedelta(microseconds=1),
    datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(1969, 7, 20, 20, 17, 40, 999_999, tzinfo=UTC),
    datetime(2026, 3, 29, 2, 30, tzinfo=UTC).astimezone(),
])
def test_to_ns_is_exact(value: datetime) -> None:
    assert to_ns(value) == (value - _EPOCH) // timedelta(microseconds=1) * 1000


def _point(asset: str, start: datetime, end: datetime, score: float, *, seq: int = 7,
           site: str = "plant", role: str = "live") -> PredictionPoint:
    return PredictionPoint(site, "line 1", "gw,1", asset, "m=a", "3", start, end, score,
                           score >= 0.5, seq, role)


def test_fast_lines_equal_line_protocol() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    minute = timedelta(minutes=1)
    # The same instants in another zone, windows in and out of order, repeated and not,
    # a shadow, another site, escaped tags, an int score, times around the epoch and the
    # ends of InfluxDB's range: whatever the look-ups hit or miss, the lines are the same.
    elsewhere = (t + minute).astimezone(timezone(timedelta(hours=5, minutes=30)))
    points = [
        _point("pump 1", t, t + minute, 0.1),
        _point("pump 2", t, t + minute, 0.9),
        _point("pump 1", t + minute, t + 2 * minute, 1),
        _point("pump 2", elsewhere, elsewhere + minute, 0.25),
        _point("pump 1", t, t + minute, 0.1, seq=8),
        _point("pump 1", t, t + minute, 0.1, role=SHADOW),
        _point("pump 1", t, t + minute, 0.1, site="plant,2"),
        _point("pump 1", t + minute, t + minute, 7.0599647e-08),
        _point("x", _EPOCH - timedelta(microseconds=1), _EPOCH, 0.0),
        _point("x", TIME_MIN, TIME_MAX, 0.5),
        _point("pump 1", t, t + minute, 0.1),
    ]
    assert prediction_lines(points) == [line_protocol(p) for p in points]
    assert prediction_lines(points)[0] == (
        "prediction,agent=gw\\,1,asset=pump\\ 1,line=line\\ 1,model=m\\=a,model_version=3"
        ",site=plant score=0.1,alert=false,seq=7i,window_start_ns=1767225600000000000i"
        " 1767225660000000000")
    assert prediction_lines([]) == []


def test_fast_lines_tell_senders_apart_by_value() -> None:
    # Senders are told apart by identity first: equal names that are other objects, and
    # senders that differ in one field only, interleaved, must still get their own tags.
    t = datetime(2026, 1, 1, tzinfo=UTC)
    end = t + timedelta(minutes=1)

    def copy(text: str) -> str:
        return "".join(list(text))  # equal, not the same object

    points = [
        PredictionPoint("plant", "l1", "gw-1", "pump", "m", "3", t, end, 0.1, False, 1),
        PredictionPoint(copy("plant"), copy("l1"), copy("gw-1"), copy("pump"), copy("m"),
                        copy("3"), t, end, 0.2, False, 1),
        PredictionPoint("plant", "l1", "gw-1", "pump", "m", "3", t, end, 0.1, False, 2),
        PredictionPoint("plant", "l1", "gw-2", "pump", "m", "3", t, end, 0.1, False, 1),
        PredictionPoint("plant", "l2", "gw-1", "pump", "m", "3", t, end, 0.1, False, 1),
        PredictionPoint("plant", "l1", "gw-1", "pump", "m", "4", t, end, 0.1, False, 1),
        PredictionPoint("plant", "l1", "gw-1", "pump", "n", "3", t, end, 0.1, False, 1),
        PredictionPoint("other", "l1", "gw-1", "pump", "m", "3", t, end, 0.1, False, 1),
        PredictionPoint("plant", "l1", "gw-1", "pump", "m", "3", t, end, 0.1, False, 1,
                        SHADOW),
        PredictionPoint("plant", "l1", "gw-1", "fan", "m", "3", t, end, 0.1, False, 1),
        PredictionPoint("plant", "l1", "gw-1", "pump", "m", "3", t, end, 0.1, False, 1),
    ]
    lines = prediction_lines(points)
    assert lines == [line_protocol(p) for p in points]
    assert len(set(lines)) == len(lines) - 1  # only the first and last are the same line


def test_fast_lines_of_parsed_messages_equal_line_protocol() -> None:
    messages = [parse(RawMessage(data_topic(f"gw-{n}"), payload(f"gw-{n}", n, [
        *predictions("engine-1", [0.1, 0.8, 0.75], start=n),
        *predictions("engine-2", [0.9, 0.2, 0.3], start=n)]))) for n in range(3)]
    points = [p for m in messages if isinstance(m, DataMessage) for p in m.points]
    assert len(points) == 18
    assert prediction_lines(points) == [line_protocol(p) for p in points]


def test_fast_lines_refuse_what_line_protocol_refuses() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    bad = _point("ends in \\", t, t, 0.1)
    with pytest.raises(ValueError, match="cannot be written as line protocol"):
        line_protocol(bad)
    with pytest.raises(ValueError, match="cannot be written as line protocol"):
        prediction_lines([_point("fine", t, t, 0.1), bad])
