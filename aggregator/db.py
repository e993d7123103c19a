"""SQL tables (tickets and their notes, reported failures, agents, delivery, quarantine,
dedupe, rule state, API tokens, audit log) and the engine that holds them.

SQLAlchemy 2.0 ORM; the same models run on SQLite (default, one aggregator) and PostgreSQL
(replicas sharing the work). The schema is kept by Alembic migrations
(``aggregator.migrations``): ``open_engine`` upgrades the database to the newest revision
at every start, stamping one that an earlier release made with ``create_all`` first. A
change to these models therefore needs a new revision; a test compares the migrated
schema with them and fails until it exists.

The one invariant the database itself enforces: at most one non-resolved ticket per
(site, asset, kind), by a partial unique index (asset names are only unique within a
site). Application code checks first, but two replicas (or two threads) can both pass the
check; the index makes the second insert fail and the caller escalates instead.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.types import TypeDecorator

from aggregator import migrations, outcomes

__all__ = [
    "OUTCOMES",
    "QUARANTINE_MAX_BYTES",
    "TICKET_KINDS",
    "TICKET_STATUSES",
    "AgentDelivery",
    "TOKEN_NAME_LENGTH",
    "TOKEN_SCOPES",
    "AgentRecord",
    "ApiToken",
    "AssetCondition",
    "AuditEntry",
    "Base",
    "DeliveryHour",
    "NOTIFICATION_STATUSES",
    "Notification",
    "NotificationAttempt",
    "QuarantinedMessage",
    "ReportedFailure",
    "RuleState",
    "SeenMessage",
    "SessionFactory",
    "Ticket",
    "TicketNote",
    "UTCDateTime",
    "WebSession",
    "open_engine",
    "open_sessions",
]

logger = logging.getLogger(__name__)

# maintenance: the machine; sensor: one or a few channels; inspect: the model cannot judge
# this asset; retraining: the model itself (one per model version and site or line).
TICKET_KINDS = ("maintenance", "sensor", "inspect", "retraining")
TICKET_STATUSES = ("open", "acknowledged", "resolved")
# What a person closing a ticket says happened (aggregator.outcomes, where every outcome's
# meaning is); superseded is the aggregator's own, when later evidence showed the ticket was
# of another kind. A new outcome needs a migration that widens ck_tickets_outcome.
OUTCOMES: tuple[str, ...] = outcomes.OUTCOMES
AGENT_STATES = ("online", "offline", "unknown")
# Enough of a rejected payload to see what went wrong, without letting a flood of 256 KiB
# garbage fill the database; the original length is kept next to it.
QUARANTINE_MAX_BYTES = 64 * 1024
NAME_LENGTH = 128  # contract.wire.Name max_length; ingest rejects longer topic segments
# API token scopes, weakest first: each one allows what the ones before it allow.
TOKEN_SCOPES = ("read", "write", "admin")
TOKEN_NAME_LENGTH = 64

SessionFactory = sessionmaker[Session]


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite's DATETIME would drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store timezone-aware UTC values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    """A ticket and its lifecycle (open -> acknowledged -> resolved, and back to open when a
    person reopens it), with whom it is assigned to and the notes people added.

    ``outcome``, ``note`` and ``failed_at`` are set by the resolution: ``failed_at`` is when
    the machine failed, for a confirmed failure whose time is known (model health measures
    the warning time up to it).

    ``opened_at`` is event time: when the trigger happened (the window that completed k of
    n, the detection of the condition), in plant time as the agent stamped it;
    ``received_at`` is when the aggregator received that trigger. After an outage the
    backlog's tickets open at their own times, not all at the moment it arrived.
    ``updated_at`` and ``resolved_at`` are the aggregator's clock.
    """

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    asset: Mapped[str] = mapped_column(String(NAME_LENGTH))
    agent: Mapped[str] = mapped_column(String(NAME_LENGTH))
    site: Mapped[str] = mapped_column(String(NAME_LENGTH))
    line: Mapped[str] = mapped_column(String(NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default="open")
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    outcome: Mapped[str | None] = mapped_column(String(32), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    assignee: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    model_version: Mapped[str] = mapped_column(String(NAME_LENGTH))
    threshold: Mapped[float] = mapped_column(Float)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    # NULL only for a row written by hand; the aggregator always sets it (revision 0008).
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # {"k": 3, "n": 5, "scores": [{"window_end": iso, "score": float, "alert": bool}, ...]}
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Loaded only when asked for ("select"): the ingest path never reads them.
    notes: Mapped[list[TicketNote]] = relationship(
        back_populates="ticket", order_by="(TicketNote.at, TicketNote.id)")

    __table_args__ = (
        CheckConstraint(_in("kind", TICKET_KINDS), name="ck_tickets_kind"),
        CheckConstraint(_in("status", TICKET_STATUSES), name="ck_tickets_status"),
        CheckConstraint(
            f"outcome IS NULL OR {_in('outcome', OUTCOMES)}", name="ck_tickets_outcome"
        ),
        # THE invariant: one non-resolved ticket per (site, asset, kind), enforced by the
        # database. Asset names are only unique within a site: two plants may both have an
        # engine-001, and each gets its own ticket.
        Index(
            "uq_tickets_open_site_asset_kind",
            "site",
            "asset",
            "kind",
            unique=True,
            sqlite_where=text("status != 'resolved'"),
            postgresql_where=text("status != 'resolved'"),
        ),
        Index("ix_tickets_status", "status"),
        # The lists' time filters and the model health period.
        Index("ix_tickets_opened_at", "opened_at"),
        Index("ix_tickets_resolved_at", "resolved_at"),
    )


class TicketNote(Base):
    """A note a person added to a ticket: what was seen, what was done. Never changed or
    removed; the audit log has the same entry."""

    __tablename__ = "ticket_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    author: Mapped[str] = mapped_column(String(NAME_LENGTH))
    text: Mapped[str] = mapped_column(Text)
    ticket: Mapped[Ticket] = relationship(back_populates="notes")

    __table_args__ = (Index("ix_ticket_notes_ticket_id", "ticket_id"),)


class ReportedFailure(Base):
    """A failure reported without a ticket that warned of it: a missed detection.

    ``at`` is when the machine failed (plant time, as the person reporting it gives it);
    ``model_name``/``model_version`` the model that should have caught it, when known
    (given, or the one model the agents of its line ran: ``aggregator.failures``).
    """

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(NAME_LENGTH))
    line: Mapped[str] = mapped_column(String(NAME_LENGTH))
    asset: Mapped[str] = mapped_column(String(NAME_LENGTH))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    model_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    model_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reported_by: Mapped[str] = mapped_column(String(NAME_LENGTH))

    __table_args__ = (
        Index("ix_failures_at", "at"),
        Index("ix_failures_site_asset", "site", "asset"),
    )


class QuarantinedMessage(Base):
    """A rejected MQTT message, kept for inspection (payload truncated, length kept)."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    topic: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(32), index=True)
    error: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_len: Mapped[int] = mapped_column(Integer)


