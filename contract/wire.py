"""MQTT wire contract shared by the agent (producer) and the aggregator (consumer).

Topic: ``linewatch/v1/{site}/{line}/{agent}/{kind}``. Payload: UTF-8 JSON.

Every data message is an :class:`Envelope` carrying a batch of items (predictions, drift
events, health reports): batching is how a Python agent stays fast, since the per-message
cost of an MQTT publish dwarfs the cost of scoring a window. The retained ``status`` topic
carries a :class:`Status` instead; the agent's last will publishes ``offline`` there.

Schema 1 grows only by optional fields that are left out of a payload when unset, so every
payload written before them reads and round-trips unchanged. The aggregator refuses fields
it does not know (``extra="forbid"``): upgrade aggregators before agents.

This module imports only the standard library and pydantic so that the aggregator, and
any tool on the plant floor, can import it without the agent's runtime.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from contract.errors import WireError

__all__ = [
    "COMMANDS",
    "ITEM_KINDS",
    "KINDS",
    "MAX_NAME",
    "MAX_PAYLOAD_BYTES",
    "MAX_SEQ",
    "SCHEMA",
    "TOPIC_ROOT",
    "ANDON_ROOT",
    "AndonEvent",
    "AndonState",
    "AndonTicket",
    "Artifact",
    "Assignment",
    "Budget",
    "Delivery",
    "Deployment",
    "DriftEvent",
    "Envelope",
    "Estimate",
    "Health",
    "Interval",
    "Item",
    "ModelRef",
    "Prediction",
    "Range",
    "Span",
    "Status",
    "Thresholds",
    "TopicParts",
    "Undeliverable",
    "WireError",
    "andon_topic",
    "command_subscription",
    "command_topic",
    "decode",
    "decode_assignment",
    "decode_delivery",
    "decode_andon_event",
    "decode_andon_state",
    "decode_status",
    "encode",
    "parse_topic",
    "subscription",
    "topic",
]

SCHEMA = 1
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_ITEMS = 5000
MAX_NAME = 128
MAX_SEQ = 2**63 - 1  # a signed 64-bit column holds it everywhere
TOPIC_ROOT = "linewatch/v1"
KINDS = ("status", "predictions", "drift", "health")
# Commands the aggregator sends one agent, under ``.../{agent}/cmd/{command}``.
COMMANDS = ("delivery", "model")
MAX_SPANS = 1000
# The item kind each data topic carries.
ITEM_KINDS = {"predictions": "prediction", "drift": "drift", "health": "health"}

# Names become topic segments, SQL keys and InfluxDB tags. Line protocol cannot carry a
# backslash before `,` `=` space or at the end of a tag, so no backslash and no control
# character anywhere; topic segments also exclude MQTT's separator and wildcards.
_NAME_PATTERN = r"^[^\\\x00-\x1f\x7f-\x9f]+$"
_SEGMENT_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f-\x9f/+#]")


def _check_segment(name: str, value: str) -> str:
    if not 1 <= len(value) <= MAX_NAME or _SEGMENT_FORBIDDEN.search(value):
        raise WireError(
            "bad_topic",
            f"{name} {value!r} must be 1..{MAX_NAME} characters without / + # \\ or "
            "control characters",
        )
    return value


class TopicParts(BaseModel):
    model_config = ConfigDict(frozen=True)
    site: str
    line: str
    agent: str
    kind: str


def topic(site: str, line: str, agent: str, kind: str) -> str:
    """Build a publish topic; never contains wildcards.

    >>> topic("plant1", "line3", "gw-7", "predictions")
    'linewatch/v1/plant1/line3/gw-7/predictions'
    """
    if kind not in KINDS:
        raise WireError("bad_topic", f"unknown kind {kind!r}; expected one of {KINDS}")
    parts = [_check_segment(n, v) for n, v in (("site", site), ("line", line), ("agent", agent))]
    return "/".join([TOPIC_ROOT, *parts, kind])


def parse_topic(value: str) -> TopicParts:
    """Split a topic into its parts.

    >>> parse_topic("linewatch/v1/plant1/line3/gw-7/drift").agent
    'gw-7'
    """
    parts = value.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != TOPIC_ROOT or parts[5] not in KINDS:
        raise WireError("bad_topic", f"{value!r} is not {TOPIC_ROOT}/site/line/agent/kind")
    for name, segment in zip(("site", "line", "agent"), parts[2:5], strict=True):
        _check_segment(name, segment)
    return TopicParts(site=parts[2], line=parts[3], agent=parts[4], kind=parts[5])


def command_topic(site: str, line: str, agent: str, command: str) -> str:
    """Where the aggregator sends a command to one agent (only that agent may read it).

    >>> command_topic("plant1", "line3", "gw-7", "delivery")
    'linewatch/v1/plant1/line3/gw-7/cmd/delivery'
    """
    if command not in COMMANDS:
        raise WireError("bad_topic", f"unknown command {command!r}; expected one of {COMMANDS}")
    parts = [_check_segment(n, v) for n, v in (("site", site), ("line", line), ("agent", agent))]
    return "/".join([TOPIC_ROOT, *parts, "cmd", command])


def command_subscription(site: str, line: str, agent: str) -> str:
    """The filter an agent subscribes to for its own commands.

    >>> command_subscription("plant1", "line3", "gw-7")
    'linewatch/v1/plant1/line3/gw-7/cmd/#'
    """
    parts = [_check_segment(n, v) for n, v in (("site", site), ("line", line), ("agent", agent))]
    return "/".join([TOPIC_ROOT, *parts, "cmd", "#"])


def subscription(site: str = "+", line: str = "+", agent: str = "+", kind: str = "+") -> str:
    """Topic filter for a subscriber; defaults match every agent and kind.

    >>> subscription(kind="predictions")
    'linewatch/v1/+/+/+/predictions'
    """
    return "/".join([TOPIC_ROOT, site, line, agent, kind])


def _utc(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("timestamps must carry a time zone (UTC)")
    # Most timestamps arrive in UTC already; converting them is the costliest step of a decode.
    return value if not offset else value.astimezone(UTC)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=_NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)




class Prediction(_Strict):
    """One scored window of one asset."""

    kind: Literal["prediction"] = "prediction"
    asset: Name
    window_start: datetime
    window_end: datetime
    score: Probability
    alert: bool = Field(description="score >= the model's threshold")

    _utc_start = field_validator("window_start")(_utc)
    _utc_end = field_validator("window_end")(_utc)

    @model_validator(mode="after")
    def _ordered(self) -> Prediction:
        if self.window_start > self.window_end:
            raise ValueError("window_start is after window_end")
        return self


class _Optional(_Strict):
    """A model whose fields named in ``_OMIT_WHEN_NONE`` are left out of the payload when
    None: fields added to schema 1 after it shipped, so older payloads stay byte-identical."""

    _OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self._OMIT_WHEN_NONE:
            if data.get(name, 0) is None:
                del data[name]
        return data


class ModelRef(_Optional):
    """The model that produced the items, and the threshold its card sets for alerts.

    ``role``: ``shadow`` when the model runs beside the live one to be judged: its items are
    stored but open no ticket. Absent (or ``live``): the model whose alerts count."""

    _OMIT_WHEN_NONE = frozenset({"role"})

    name: Name
    version: Name
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    threshold: Probability
    role: Literal["live", "shadow"] | None = None

    @property
    def shadow(self) -> bool:
        return self.role == "shadow"


class Range(_Strict):
    """A signal's reference envelope: what training saw."""

    low: FiniteFloat
    high: FiniteFloat
    mean: FiniteFloat | None = None


