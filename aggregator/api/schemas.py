"""Request and response models of the REST API; routes never return storage rows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aggregator.api.params import Timestamp
from aggregator.auth import NAME_PATTERN
from aggregator.db import TOKEN_NAME_LENGTH
from aggregator.operations import ModelOperations
from aggregator.outcomes import OUTCOME_MEANINGS, Outcome
from contract.wire import MAX_NAME, Name

__all__ = [
    "AgentDeploymentOut",
    "AgentHealthOut",
    "AgentOut",
    "AssetEventsOut",
    "AssignIn",
    "AuditOut",
    "CompletenessOut",
    "ConditionOut",
    "ConfirmationsOut",
    "ConfirmedFailureIn",
    "CostOut",
    "CountsOut",
    "DatabaseHealthOut",
    "DeliveryHealthOut",
    "DeliveryOut",
    "DriftFiguresOut",
    "DriftOut",
    "ErrorOut",
    "EstimateCheckOut",
    "EvidenceOut",
    "FailureIn",
    "FailureOut",
    "FigureOut",
    "GapOut",
    "GroupFiguresOut",
    "GroupOut",
    "HealthFiguresOut",
    "HealthOut",
    "HourOut",
    "LeadTimeOut",
    "MissedFailureOut",
    "ModelIn",
    "MqttHealthOut",
    "NoteIn",
    "NoteOut",
    "NotificationAttemptOut",
    "OtherOutcomeIn",
    "ReopenIn",
    "ResolveIn",
    "ScoreOut",
    "ScorePointOut",
    "SeriesHealthOut",
    "TicketOut",
    "TokenCreatedOut",
    "TokenIn",
    "TokenOut",
    "VerdictOut",
]

# Free text from a person (notes): tabs and line breaks allowed, no other control character
# (PostgreSQL text cannot hold a NUL); NOTE_TEXT also needs one visible character.
_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_SOME_TEXT = (r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*[^\x00-\x20\x7f]"
              r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")
_OUTCOME_WORDS = "; ".join(f"{name}: {meaning}" for name, meaning in OUTCOME_MEANINGS)
Note = Annotated[str, Field(
    max_length=4000, pattern=_TEXT,
    description="free text: tabs and line breaks allowed, other control characters not")]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class ErrorOut(_Out):
    """The body of every error the API answers itself (400, 401, 403, 404, 409, 503); a
    request that fails validation gets FastAPI's 422 body instead (``detail`` is a list
    there)."""

    detail: str = Field(description="what went wrong, for a person to read")


class ScoreOut(_Out):
    window_end: datetime
    score: float
    alert: bool


class EvidenceOut(_Out):
    """Why the ticket exists.

    A maintenance ticket: ``k`` alerts in the last ``n`` windows and the ``scores`` behind
    them. A sensor or inspect ticket: the ``verdict``, the ``channels`` involved, ``since``
    when, the ``conditions`` the agents reported (reference against current) and, if the
    model alerted meanwhile, the ``untrusted_risk``. A retraining ticket: the time range,
    ``agents``, ``lines`` and ``assets`` affected, the ``signals`` that moved, how many
    assets the model is ``blind`` on, and ``retrain_on``. Every ticket says what to do in
    ``action``; a reclassified one keeps what it was in ``reclassified_from``.
    """

    model_config = ConfigDict(from_attributes=True, frozen=True, extra="allow")

    k: int | None = None
    n: int | None = None
    scores: list[ScoreOut] = Field(default_factory=list)
    action: str | None = None


class NoteOut(_Out):
    """A note a person added to a ticket."""

    at: datetime
    author: str = Field(description="the name of the API token that added it")
    text: str


class TicketOut(_Out):
    id: int
    kind: Literal["maintenance", "sensor", "inspect", "retraining"] = Field(
        description="maintenance: the machine; sensor: check a sensor; inspect: the model "
        "cannot judge this asset; retraining: the model itself (asset is model:name@version)")
    asset: str
    agent: str
    site: str
    line: str
    status: Literal["open", "acknowledged", "resolved"]
    opened_at: datetime = Field(
        description="when the trigger happened, in plant time (event time): the end of the "
        "window that completed k of n, or the detection of the condition")
    updated_at: datetime
    resolved_at: datetime | None
    outcome: Outcome | None = Field(description=f"set by the resolution: {_OUTCOME_WORDS}")
    note: str | None = Field(description="the resolution's note")
    failed_at: datetime | None = Field(
        description="when the machine failed, for a confirmed failure whose time is known")
    assignee: str | None = Field(description="the person the ticket is assigned to")
    notes: list[NoteOut] = Field(description="notes people added, oldest first")
    model_name: str
    model_version: str
    threshold: float
    escalations: int = Field(description="times later evidence was added to this ticket")
    evidence: EvidenceOut
    received_at: datetime | None = Field(
        None, description="when the aggregator received the trigger: later than opened_at "
        "by the length of a backlog flushed after an outage")


class ConfirmedFailureIn(BaseModel):
    """The machine failed, or was found failing, as the alert said; when it failed, if
    known (model health measures the warning time up to it)."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["confirmed_failure"]
    note: Note | None = None
    failed_at: Timestamp | None = Field(
        None, description="when the machine failed (plant time); default: not known, and "
        "model health takes the time of the resolution instead")


