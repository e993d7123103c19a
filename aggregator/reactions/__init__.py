"""What follows a durably stored batch: one small unit per concern.

The ingestor stores a batch's points in the series store, then opens ONE SQL transaction
in which it marks the messages seen and hands the accepted batch to each reaction in
turn. A reaction reads and writes through that session only, so everything a message
caused commits together with its msg_id: a crash can never leave a window counted without
its ticket, nor a ticket without its window.

Reactions run in the order :func:`standard` lists them; the app wires that list (see
``aggregator.api.app``). A new rule or notification is a new module here and one more line
in :func:`standard`, not another step inside the ingestor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session

from aggregator.validate import DataMessage, StatusMessage

if TYPE_CHECKING:
    from aggregator.settings import Settings

__all__ = ["Batch", "Reaction", "standard"]


@dataclass(frozen=True, slots=True)
class Batch:
    """What one ingested batch added: data messages never seen before (in arrival order)
    and agents' status messages, received at ``now`` (the aggregator's clock)."""

    data: Sequence[DataMessage]
    statuses: Sequence[StatusMessage]
    now: datetime


class Reaction(Protocol):
    """One unit that reacts to accepted batches inside the ingest transaction."""

    name: str

    def react(self, session: Session, batch: Batch) -> None:
        """Apply the batch; raise only for a database failure (the batch is retried)."""
        ...


def standard(settings: Settings) -> list[Reaction]:
    """The aggregator's reactions, in the order they run."""
    from aggregator.reactions.agents import AgentRegistry
    from aggregator.reactions.delivery import DeliveryTracking
    from aggregator.reactions.maintenance import MaintenanceReaction
    from aggregator.reactions.performance import EstimateReaction
    from aggregator.reactions.retraining import RetrainingReaction
    from aggregator.reactions.triage import TriageReaction

    return [
        AgentRegistry(),  # first: later reactions may look agents up
        DeliveryTracking(settings),  # which seqs are stored; what to ask the agent again
        TriageReaction(settings),  # records conditions; sensor and inspect tickets
        MaintenanceReaction(settings),  # trusts a risk only on known inputs
        RetrainingReaction(settings),  # the model itself, per version and site
        EstimateReaction(settings),  # the gateways' F1 estimates against the card's
    ]