class DriftEvent(_Optional):
    """A drift or data-quality condition that started or ended on one asset (or, for the
    score stream, on the agent's whole fleet).

    ``monitor`` names the signal (a feature, a channel, or ``score``), ``signal`` says which
    of those it is and ``channels`` the raw inputs it reads, so a receiver can tell one bad
    sensor from an asset that moved as a whole. ``since`` is when the condition began (the
    detector's estimate, plant time), ``at`` when it was detected; ``reference`` is what
    training saw and ``current`` the signal's mean since ``since``; ``value`` is the
    detector's statistic and ``threshold`` the calibrated level it crossed.
    """

    _OMIT_WHEN_NONE = frozenset(
        {"state", "signal", "channels", "since", "reference", "current", "threshold"}
    )

    kind: Literal["drift"] = "drift"
    asset: Name | None = None
    at: datetime
    monitor: Name = Field(description="what was watched: 'score' or a feature name")
    detector: Name = Field(description="e.g. envelope, step, stuck, nan, gap, alert_rate")
    value: FiniteFloat | None = None
    detail: str = ""
    state: Literal["start", "end"] | None = Field(
        None, description="the condition started (the default when absent) or ended")
    signal: Literal["feature", "channel", "score", "asset"] | None = None
    channels: Annotated[list[Name], Field(max_length=64)] | None = None
    since: datetime | None = None
    reference: Range | None = None
    current: FiniteFloat | None = None
    threshold: FiniteFloat | None = None

    _utc_at = field_validator("at")(_utc)

    @field_validator("since")
    @classmethod
    def _utc_since(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)


