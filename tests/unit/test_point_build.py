"""The fast paths of ingest give what the checked paths give.

``series.prediction_points`` builds stored points without ``PredictionPoint.__init__``'s
checks (the contract already made them); ``series.to_ns`` reads a time's parts instead of
dividing timedeltas. Both must be indistinguishable from the slow way, or the store and
the rules would see different points depending on how they were built.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

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