class OtherOutcomeIn(BaseModel):
    """Any other outcome (no failure time goes with it)."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["preventive_action", "no_fault_found", "sensor_fault", "other"]
    note: Note | None = None


ResolveIn = Annotated[
    ConfirmedFailureIn | OtherOutcomeIn,
    Field(discriminator="outcome", description="ground truth for model health: was there "
          f"a real fault? {_OUTCOME_WORDS} (superseded is the aggregator's own)"),
]
"""A resolution: an outcome, a note and, for a confirmed failure, its time."""


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee: Annotated[str, Field(
        min_length=1, max_length=MAX_NAME,
        pattern=r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$")] | None = Field(
        description="a person's name (1 to 128 characters, no control character), or null "
        "for nobody")


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        min_length=1, max_length=4000, pattern=_SOME_TEXT,
        description="what was seen or done: tabs and line breaks allowed, other control "
        "characters not, at least one visible character")


class ReopenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Note | None = Field(None, description="why: kept in the ticket's history")


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    version: Name


class FailureIn(BaseModel):
    """A failure no ticket warned of."""

    model_config = ConfigDict(extra="forbid")

    site: Name
    line: Name
    asset: Name
    at: Timestamp = Field(description="when the machine failed (plant time)")
    note: Note | None = None
    model: ModelIn | None = Field(
        None, description="the model version that should have caught it; default: the one "
        "the agents of the line run, if they all run the same")


class FailureOut(_Out):
    """A failure reported without a ticket that warned of it (a missed detection)."""

    id: int
    site: str
    line: str
    asset: str
    at: datetime = Field(description="when the machine failed")
    model_name: str | None = Field(description="the model version it counts against; "
                                   "None: none known, it counts in no per-model figure")
    model_version: str | None
    note: str | None
    reported_at: datetime
    reported_by: str = Field(description="the name of the API token that reported it")


class ScorePointOut(_Out):
    """One scored window of an asset."""

    window_start: datetime
    window_end: datetime
    score: float
    alert: bool = Field(description="the score reached the model's threshold")
    agent: str
    site: str
    line: str
    model_name: str = Field(validation_alias="model")
    model_version: str


class ConditionOut(_Out):
    """A drift or data-quality condition an agent reported on an asset, start to end."""

    site: str
    line: str
    agent: str
    asset: str = Field(description="'' for a condition of the agent's whole fleet")
    model_name: str
    model_version: str
    monitor: str = Field(description="the signal watched: a feature, a channel or 'score'")
    detector: str = Field(description="e.g. envelope, step, stuck, nan, alert_rate")
    signal: str
    channels: list[str]
    since: datetime = Field(description="when it began (the detector's estimate)")
    detected_at: datetime
    ended_at: datetime | None = Field(description="None while it lasts")
    detail: str


class AgentHealthOut(_Out):
    """An agent's own report of how it is doing (counters since it started)."""

    at: datetime
    windows_scored: int
    outbox_depth: int = Field(description="messages waiting on the gateway to be published")
    outbox_dropped: int = Field(description="telemetry dropped because the outbox was full")
    rejected_readings: int = Field(description="sensor readings refused (NaN, infinite)")
    inference_ms_median: float | None


class GapOut(_Out):
    """Messages ``first`` .. ``last`` (seqs, both included) not received, open ``since``."""

    first: int
    last: int
    since: datetime = Field(description="when the aggregator saw the gap open")