class Budget(_Strict):
    """A false-alarm budget in a plant's words: ``alarms`` false drift alarms per agent per
    ``per_days`` days, at ``windows_per_day`` windows per asset."""

    alarms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    per_days: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    windows_per_day: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Thresholds(_Strict):
    """The monitors' thresholds as calibrated for the budget, reported so a manager can see
    what the agent is holding itself to."""

    budget: Budget
    assets: Annotated[int, Field(ge=0)]
    signals: Annotated[int, Field(ge=0)]
    calibrated: bool = Field(description="False when the card has no calibration and fixed "
                             "rules apply")
    envelope: dict[str, FiniteFloat] = Field(default_factory=dict)
    step: dict[str, FiniteFloat] = Field(default_factory=dict)
    stuck_samples: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    alert_rate: FiniteFloat | None = None


Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]


class Span(_Strict):
    """The message seqs ``first`` to ``last`` of one agent, both included."""

    first: Seq
    last: Seq

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.first > self.last:
            raise ValueError("first is after last")
        return self


class Undeliverable(Span):
    """Messages an agent will never deliver, every seq of the span: ``dropped`` by its
    outbox's size bound (plain telemetry only, oldest first), or ``gone`` (asked for again
    but no longer held, e.g. released on a broker's acknowledgement by an older agent).
    ``windows`` is how many predictions they held and ``first_at``/``last_at`` when they
    were made (the envelopes' ``ts``), so a receiver can tell which hours they leave
    incomplete."""

    reason: Literal["dropped", "gone"]
    windows: Annotated[int, Field(ge=0)] = 0
    first_at: datetime | None = None
    last_at: datetime | None = None

    @field_validator("first_at", "last_at")
    @classmethod
    def _utc_times(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)


class Interval(_Strict):
    """An estimated proportion and the range its realised value is expected in (95 %)."""

    value: Probability
    low: Probability
    high: Probability

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if self.low > self.high:
            raise ValueError("low is above high")
        return self


class Estimate(_Optional):
    """The agent's estimate, without labels, of how good its alerts are over its last
    ``windows`` scored windows (all its assets): confidence-based performance estimation
    from the model's calibrated probabilities (``agent.estimate`` says how, and what it
    assumes). ``alerts`` of those windows were at or above the threshold;
    ``expected_positives`` is how many are expected to be truly positive. ``precision``,
    ``recall`` and ``f1`` are absent when undefined (no alerts, no expected positive).
    ``calibrated`` false: the model card does not vouch for its probabilities, and the
    agent gives no numbers rather than wrong ones. ``horizon_s``: an alert is right when
    its asset fails within this many seconds of plant time after the window's end (the
    card's horizon in seconds), which lets the aggregator check the estimate against the
    failures reported later."""

    _OMIT_WHEN_NONE = frozenset({"expected_positives", "precision", "recall", "f1",
                                 "horizon_s"})

    windows: Annotated[int, Field(ge=0)]
    calibrated: bool
    alerts: Annotated[int, Field(ge=0)]
    expected_positives: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    precision: Interval | None = None
    recall: Interval | None = None
    f1: Interval | None = None
    horizon_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Estimate:
        if self.alerts > self.windows:
            raise ValueError("more alerts than windows")
        numbers = (self.expected_positives, self.precision, self.recall, self.f1)
        if not self.calibrated and any(v is not None for v in numbers):
            raise ValueError("an estimate from uncalibrated probabilities carries no numbers")
        return self


