"""Decode and check one raw MQTT message (pure: no I/O, never raises on bad input).

``parse`` answers one of three things for every message: a data message ready to store
(``DataMessage``), an agent status (``StatusMessage``), or a ``Rejected`` carrying the
``agent.wire.WireError`` that says why (reason codes: ``bad_topic``, ``too_large``,
``malformed``, ``unknown_schema``, ``invalid``).

Beyond what the wire models check, the aggregator needs (semantic checks, all
``invalid``): the payload's agent is the topic's agent; a window does not end before it
starts; ``seq`` fits in 64 bits; and every name (site, line, agent, asset, model name and
version) is 1..128 characters with no control character and no backslash, because names
become SQL keys and InfluxDB tags, and line protocol cannot carry a backslash before
``,`` ``=`` space or at the end of a tag value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.wire import (
    Envelope,
    Prediction,
    Status,
    TopicParts,
    WireError,
    decode,
    decode_status,
    parse_topic,
)
from aggregator.db import NAME_LENGTH
from aggregator.series import PredictionPoint

__all__ = [
    "DataMessage",
    "Parsed",
    "RawMessage",
    "Rejected",
    "StatusMessage",
    "check_name",
    "parse",
]

_MAX_SEQ = 2**63 - 1  # BIGINT: a larger seq would fail every insert, forever
# A backslash, or a Unicode control character (category Cc is exactly these two ranges).
_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One MQTT message as received: topic and payload bytes, nothing parsed."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DataMessage:
    """A valid envelope, with its predictions already turned into storable points."""

    parts: TopicParts
    envelope: Envelope
    points: list[PredictionPoint]


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
        for field in ("site", "line", "agent"):
            check_name(field, getattr(parts, field))
        if parts.kind == "status":
            status = decode_status(message.payload)
            _check_same_agent(status.agent, parts.agent)
            return StatusMessage(parts, status)
        envelope = decode(message.payload)
        _check_envelope(parts, envelope)
    except WireError as exc:
        return Rejected(message, exc)
    return DataMessage(parts, envelope, _points(parts, envelope))


def check_name(field: str, value: str) -> None:
    """Raise ``WireError("invalid")`` unless ``value`` can be a key and a tag everywhere.

    >>> check_name("asset", "pump 3, line=2")
    >>> check_name("asset", "pump\\\\3")
    Traceback (most recent call last):
    ...
    agent.wire.WireError: invalid: asset 'pump\\\\3' contains a backslash or control character
    """
    if not 1 <= len(value) <= NAME_LENGTH:
        raise WireError("invalid", f"{field} must be 1..{NAME_LENGTH} characters long")
    if _FORBIDDEN.search(value):
        raise WireError("invalid", f"{field} {value!r} contains a backslash or control character")


def _check_same_agent(payload_agent: str, topic_agent: str) -> None:
    if payload_agent != topic_agent:
        raise WireError(
            "invalid", f"agent {payload_agent!r} in the payload, {topic_agent!r} in the topic"
        )


def _check_envelope(parts: TopicParts, envelope: Envelope) -> None:
    _check_same_agent(envelope.agent, parts.agent)
    check_name("model.name", envelope.model.name)
    check_name("model.version", envelope.model.version)
    if envelope.seq > _MAX_SEQ:
        raise WireError("invalid", f"seq {envelope.seq} does not fit in 64 bits")
    checked: set[str] = set()  # a batch names few assets many times
    for n, item in enumerate(envelope.items):
        if isinstance(item, Prediction):
            if item.asset not in checked:
                check_name(f"items.{n}.asset", item.asset)
                checked.add(item.asset)
            if item.window_start > item.window_end:
                raise WireError("invalid", f"items.{n}: window_start is after window_end")


def _points(parts: TopicParts, envelope: Envelope) -> list[PredictionPoint]:
    return [
        PredictionPoint(
            site=parts.site, line=parts.line, agent=envelope.agent, asset=item.asset,
            model=envelope.model.name, model_version=envelope.model.version,
            window_start=item.window_start, window_end=item.window_end,
            score=item.score, alert=item.alert, seq=envelope.seq,
        )
        for item in envelope.items
        if isinstance(item, Prediction)
    ]