class DeliveryOut(_Out):
    """Which of the agent's messages the aggregator holds, by seq. The counters are
    cumulative since the aggregator first heard from the agent (kept in SQL)."""

    stored_through: int = Field(
        description="every message up to this seq is stored or reported undeliverable by "
        "the agent (-1: none yet); what the agent is told it may release")
    highest_seq: int = Field(description="the highest seq received (-1: none)")
    outstanding_messages: int = Field(
        description="messages in open gaps: neither received nor reported undeliverable. "
        "What they held is unknown, so they do not count as loss (yet)")
    open_gaps: list[GapOut] = Field(description="the lowest 100 open gaps")
    gaps_opened: int = Field(description="gaps seen open (most close by themselves)")
    reorders: int = Field(description="messages that arrived after a later one, into a gap")
    duplicates: int = Field(
        description="messages at a seq already stored, under a new msg_id (sent again after "
        "the dedupe window)")
    resets: int = Field(
        description="times the agent numbered from scratch (its outbox was replaced); "
        "tracking restarted from that seq")
    resend_requests: int = Field(
        description="times the agent was asked to send again everything not confirmed "
        "(after the broker lost our session)")
    messages_received: int
    windows_received: int = Field(description="predictions received")
    dropped_messages: int = Field(
        description="messages the agent dropped under its outbox bound (as it reported)")
    dropped_windows: int = Field(description="predictions those messages held")
    gone_messages: int = Field(
        description="messages asked for again that the agent no longer held")
    gone_windows: int = Field(description="predictions those messages held")
    completeness_24h: float | None = Field(
        description="percent of the last 24 h's windows (by when the agent sent them) that "
        "were received, of those received or reported undeliverable; None without any")


class AgentDeploymentOut(_Out):
    """The outcome of the agent's latest model assignment, as it reported it."""

    assignment: str | None = Field(description="the assignment's id, if it had one")
    state: Literal["applied", "refused"] = Field(
        description="applied: the assignment's models score now; refused: nothing changed")
    reason: str | None = Field(description="why it was refused (a wrong signature or "
                               "sha256, a failed self-test, a failed download, ...)")
    at: datetime = Field(description="when the agent tried (its clock)")


class AgentOut(_Out):
    agent: str = Field(validation_alias="agent_id")
    site: str
    line: str
    state: Literal["online", "offline", "unknown"]
    state_at: datetime | None
    last_seen: datetime | None
    last_seq: int | None
    model_name: str | None = Field(description="the live model: its alerts count")
    model_version: str | None
    shadow_model_name: str | None = Field(
        None, description="the model scored beside the live one to be judged (stored, opens "
        "no ticket); None without one")
    shadow_model_version: str | None = None
    deployment: AgentDeploymentOut | None = Field(
        None, description="its latest model assignment's outcome; None before the first")
    predictions_count: int
    health: AgentHealthOut | None = Field(
        None, description="the agent's latest health report, if it sent one"
    )
    delivery: DeliveryOut | None = Field(
        None, description="which of its messages are stored; None before its first data "
        "message")


class HourOut(_Out):
    """One hour of an agent's windows, by when the agent sent them (the envelopes' ts)."""

    hour: datetime = Field(description="the hour's start (UTC)")
    windows_received: int
    windows_undeliverable: int = Field(
        description="windows in messages the agent reported it will never deliver")
    completeness: float | None = Field(
        description="percent received of received + undeliverable; None when both are 0")


class CompletenessOut(_Out):
    """An agent's windows per hour between ``since`` and ``until``, and their totals."""

    agent: str
    since: datetime
    until: datetime
    windows_received: int = Field(description="in the hours between since and until")
    windows_undeliverable: int = Field(description="in the hours between since and until")
    completeness: float | None = Field(
        description="percent received of received + undeliverable; None when both are 0")
    outstanding_messages: int = Field(
        description="messages missing right now (open gaps, any hour): their windows are "
        "unknown and not counted above")
    hours: list[HourOut] = Field(description="hours holding any window, newest first")


class DriftOut(_Out):
    """A drift or data-quality event an agent reported."""

    at: datetime
    agent: str
    site: str
    line: str
    asset: str | None = Field(description="None for an event about the whole score stream")
    monitor: str = Field(description="what was watched: 'score' or a feature/channel name")
    detector: str = Field(description="e.g. ADWIN, PageHinkley, range, nan")
    value: float | None
    detail: str
    model_name: str = Field(validation_alias="model")
    model_version: str


class MqttHealthOut(_Out):
    connected: bool
    subscribed: bool
    broker: str
    embedded: bool
    client_id: str
    received: int
    acked: int
    queued: int
    retries: int = Field(description="times a batch was retried because it could not be stored")
    overflowed: int
    connect_failures: int = Field(
        description="failed connection attempts (refused, unreachable, DNS, TLS, CONNACK "
        "refused) since start"
    )
    disconnects: int = Field(description="established connections lost since start")
    takeovers: int = Field(
        description="connections closed because another client used our client id"
    )
    duplicate_client_id: bool = Field(
        description="another client is using our client id right now: give every replica "
        "its own LINEWATCH_MQTT_CLIENT_ID"
    )
    last_error: str | None = Field(description="the latest broker failure, if any")