class Deployment(_Optional):
    """What models an agent runs after its latest model assignment, reported in the next
    health item as soon as it tried (and in every one after it).

    ``state``: ``applied`` (the assignment ``assignment`` runs: ``live`` and, if any,
    ``shadow``), or ``refused`` (nothing changed, ``live`` and ``shadow`` still score, and
    ``reason`` says why: a wrong sha256 or signature, a failed self-test, a download that
    failed, a card this agent cannot serve). ``at``: when it tried (wall-clock time)."""

    _OMIT_WHEN_NONE = frozenset({"assignment", "shadow"})

    assignment: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    state: Literal["applied", "refused"]
    at: datetime
    live: ModelRef
    shadow: ModelRef | None = None
    reason: Annotated[str, Field(max_length=1000)] = ""

    _utc_at = field_validator("at")(_utc)


class Health(_Optional):
    """Periodic counters of one agent, cumulative since it started.

    ``undeliverable`` lists the messages the agent knows it will never deliver and has not
    yet seen the aggregator account for; a health report that carries it is never dropped.
    ``estimate`` is the agent's label-free estimate of its alerts' precision and recall;
    ``deployment`` what models it runs since its latest model assignment.
    """

    _OMIT_WHEN_NONE = frozenset({"monitoring", "undeliverable", "estimate", "deployment"})

    kind: Literal["health"] = "health"
    at: datetime
    windows_scored: Annotated[int, Field(ge=0)]
    outbox_depth: Annotated[int, Field(ge=0)]
    outbox_dropped: Annotated[int, Field(ge=0)] = 0
    rejected_readings: Annotated[int, Field(ge=0)] = 0
    inference_ms_median: FiniteFloat | None = None
    monitoring: Thresholds | None = None
    undeliverable: Annotated[list[Undeliverable], Field(max_length=MAX_SPANS)] | None = None
    estimate: Estimate | None = None
    deployment: Deployment | None = None

    _utc_at = field_validator("at")(_utc)


Item = Annotated[Prediction | DriftEvent | Health, Field(discriminator="kind")]


class Envelope(_Strict):
    """One MQTT data message: who sent it, with which model, and a batch of items."""

    # `schema` shadows a BaseModel attribute, hence the alias.
    schema_: Literal[1] = Field(alias="schema")
    msg_id: UUID
    agent: Name
    ts: datetime
    seq: Annotated[int, Field(ge=0, le=MAX_SEQ)]
    model: ModelRef
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS)]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _utc_ts = field_validator("ts")(_utc)

    @model_validator(mode="after")
    def _alerts_follow_threshold(self) -> Envelope:
        t = self.model.threshold
        for n, item in enumerate(self.items):
            if item.kind == "prediction" and item.alert != (item.score >= t):
                raise ValueError(f"items.{n}.alert must equal score >= model.threshold ({t})")
        return self

    def check_topic(self, parts: TopicParts) -> None:
        """Raise WireError unless this envelope may travel on that topic: same agent, and
        only the item kind the topic's kind carries."""
        if self.agent != parts.agent:
            raise WireError("invalid", f"agent {self.agent!r} in the payload, "
                                       f"{parts.agent!r} in the topic")
        want = ITEM_KINDS.get(parts.kind)
        for n, item in enumerate(self.items):
            if item.kind != want:
                raise WireError("invalid", f"items.{n}: a {item.kind} item on a "
                                           f"{parts.kind} topic")

    @classmethod
    def build(cls, agent: str, seq: int, model: ModelRef, items: list[Item]) -> Envelope:
        """New envelope with a fresh msg_id, stamped now."""
        return cls(
            schema_=SCHEMA, msg_id=uuid.uuid4(), agent=agent, ts=datetime.now(UTC), seq=seq,
            model=model, items=items,
        )


class Status(_Strict):
    """Retained presence of an agent; the broker publishes ``offline`` as its last will."""

    @classmethod
    def build(cls, agent: str, state: str, model: ModelRef | None = None) -> Status:
        """Status stamped now."""
        return cls(schema_=SCHEMA, agent=agent, state=state, ts=datetime.now(UTC), model=model)

    schema_: Literal[1] = Field(alias="schema")
    agent: Name
    state: Literal["online", "offline"]
    ts: datetime
    model: ModelRef | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _utc_ts = field_validator("ts")(_utc)