class SeenMessage(Base):
    """msg_ids already handled: a redelivered message is dropped, not stored twice."""

    __tablename__ = "seen_messages"

    msg_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agent: Mapped[str] = mapped_column(String(NAME_LENGTH))
    seq: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AgentRecord(Base):
    """What the aggregator last heard from each agent."""

    __tablename__ = "agents"

    agent_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    site: Mapped[str] = mapped_column(String(NAME_LENGTH))
    line: Mapped[str] = mapped_column(String(NAME_LENGTH))
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    state_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    model_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    model_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    predictions_count: Mapped[int] = mapped_column(BigInteger, default=0)
    # The agent's false-alarm budget (drift alarms per day), from its health reports: what
    # the retraining rule measures the fleet's drift conditions against.
    alarm_budget_per_day: Mapped[float | None] = mapped_column(Float, default=None)
    # What it runs since its latest model assignment (``Health.deployment``): model_name and
    # model_version above are the live model (from live envelopes only), these the model
    # run beside it as shadow, and whether the assignment was applied or refused and why.
    shadow_model_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    shadow_model_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH),
                                                             default=None)
    deployment_assignment: Mapped[str | None] = mapped_column(String(64), default=None)
    deployment_state: Mapped[str | None] = mapped_column(String(16), default=None)
    deployment_reason: Mapped[str | None] = mapped_column(Text, default=None)
    deployment_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (CheckConstraint(_in("state", AGENT_STATES), name="ck_agents_state"),)