class SeriesHealthOut(_Out):
    backend: str
    ok: bool


class DatabaseHealthOut(_Out):
    backend: str = Field(description="SQLAlchemy dialect, e.g. sqlite or postgresql")
    ok: bool


class CountsOut(_Out):
    """What this process handled since it started (they restart at 0, and each replica
    counts its own); the fleet's cumulative figures are in ``delivery``."""

    accepted: int = Field(description="messages accepted (data and status)")
    predictions_stored: int = Field(description="predictions written to the series store")
    drift_events_stored: int = Field(description="drift events written to the series store")
    health_reports_stored: int = Field(description="health reports written to the series store")
    duplicates: int = Field(description="messages dropped as already seen (msg_id)")
    statuses: int
    rejected: dict[str, int] = Field(description="rejected messages by reason")


class DeliveryHealthOut(_Out):
    """The agents' messages by seq: fleet totals read from SQL, cumulative since each
    agent was first heard (they survive restarts and are shared by replicas)."""

    agents: int
    agents_with_gaps: int
    outstanding_messages: int = Field(description="messages in open gaps right now")
    messages_received: int
    windows_received: int
    gaps_opened: int
    reorders: int
    duplicates: int
    resets: int
    resend_requests: int = Field(description="agents asked to send everything again")
    dropped_messages: int
    gone_messages: int


class ConfirmationsOut(_Out):
    """Deliveries (which messages are stored) published to agents by this process since
    it started."""

    published: int
    failures: int = Field(description="rounds that could not read SQL or publish")
    resend_rounds: int = Field(
        description="connections on which the broker kept no session for us, so every "
        "agent was asked to send again")


class HealthOut(_Out):
    """The aggregator's state: ``problems`` lists what keeps it from doing its job."""

    status: Literal["ok", "degraded"] = Field(description="ok when problems is empty")
    problems: list[str] = Field(
        description="what keeps messages from being received and stored, one sentence each"
    )
    mqtt: MqttHealthOut
    series: SeriesHealthOut
    database: DatabaseHealthOut
    counts: CountsOut
    delivery: DeliveryHealthOut | None = Field(
        description="None while the SQL database does not answer")
    confirmations: ConfirmationsOut


class AuditOut(_Out):
    """One change, who made it and when (the audit log)."""

    at: datetime
    actor: str = Field(description="the name of the API token that made the change, or "
                       "cli:<user> for a command")
    action: str = Field(description="tickets: acknowledge, assign, note, resolve, reopen; "
                        "failures: report; tokens: create, revoke")
    subject_type: str = Field(description="what changed: ticket, failure, token")
    subject_id: str
    detail: dict[str, Any] = Field(description="what the change was, e.g. the outcome and "
                                   "note of a resolution, the status before it")


Scope = Literal["read", "write", "admin"]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=TOKEN_NAME_LENGTH, pattern=NAME_PATTERN,
        description="who or what uses it, recorded as the actor of every change it makes; "
        "unique among active tokens: a letter first, then letters, digits and . _ @ + -",
    )
    scope: Scope = Field(
        description="read: every GET; write: also change tickets and report failures; admin: "
        "also manage tokens"
    )


class TokenOut(_Out):
    """An API token without its secret (which is shown once, when it is created)."""

    id: int
    name: str
    scope: Scope
    prefix: str = Field(description="the token's first characters: not secret, they tell "
                        "tokens apart")
    created_at: datetime
    created_by: str
    last_used_at: datetime | None = Field(description="to the minute")
    revoked_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="the token itself: shown this once, never again; send it "
                       "as 'Authorization: Bearer <token>'")


class AssetEventsOut(_Out):
    """What happened to one asset: its tickets, its conditions and the agents' events."""

    asset: str
    site: str | None = Field(description="the site asked for; None: every site's asset of "
                             "that name")
    tickets: list[TicketOut] = Field(description="every ticket of the asset, newest first")
    conditions: list[ConditionOut] = Field(
        description="drift and data-quality conditions overlapping the period, newest first")
    drift: list[DriftOut] = Field(
        description="the drift and data-quality events in the period, newest first (at "
        "most `limit`)")


