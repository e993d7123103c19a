"""A batch cut at its drift events' times (``aggregator.reactions.eventtime``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aggregator_support import T0, data_topic, drift_events, health_report, payload, predictions

from aggregator.reactions import Batch
from aggregator.reactions.eventtime import slices
from aggregator.validate import DataMessage, RawMessage, parse
from contract.wire import DriftEvent, Prediction

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def message(seq: int, items: list, agent: str = "gw-1",  # type: ignore[type-arg]
            kind: str = "predictions") -> DataMessage:
    parsed = parse(RawMessage(data_topic(agent, kind), payload(agent, seq, items)))
    assert isinstance(parsed, DataMessage)
    return parsed


def when(item: object) -> datetime:
    return item.window_end if isinstance(item, Prediction) else item.at  # type: ignore[attr-defined]


def test_a_batch_without_drift_is_itself() -> None:
    batch = Batch([message(0, predictions("pump-1", [0.1, 0.9]))], [], NOW)
    assert slices(batch) == [batch]


def test_every_item_lands_once_in_the_slice_of_its_event_time() -> None:
    drift = drift_events("pump-1", 2)  # at T0 + 0 and + 1 min
    first = message(0, predictions("pump-1", [0.1] * 5))
    second = message(1, drift, kind="drift")
    third = message(2, [health_report(0, 10), health_report(3, 20)], agent="gw-2",
                    kind="health")
    batch = Batch([first, second, third], ["status"], NOW)  # type: ignore[list-item]
    parts = slices(batch)
    cuts = sorted({e.at for e in drift})

    # Nothing lost, nothing doubled, and each message's items in their order.
    for original in (first, second, third):
        pieces = [d for p in parts for d in p.data if d.envelope.msg_id == original.envelope.msg_id]
        assert [i for d in pieces for i in d.envelope.items] == original.envelope.items
        assert [p for d in pieces for p in d.points] == original.points
        assert [h for d in pieces for h in d.health] == original.health
        assert [e for d in pieces for e in d.drift] == original.drift
    # Slice 0 is what came before the first event; slice i begins with the events of the
    # i-th instant and holds what came up to the next one (an instant's windows after it).
    assert parts[0].statuses == ["status"] and all(p.statuses == () for p in parts[1:])
    bounds = [datetime.min.replace(tzinfo=UTC), *cuts, datetime.max.replace(tzinfo=UTC)]
    for i, part in enumerate(parts):
        for d in part.data:
            assert all(bounds[i] <= when(x) < bounds[i + 1] for x in d.envelope.items)
            assert [e.at for e in d.envelope.items if isinstance(e, DriftEvent)] in (
                [], [bounds[i]] * len([e for e in d.envelope.items if isinstance(e, DriftEvent)]))
            assert d.parts in (first.parts, second.parts, third.parts)
    assert len(parts) == 3 and T0 + timedelta(minutes=1) == cuts[-1]