class AssetCondition(Base):
    """A drift or data-quality condition an agent reported on one asset (or, for the alert
    rate, on its whole fleet: ``asset`` is then ``""``), from its start to its end.

    Times are plant time, as the agent reported them: ``since`` the estimated onset,
    ``detected_at`` when the detector fired, ``ended_at`` when it ended (None while
    active). At most one active row per (site, agent, asset, monitor, detector).
    """

    __tablename__ = "asset_conditions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(NAME_LENGTH))
    line: Mapped[str] = mapped_column(String(NAME_LENGTH))
    agent: Mapped[str] = mapped_column(String(NAME_LENGTH))
    asset: Mapped[str] = mapped_column(String(NAME_LENGTH))
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    model_version: Mapped[str] = mapped_column(String(NAME_LENGTH))
    monitor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    detector: Mapped[str] = mapped_column(String(32))
    signal: Mapped[str] = mapped_column(String(16))
    channels: Mapped[list[str]] = mapped_column(JSON)
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # {"low": .., "high": .., "mean": ..} of what training saw, and the level now
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    current: Mapped[float | None] = mapped_column(Float, default=None)
    statistic: Mapped[float | None] = mapped_column(Float, default=None)
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (
        Index("ix_conditions_site_asset", "site", "asset"),
        Index(
            "uq_conditions_active",
            "site", "agent", "asset", "monitor", "detector",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )


class RuleState(Base):
    """The last n windows a rule saw for one (site, asset), so its state survives restarts.

    Kept in SQL rather than rebuilt from the series store: it commits in the same
    transaction as the tickets and seen msg_ids it caused, so a crash can never leave a
    window counted without its ticket (or the reverse), and replicas sharing PostgreSQL
    share it (the row is locked while a batch updates it).
    """

    __tablename__ = "rule_state"

    rule: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Asset names are only unique within a site, so the site is part of the key.
    site: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    asset: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    # [{"window_end": iso, "score": float, "alert": bool}, ...], oldest first, at most n
    windows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AgentDelivery(Base):
    """Which of an agent's messages are stored, by seq (``aggregator.delivery.Ledger``),
    and what happened to its numbering since the aggregator first heard from it.

    ``stored_through``, ``top_seq`` and ``highest_seq`` are the ledger's seqs; ``ranges``
    holds its received ranges above ``stored_through`` and its gaps (with the time each
    opened). ``outstanding`` is the seqs in those gaps, kept beside them so a fleet total
    needs no JSON. The counters are cumulative; ``resend_id`` is the latest "send
    everything again" request, repeated in every delivery published until a new one. The
    row is locked while a batch updates it: replicas share an agent's messages.
    """

    __tablename__ = "agent_delivery"

    agent_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    stored_through: Mapped[int] = mapped_column(BigInteger, default=-1)
    top_seq: Mapped[int] = mapped_column(BigInteger, default=-1)
    highest_seq: Mapped[int] = mapped_column(BigInteger, default=-1)
    latest_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # {"received": [[first, last], ...], "gaps": [[first, last, since iso], ...]}
    ranges: Mapped[dict[str, Any]] = mapped_column(JSON)
    outstanding: Mapped[int] = mapped_column(BigInteger, default=0)
    messages: Mapped[int] = mapped_column(BigInteger, default=0)
    windows: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    gaps_opened: Mapped[int] = mapped_column(BigInteger, default=0)
    reorders: Mapped[int] = mapped_column(BigInteger, default=0)
    resets: Mapped[int] = mapped_column(BigInteger, default=0)
    given_up: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_messages: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_windows: Mapped[int] = mapped_column(BigInteger, default=0)
    gone_messages: Mapped[int] = mapped_column(BigInteger, default=0)
    gone_windows: Mapped[int] = mapped_column(BigInteger, default=0)
    resend_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    resend_id: Mapped[str | None] = mapped_column(String(64), default=None)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class DeliveryHour(Base):
    """Windows of one agent per hour (by the envelopes' ``ts``): received, and reported
    undeliverable by the agent. Completeness is ``received / (received +
    undeliverable)``; messages still missing have unknown windows and are not counted
    here (``AgentDelivery.outstanding``)."""

    __tablename__ = "delivery_hours"

    agent_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    windows_received: Mapped[int] = mapped_column(BigInteger, default=0)
    windows_undeliverable: Mapped[int] = mapped_column(BigInteger, default=0)

    # The fleet's last 24 h are read across agents by hour.
    __table_args__ = (Index("ix_delivery_hours_hour", "hour"),)
class ApiToken(Base):
    """An API token: who may call the REST API, and with which scope (``auth``).

    Only the SHA-256 of the token is kept (a token is 256 random bits, so a plain hash is
    enough: nothing to brute-force), with its first characters in ``prefix``: not secret,
    shown in listings and used to find the row. ``name`` is what the audit log records as
    the actor; at most one active (not revoked) token has a name, so a revoked token's
    name can be given to its replacement.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(TOKEN_NAME_LENGTH))
    scope: Mapped[str] = mapped_column(String(8))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        CheckConstraint(_in("scope", TOKEN_SCOPES), name="ck_api_tokens_scope"),
        Index("ix_api_tokens_prefix", "prefix"),
        Index(
            "uq_api_tokens_active_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )


class AuditEntry(Base):
    """Who changed what, when: one row per change made through the API or a command,
    written in the same transaction as the change itself.

    ``actor`` is the name of the API token that made it (``token_id`` says which one, as
    a name can be reused once its token is revoked), or ``cli:<user>`` for a command;
    ``subject_type``/``subject_id`` name what changed (``ticket``/``17``, ``failure``/``5``,
    ``token``/``3``); ``detail`` holds what the change was (an outcome, a note, a scope).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    token_id: Mapped[int | None] = mapped_column(Integer, default=None)
    action: Mapped[str] = mapped_column(String(32))
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_audit_log_subject", "subject_type", "subject_id"),)



class WebSession(Base):
    """A signed-in browser of the web pages (``aggregator.web``): the API token it signed
    in with, and the CSRF token its forms carry.

    Only the SHA-256 of the session id (the cookie's value) is kept, as for tokens. A
    session acts with its token's name and scope, checked on every request, so revoking
    the token ends every session it opened.
    """

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_web_sessions_expires_at", "expires_at"),)


# What became of one notification for one target: waiting for its next attempt, sent,
# given up after the last attempt, or recorded and never sent (a past incident, or an
# update of an incident that was never announced).
NOTIFICATION_STATUSES = ("pending", "sent", "failed", "suppressed")


class Notification(Base):
    """One thing to tell one target about a ticket: the notification outbox
    (``aggregator.notify``).

    Written in the transaction that changed the ticket, so a crash can neither lose it nor
    leave it without its change; a worker sends it afterwards. ``incident`` is the key every
    notification about one ticket shares (its thread); ``announce`` is true for the one
    that tells the target about the incident, false for an update of it. ``body`` is the
    ticket as it was when the change was made; ``event_at`` is when what it reports
    happened (plant time). ``reference`` is what the target answered that later updates
    refer to (a Slack message's ``ts``).
    """

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(Integer)
    incident: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(64))
    announce: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    event_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A worker that claimed the row holds it until then (replicas share the outbox).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    reference: Mapped[str | None] = mapped_column(String(128), default=None)

    __table_args__ = (
        CheckConstraint(_in("status", NOTIFICATION_STATUSES), name="ck_notifications_status"),
        Index("ix_notifications_status_due", "status", "next_attempt_at"),
        Index("ix_notifications_ticket_id", "ticket_id"),
    )


