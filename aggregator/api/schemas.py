"""Request and response models of the REST API; routes never return storage rows."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AgentOut",
    "CountsOut",
    "EvidenceOut",
    "HealthOut",
    "MqttHealthOut",
    "ResolveIn",
    "ScoreOut",
    "SeriesHealthOut",
    "TicketOut",
]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class ScoreOut(_Out):
    window_end: datetime
    score: float
    alert: bool


class EvidenceOut(_Out):
    """Why the ticket exists: k alerts in the last n windows, and the scores behind it."""

    k: int
    n: int
    scores: list[ScoreOut]


class TicketOut(_Out):
    id: int
    kind: Literal["maintenance", "retraining"]
    asset: str
    agent: str
    site: str
    line: str
    status: Literal["open", "acknowledged", "resolved"]
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    outcome: Literal["confirmed_failure", "no_fault_found", "other"] | None
    note: str | None
    model_name: str
    model_version: str
    threshold: float
    escalations: int = Field(description="times later evidence was added to this ticket")
    evidence: EvidenceOut


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["confirmed_failure", "no_fault_found", "other"] = Field(
        description="ground truth for model health: was there a real fault?"
    )
    note: str | None = Field(None, max_length=4000)


class AgentOut(_Out):
    agent: str = Field(validation_alias="agent_id")
    site: str
    line: str
    state: Literal["online", "offline", "unknown"]
    state_at: datetime | None
    last_seen: datetime | None
    last_seq: int | None
    model_name: str | None
    model_version: str | None
    predictions_count: int


class MqttHealthOut(_Out):
    connected: bool
    subscribed: bool
    broker: str
    embedded: bool
    received: int
    acked: int
    queued: int
    retries: int
    overflowed: int


class SeriesHealthOut(_Out):
    backend: str
    ok: bool


class CountsOut(_Out):
    accepted: int = Field(description="messages accepted (data and status)")
    predictions_stored: int = Field(description="predictions written to the series store")
    duplicates: int = Field(description="messages dropped as already seen (msg_id)")
    statuses: int
    rejected: dict[str, int] = Field(description="rejected messages by reason")


class HealthOut(_Out):
    status: Literal["ok", "degraded"]
    mqtt: MqttHealthOut
    series: SeriesHealthOut
    counts: CountsOut
