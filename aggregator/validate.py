"""Decode and check one raw MQTT message (pure: no I/O, never raises on bad input).

``parse`` answers one of three things for every message: a data message ready to store
(``DataMessage``), an agent status (``StatusMessage``), or a ``Rejected`` carrying the
``contract.wire.WireError`` that says why (reason codes: ``bad_topic``, ``too_large``,
``malformed``, ``unknown_schema``, ``invalid``).

Every check lives in ``contract.wire`` (the one definition of the contract): the topic's
names, the payload's models, and ``Envelope.check_topic`` (same agent as the topic, only
the topic's item kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aggregator.series import (
    DriftPoint,
    HealthPoint,
    PredictionPoint,
    StoredEstimate,
    prediction_points,
    role_of,
)
from contract.wire import (
    DriftEvent,
    Envelope,
    Health,
    Status,
    TopicParts,
    WireError,
    decode,
    decode_status,
    parse_topic,
)

__all__ = [
    "DataMessage",
    "Parsed",
    "RawMessage",
    "Rejected",
    "StatusMessage",
    "parse",
]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One MQTT message as received: topic and payload bytes, nothing parsed."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DataMessage:
    """A valid envelope, with its items already turned into storable points: predictions
    in ``points``, drift events in ``drift``, health reports in ``health``."""

    parts: TopicParts
    envelope: Envelope
    points: list[PredictionPoint]
    drift: list[DriftPoint]
    health: list[HealthPoint]


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A valid retained status of an agent (online, or offline from its last will)."""

    parts: TopicParts
    status: Status


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that breaks the contract, and the error that says how."""

    message: RawMessage
    error: WireError


Parsed = DataMessage | StatusMessage | Rejected


def parse(message: RawMessage) -> Parsed:
    """Topic, then payload, then semantics; the first failure rejects the message.

    >>> parse(RawMessage("linewatch/v1/p/l/gw-1/predictions", b"{")).error.reason
    'malformed'
    >>> parse(RawMessage("linewatch/v2/p/l/gw-1/predictions", b"{}")).error.reason
    'bad_topic'
    """
    try:
        parts = parse_topic(message.topic)
        if parts.kind == "status":
            status = decode_status(message.payload)
            if status.agent != parts.agent:
                raise WireError("invalid", f"agent {status.agent!r} in the payload, "
                                           f"{parts.agent!r} in the topic")
            return StatusMessage(parts, status)
        envelope = decode(message.payload)
        envelope.check_topic(parts)
    except WireError as exc:
        return Rejected(message, exc)
    return _data(parts, envelope)


def _data(parts: TopicParts, envelope: Envelope) -> DataMessage:
    # Who sent it, with what: the same on every point of the envelope.
    sender: dict[str, Any] = {
        "site": parts.site, "line": parts.line, "agent": envelope.agent,
        "model": envelope.model.name, "model_version": envelope.model.version,
        "seq": envelope.seq, "role": role_of(envelope.model),
    }
    points: list[PredictionPoint] = []
    drift: list[DriftPoint] = []
    health: list[HealthPoint] = []
    site, line, agent, seq = parts.site, parts.line, envelope.agent, envelope.seq
    model, version = envelope.model.name, envelope.model.version
    if parts.kind == "predictions":
        # The bulk of ingest; check_topic let only predictions onto this topic, and the
        # contract checked their times, so the points are built without checking again.
        points = prediction_points(site, line, agent, model, version, seq, sender["role"],
                                   envelope.items)
        return DataMessage(parts, envelope, points, drift, health)
    for item in envelope.items:
        if isinstance(item, DriftEvent):
            drift.append(DriftPoint(
                **sender, asset=item.asset, at=item.at, monitor=item.monitor,
                detector=item.detector, value=item.value, detail=item.detail,
            ))
        elif isinstance(item, Health):
            health.append(HealthPoint(
                **sender, at=item.at, windows_scored=item.windows_scored,
                outbox_depth=item.outbox_depth, outbox_dropped=item.outbox_dropped,
                rejected_readings=item.rejected_readings,
                inference_ms_median=item.inference_ms_median,
                estimate=None if item.estimate is None
                else StoredEstimate.from_wire(item.estimate),
            ))
    return DataMessage(parts, envelope, points, drift, health)