# -- model health: aggregator.figures' results, field for field (HealthFigures.to_dict) --
class FigureOut(_Out):
    """A proportion-like figure with its 95 % interval; value, low and high are None when
    it rests on no outcome (n = 0), ``enough`` is n >= min_outcomes."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    enough: bool


class LeadTimeOut(_Out):
    """First alert to failure, for real faults, in seconds; ``from_resolution`` of the n
    had no failure time, so their resolution time stood in."""

    n: int
    median_s: float | None
    q1_s: float | None
    q3_s: float | None
    from_resolution: int


class CostOut(_Out):
    """Technician visits (every counted alert is one, every false alarm a wasted one);
    money only with a configured visit cost."""

    visits: int
    wasted_visits: int
    visit_cost: float | None
    currency: str
    total: float | None
    wasted: float | None


class DriftFiguresOut(_Out):
    """At the end of the window: open retraining tickets (ids), active drift conditions and
    the assets they are on; ``started``: conditions that began inside the window."""

    retraining_tickets: list[int]
    conditions: int
    assets: int
    started: int


class EstimateCheckOut(_Out):
    """A gateway estimate (per scored window, pooled over the group's agents) next to the
    realised figure; ``agrees`` None while too few outcomes. ``basis`` ``windows``: the
    realised figure judges windows against the failures reported (the estimate's own
    unit); ``tickets``: no window could be judged yet and the tickets' outcomes stand in,
    which count machines, not windows."""

    metric: Literal["precision", "recall", "f1"]
    estimated: float
    low: float | None
    high: float | None
    realised: FigureOut
    agrees: bool | None
    basis: Literal["windows", "tickets"]


class VerdictOut(_Out):
    action: Literal["keep", "watch", "retrain", "not_enough_data"]
    reason: str


class GroupOut(_Out):
    """What a set of figures is about: ``key`` is stable (``all``, ``model@version``,
    ``site``, ``site/line``, ``YYYY-MM``), ``label`` is for people."""

    dimension: Literal["all", "model", "site", "line", "month"]
    site: str | None
    line: str | None
    model_name: str | None
    model_version: str | None
    month: str | None
    key: str
    label: str


class MissedFailureOut(_Out):
    asset: str
    site: str
    line: str
    at: datetime
    model_name: str | None
    model_version: str | None
    note: str


class GroupFiguresOut(_Out):
    """Every figure of one group over [start, end): alerts are maintenance tickets
    resolved there with a counted outcome (real + false_alarms); ``open`` is maintenance
    tickets open at ``end``; ``verdict`` is None for the months."""

    group: GroupOut
    start: datetime
    end: datetime
    alerts: int
    real: int
    false_alarms: int
    missed: int
    not_counted: int
    open: int
    precision: FigureOut
    recall: FigureOut
    f1: FigureOut
    lead_time: LeadTimeOut
    assets: int | None = Field(description="assets the model scored in the period (the "
                               "series store); None when not known")
    months: float
    false_alarms_per_asset_month: float | None
    cost: CostOut
    missed_failures: list[MissedFailureOut]
    drift: DriftFiguresOut
    estimates: list[EstimateCheckOut]
    verdict: VerdictOut | None


class HealthFiguresOut(_Out):
    """Model health over [since, until): ``overall``, then per model version, site, line
    and calendar month (UTC). ``aggregator.figures`` says how every figure is made."""

    since: datetime
    until: datetime
    target_f1: float
    target_source: str = Field(description="where the target comes from, in words")
    min_outcomes: int = Field(description="a figure resting on fewer outcomes is flagged "
                              "enough=false")
    overall: GroupFiguresOut
    by_model: list[GroupFiguresOut]
    by_site: list[GroupFiguresOut]
    by_line: list[GroupFiguresOut]
    by_month: list[GroupFiguresOut]
    unattributed_missed: int = Field(description="missed failures linked to no model "
                                     "version: in no per-model group")
    operations: list[ModelOperations] = Field(
        default_factory=list, description="how each model version ran: agents reporting "
        "and their completeness, inference time, scores against the card's reference, drift "
        "and data-quality findings (``aggregator.operations`` says how each is made)")


class NotificationAttemptOut(_Out):
    """One entry of the notification delivery log: an attempt to send a notification to
    a target, or a notification recorded and not sent."""

    id: int
    notification_id: int
    target: str = Field(description="the target's name (`andon`: the MQTT andon); never "
                        "its URL")
    ticket_id: int
    event: str = Field(description="opened, escalated, reclassified, acknowledged, "
                       "resolved, reopened")
    attempt: int = Field(description="1 for the first attempt; 0 for a notification not "
                         "sent")
    status: str = Field(description="sent; error (another attempt follows); failed (given "
                        "up); suppressed: past incident")
    error: str | None = Field(description="why it failed, in our words (an HTTP status, a "
                              "timeout), or why it was not sent")
    started_at: datetime
    finished_at: datetime