class Delivery(_Strict):
    """What the aggregator has durably stored of one agent's messages: published retained,
    QoS 1, on ``command_topic(site, line, agent, "delivery")`` after the batches that hold
    them are committed, and again whenever it changes.

    The agent releases every outbox row up to ``stored_through`` (-1: nothing yet), sends
    again the seqs of ``missing`` (gaps the aggregator has seen for a while above
    ``stored_through``) and, once per new ``resend`` id, every row it still holds above
    ``stored_through`` (the aggregator may have lost messages: a broker that came back
    without its session). A broker's PUBACK only means the broker has a message; this is
    the acknowledgement that it reached the aggregator's stores.
    """

    schema_: Literal[1] = Field(alias="schema")
    agent: Name
    ts: datetime
    stored_through: Annotated[int, Field(ge=-1, le=MAX_SEQ)]
    missing: Annotated[list[Span], Field(max_length=MAX_SPANS)] = Field(default_factory=list)
    resend: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _utc_ts = field_validator("ts")(_utc)


class Artifact(_Strict):
    """One signed model version as the registry serves it (``contract.artifact`` says what
    the file holds and what the signature covers). ``url``: where to fetch it, absolute
    (http or https); ``sha256`` and ``size`` of the file; ``signature``: base64 ed25519
    over ``signed_message(name, version, sha256)``."""

    name: Name
    version: Name
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=1)]
    url: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://")]
    signature: Annotated[str, Field(min_length=1, max_length=256)]


class Assignment(_Optional):
    """The models one agent is to run: published retained, QoS 1, on
    ``command_topic(site, line, agent, "model")`` whenever the registry's assignments for
    it change, so an agent that was offline gets the latest on reconnecting.

    ``live`` scores and alerts; ``stage`` says whether this agent runs it as the fleet's
    ``live`` version or as a ``canary`` (live on a share of agents while it is judged).
    ``shadow``, if any, scores the same windows beside it: its items are published with
    ``ModelRef.role = "shadow"`` and open no ticket. ``id`` changes with every assignment;
    the agent reports the outcome under it (``Deployment.assignment``). An empty retained
    payload clears the topic: the agent keeps what it runs."""

    _OMIT_WHEN_NONE = frozenset({"shadow"})

    schema_: Literal[1] = Field(alias="schema")
    agent: Name
    ts: datetime
    id: Annotated[str, Field(min_length=1, max_length=64)]
    stage: Literal["live", "canary"]
    live: Artifact
    shadow: Artifact | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _utc_ts = field_validator("ts")(_utc)


# -- andon: what the aggregator tells a line's signal tower -------------------------------
# Under a root of its own, so no agent's write rule (linewatch/v1/+/+/<agent>/#) covers it
# and the aggregator's own subscription (linewatch/v1/+/+/+/+) never receives it.
ANDON_ROOT = "linewatch/andon/v1"
ANDON_TOPICS = ("state", "events")
MAX_ANDON_TICKETS = 100
TicketKind = Literal["maintenance", "sensor", "inspect", "retraining"]
AndonLevel = Literal["ok", "warning", "alarm"]


def andon_topic(site: str, line: str, which: str) -> str:
    """Where a line's andon state (retained) or its events are published.

    >>> andon_topic("plant1", "line3", "state")
    'linewatch/andon/v1/plant1/line3/state'
    """
    if which not in ANDON_TOPICS:
        raise WireError("bad_topic", f"unknown andon topic {which!r}; expected one of "
                                     f"{ANDON_TOPICS}")
    parts = [_check_segment(n, v) for n, v in (("site", site), ("line", line))]
    return "/".join([ANDON_ROOT, *parts, which])


class AndonTicket(_Strict):
    """One ticket that is not resolved, as a line's andon shows it."""

    id: Annotated[int, Field(ge=1)]
    kind: TicketKind
    status: Literal["open", "acknowledged"]
    asset: Name
    opened_at: datetime

    _utc_opened = field_validator("opened_at")(_utc)


