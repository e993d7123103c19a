"""A batch cut at its conditions' event times, so reactions see a backlog as they saw it live.

Live, a maintenance ticket may open on alerts before the drift event that explains them
arrives, and triage then reclassifies it; received as one backlog batch, triage would see
every condition before the maintenance rule saw any window, and judge those windows with
knowledge the plant did not have yet. So a batch whose (trusted) items include drift
events is cut at each distinct event time ``at``: the first slice holds what happened
before the first event, and each later one begins with the events of one instant,
followed by the windows and health reports up to the next. A window at the very instant
of an event comes after it, as it does when an agent sends both in one message.

A batch without drift events is one slice, itself: nothing is copied on the common path.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from aggregator.reactions import Batch
from aggregator.validate import DataMessage
from contract.wire import DriftEvent, Health, Prediction

__all__ = ["slices"]


def slices(batch: Batch) -> list[Batch]:
    """``batch`` as consecutive batches in event-time order (see the module docstring).

    Statuses go with the first slice; a message contributes to every slice it has items
    in, keeping its topic, envelope header and model, and its items' order.
    """
    instants = sorted({d.at for item in batch.data for d in item.drift})
    if not instants:
        return [batch]
    # Instants with nothing else between them are one cut: their events reach the
    # reactions together, as they would in one message, and each slice costs a round of
    # every reaction.
    others = sorted({p.window_end for item in batch.data for p in item.points}
                    | {h.at for item in batch.data for h in item.health})
    cuts = [instants[0]]
    for at in instants[1:]:
        if bisect_left(others, at) > bisect_left(others, cuts[-1]):
            cuts.append(at)
    parts: list[list[DataMessage]] = [[] for _ in range(len(cuts) + 1)]
    for item in batch.data:
        for index, piece in _cut(item, cuts):
            parts[index].append(piece)
    return [Batch(data, batch.statuses if i == 0 else (), batch.now)
            for i, data in enumerate(parts) if data or i == 0]


def _cut(item: DataMessage, cuts: Sequence[datetime]) -> list[tuple[int, DataMessage]]:
    """The message's items by slice: (slice index, the message holding only those)."""
    envelope_items: dict[int, list[Prediction | DriftEvent | Health]] = {}
    for wire_item in item.envelope.items:
        when = wire_item.window_end if isinstance(wire_item, Prediction) else wire_item.at
        envelope_items.setdefault(bisect_right(cuts, when), []).append(wire_item)
    if len(envelope_items) == 1:
        ((index, _),) = envelope_items.items()
        return [(index, item)]
    out = []
    for index in sorted(envelope_items):
        def here(when: datetime, index: int = index) -> bool:
            return bisect_right(cuts, when) == index

        out.append((index, replace(
            item,
            envelope=item.envelope.model_copy(update={"items": envelope_items[index]}),
            points=[p for p in item.points if here(p.window_end)],
            drift=[d for d in item.drift if here(d.at)],
            health=[h for h in item.health if here(h.at)],
        )))
    return out