class NotificationAttempt(Base):
    """The delivery log: one row per attempt to send a notification, and one for a
    notification recorded but not sent (``status`` ``suppressed: past incident``).

    ``status`` is ``sent``, ``error`` (another attempt follows), ``failed`` (the last
    one), or ``suppressed: <why>``; ``error`` is our own one-line description (an HTTP
    status, a timeout), never a URL or a header, so the log holds no secret.
    """

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"))
    target: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_notification_attempts_ticket_id", "ticket_id"),
        Index("ix_notification_attempts_started_at", "started_at"),
    )


def _sqlite_setup(engine: Engine) -> None:
    # pysqlite opens transactions lazily and never for SAVEPOINT, which breaks
    # begin_nested(); SQLAlchemy's documented fix is to take over BEGIN ourselves. IMMEDIATE
    # takes the write lock up front, so a read-then-write transaction cannot fail with
    # SQLITE_BUSY halfway (busy_timeout makes the second writer wait instead).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_engine(url: str, *, create: bool = True) -> Engine:
    """Engine for ``url``; SQLite files get their parent directories and WAL mode.

    With ``create`` (the default) the schema is migrated to the newest revision
    (``aggregator.migrations.upgrade``, which raises ``SchemaError`` for a schema it cannot
    place); with ``create=False`` the database is left as it is.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed)
        _sqlite_setup(engine)
    else:
        # pre_ping: a replica survives a PostgreSQL restart without a burst of errors.
        engine = create_engine(parsed, pool_pre_ping=True)
    if create:
        try:
            migrations.upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def open_sessions(engine: Engine) -> SessionFactory:
    """Session factory; objects stay readable after commit (they are copied to ...Out)."""
    return sessionmaker(engine, expire_on_commit=False)


# The registry's tables are defined with the registry (aggregator.registry.models); imported
# here so that Base.metadata, which the migrations are checked against, always has them.
from aggregator.registry import models as _registry_models  # noqa: E402,F401