class AndonState(_Strict):
    """What a line's signal tower shows now: published retained, QoS 1, on
    ``andon_topic(site, line, "state")`` after every change of the line's tickets, so a
    tower that connects gets the current state at once.

    ``level``: ``alarm`` while a maintenance ticket is open and nobody acknowledged it,
    ``warning`` while any other ticket is not resolved, ``ok`` otherwise. ``open`` counts
    the line's tickets that are not resolved; ``tickets`` lists them (the newest
    ``MAX_ANDON_TICKETS``).
    """

    schema_: Literal[1] = Field(alias="schema")
    site: Name
    line: Name
    ts: datetime
    level: AndonLevel
    open: Annotated[int, Field(ge=0)]
    tickets: Annotated[list[AndonTicket], Field(max_length=MAX_ANDON_TICKETS)]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _utc_ts = field_validator("ts")(_utc)


class AndonEvent(_Strict):
    """One change of an incident on a line, published QoS 1 (not retained) on
    ``andon_topic(site, line, "events")``: a ticket opened, escalated, reclassified,
    acknowledged, resolved or reopened. ``incident`` is the same for every event of one
    ticket; ``event_at`` is when it happened (plant time), ``ts`` when it was published.
    Incidents already past when the aggregator received them publish no event (the state
    still shows their tickets)."""

    schema_: Literal[1] = Field(alias="schema")
    site: Name
    line: Name
    ts: datetime
    incident: Annotated[str, Field(min_length=1, max_length=64)]
    ticket: Annotated[int, Field(ge=1)]
    event: Literal["opened", "escalated", "reclassified", "acknowledged", "resolved",
                   "reopened"]
    kind: TicketKind
    asset: Name
    status: Literal["open", "acknowledged", "resolved"]
    level: AndonLevel
    event_at: datetime

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _utc_ts = field_validator("ts", "event_at")(_utc)


def decode_andon_state(raw: bytes) -> AndonState:
    """Parse and validate a line's andon state.

    >>> s = AndonState(schema_=SCHEMA, site="p1", line="l3", ts=datetime(2026, 1, 1,
    ...                tzinfo=UTC), level="ok", open=0, tickets=[])
    >>> decode_andon_state(encode(s)) == s
    True
    """
    return _decode(AndonState, raw)  # type: ignore[return-value]


def decode_andon_event(raw: bytes) -> AndonEvent:
    """Parse and validate an andon event."""
    return _decode(AndonEvent, raw)  # type: ignore[return-value]


def encode(message: Envelope | Status | Delivery | Assignment | AndonState | AndonEvent
           ) -> bytes:
    """Serialize to compact UTF-8 JSON; refuses to produce an oversized payload."""
    raw = message.model_dump_json(by_alias=True, exclude_none=False).encode()
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise WireError("too_large", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    return raw


def _load(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise WireError("too_large", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        # JSON has no NaN; Python's parser accepts the token, so refuse it here.
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("malformed", f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WireError("malformed", f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise WireError(
            "unknown_schema", f"schema {data.get('schema')!r}; this side speaks {SCHEMA}"
        )
    return data


def _refuse_constant(name: str) -> float:
    raise WireError("invalid", f"{name} is not a valid JSON number")


def _validate(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WireError("invalid", f"{where}: {first['msg']}") from exc


def decode(raw: bytes) -> Envelope:
    """Parse and validate one data payload; raise WireError naming the first bad field.

    >>> ref = ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)
    >>> env = Envelope.build("gw-1", 0, ref, [Health(at=datetime(2026, 1, 1, tzinfo=UTC),
    ...     windows_scored=3, outbox_depth=0)])
    >>> decode(encode(env)) == env
    True
    >>> decode(b'{"schema": 2}')
    Traceback (most recent call last):
    ...
    contract.errors.WireError: unknown_schema: schema 2; this side speaks 1
    """
    return _decode(Envelope, raw)  # type: ignore[return-value]


def _decode(model: type[BaseModel], raw: bytes) -> BaseModel:
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise WireError("too_large", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    if model is Envelope:
        envelope = _fast_envelope(raw)
        if envelope is not None:
            return envelope
    try:
        # Fast path: pydantic's own JSON parser, about twice as fast as json.loads + validate.
        # The finite-float fields refuse NaN and infinities whichever parser read them.
        return model.model_validate_json(raw)
    except ValidationError:
        pass
    # Slow path, only for bad input: find the precise reason (malformed JSON, unknown
    # schema, or the first invalid field).
    return _validate(model, _load(raw))


def _without_item_checks(schema: Any, inside_prediction: bool = False) -> Any:
    """A copy of Envelope's core schema without its Python validators that run per item:
    every ``function-after`` inside Prediction (the two UTC checks, the window order) and
    Envelope's alert-follows-threshold loop. Types and constraints (pattern, bounds,
    finite floats, extra fields, the discriminator) stay, checked in pydantic-core."""
    if isinstance(schema, list):
        return [_without_item_checks(v, inside_prediction) for v in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "function-after":
        function = schema["function"]["function"]
        inner = schema["schema"]
        starts = getattr(function, "__qualname__", "") == "Prediction._ordered"
        if inside_prediction or starts or function is Envelope._alerts_follow_threshold:
            out = _without_item_checks(inner, inside_prediction or starts)
            if "ref" in schema:  # the definitions refer to the node by it
                out = {**out, "ref": schema["ref"]}
            return out
    return {k: _without_item_checks(v, inside_prediction) for k, v in schema.items()}


class _EnvelopeWithoutItemChecks:
    """Validates to an ``Envelope`` through the schema above (TypeAdapter's hook)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> Any:
        return _without_item_checks(Envelope.__pydantic_core_schema__)


_FAST_ENVELOPE: TypeAdapter[Any] = TypeAdapter(_EnvelopeWithoutItemChecks)
# The tzinfo pydantic-core parses UTC timestamps into (any other is checked the long way).
_PARSED_UTC = TypeAdapter(datetime).validate_json(b'"2026-01-01T00:00:00Z"').tzinfo


def _fast_envelope(raw: bytes) -> Envelope | None:
    """Decode a valid envelope without a Python call per item; None when any doubt is left,
    and the full validation (the models' own validators) then decides, with its errors.

    The checks the schema above leaves out run here over the batch in one loop, without
    pydantic's per-call overhead: timestamps already in UTC (an aware one in another zone
    is converted by the full path, a naive one refused by it), windows in order, and
    ``alert == (score >= threshold)``. An envelope that passes them is exactly what the
    full validation returns (same classes, same values)."""
    try:
        envelope: Envelope = _FAST_ENVELOPE.validate_json(raw)
    except ValidationError:
        return None
    threshold, utc, zero = envelope.model.threshold, _PARSED_UTC, timedelta(0)
    for item in envelope.items:
        if type(item) is Prediction:
            start, end = item.window_start, item.window_end
            # pydantic-core gives every "Z" / "+00:00" one shared tzinfo: an identity test
            # spares the call to utcoffset() for all but other zones and naive times.
            if ((start.tzinfo is not utc and start.utcoffset() != zero)
                    or (end.tzinfo is not utc and end.utcoffset() != zero)
                    or start > end or item.alert is not (item.score >= threshold)):
                return None
    return envelope


def decode_status(raw: bytes) -> Status:
    """Parse and validate a retained status payload."""
    return _decode(Status, raw)  # type: ignore[return-value]


def decode_delivery(raw: bytes) -> Delivery:
    """Parse and validate a delivery command (what the aggregator has stored).

    >>> d = Delivery(schema_=SCHEMA, agent="gw-1", ts=datetime(2026, 1, 1, tzinfo=UTC),
    ...              stored_through=41, missing=[Span(first=43, last=44)])
    >>> decode_delivery(encode(d)) == d
    True
    """
    return _decode(Delivery, raw)  # type: ignore[return-value]



def decode_assignment(raw: bytes) -> Assignment:
    """Parse and validate a model assignment.

    >>> art = Artifact(name="m", version="2", sha256="0" * 64, size=10,
    ...                url="http://agg:8000/registry/m/2/artifact", signature="c2ln")
    >>> a = Assignment(schema_=SCHEMA, agent="gw-1", ts=datetime(2026, 1, 1, tzinfo=UTC),
    ...                id="a1", stage="live", live=art)
    >>> decode_assignment(encode(a)) == a
    True
    """
    return _decode(Assignment, raw)  # type: ignore[return-value]
