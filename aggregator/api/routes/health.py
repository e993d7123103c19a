"""``GET /healthz`` (liveness, with details) and ``GET /readyz`` (readiness).

Both answer the same body: what the aggregator has counted and, in ``problems``, what keeps
it from doing its job: not subscribed to the broker (with the reason: refused, DNS, TLS,
credentials, another client using our client id, ...), a series store or SQL database that
does not answer, a batch that keeps failing to be stored. They differ in the status code:
``/healthz`` is 200 while the process runs (restarting it would not help), ``/readyz`` is
503 while there is any problem, so a load balancer or an orchestrator's readiness probe
notices.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from aggregator.api.deps import IngestorDep, SeriesDep, SessionDep, SettingsDep, SubscriberDep
from aggregator.api.schemas import (
    ConfirmationsOut,
    CountsOut,
    DatabaseHealthOut,
    DeliveryHealthOut,
    HealthOut,
    MqttHealthOut,
    SeriesHealthOut,
)
from aggregator.db import AgentDelivery
from aggregator.ingest import Ingestor
from aggregator.series import SeriesStore
from aggregator.settings import Settings
from aggregator.subscriber import Subscriber

__all__ = ["healthz", "readyz", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

_NOT_READY = "not ready: `problems` says why; the body is the same as on 200"


def _database_error(session: Session) -> str | None:
    """None if the SQL database answers ``SELECT 1``, else why not.

    On the raw DBAPI connection: a SQLAlchemy connection would BEGIN, which on SQLite is
    ``BEGIN IMMEDIATE`` (the write lock) and could wait behind an ingest transaction.
    """
    try:
        bind = session.get_bind()
        raw = (bind if isinstance(bind, Engine) else bind.engine).raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        finally:
            raw.close()
    except Exception as exc:  # a probe reports every failure, it never raises
        return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return None


def _engine(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


# Summed in Python, not SQL: an agent that jumped its seqs far ahead may hold an
# outstanding count near 2**63, and SQLite's SUM raises on overflow.
_FLEET = select(
    AgentDelivery.outstanding, AgentDelivery.messages, AgentDelivery.windows,
    AgentDelivery.gaps_opened, AgentDelivery.reorders, AgentDelivery.duplicates,
    AgentDelivery.resets, AgentDelivery.resend_requests, AgentDelivery.dropped_messages,
    AgentDelivery.gone_messages,
)


def _fleet_delivery(session: Session) -> DeliveryHealthOut | None:
    """The fleet's delivery totals from SQL; None if the database does not answer.

    Read on the raw DBAPI connection, like ``_database_error``: a probe must not queue
    for SQLite's write lock behind an ingest transaction.
    """
    try:
        engine = _engine(session)
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(str(_FLEET.compile(dialect=engine.dialect)))
            rows = cursor.fetchall()
            cursor.close()
        finally:
            raw.close()
    except Exception as exc:  # a probe reports every failure, it never raises
        logger.debug("no delivery totals: %s", exc)
        return None
    sums = [sum(int(row[i]) for row in rows) for i in range(len(_FLEET.selected_columns))]
    return DeliveryHealthOut(
        agents=len(rows), agents_with_gaps=sum(1 for row in rows if row[0]),
        outstanding_messages=sums[0], messages_received=sums[1], windows_received=sums[2],
        gaps_opened=sums[3], reorders=sums[4], duplicates=sums[5], resets=sums[6],
        resend_requests=sums[7], dropped_messages=sums[8], gone_messages=sums[9],
    )


def _report(
    settings: Settings, series: SeriesStore, subscriber: Subscriber, ingestor: Ingestor,
    session: Session,
) -> HealthOut:
    sub = subscriber.counts
    problems = subscriber.problems()
    series_ok = series.ping()
    if not series_ok:
        problems.append(f"the series store ({series.name}) does not answer")
    db_error = _database_error(session)
    if db_error is not None:
        problems.append(f"the SQL database does not answer: {db_error}")
    counts = ingestor.counts
    confirmed = subscriber.confirmer.counts
    return HealthOut(
        status="degraded" if problems else "ok",
        problems=problems,
        mqtt=MqttHealthOut(
            connected=sub.connected,
            subscribed=sub.subscribed,
            broker=f"{settings.mqtt.host}:{settings.mqtt.port}",
            embedded=settings.mqtt_url is None,
            client_id=settings.mqtt_client_id,
            received=sub.received,
            acked=sub.acked,
            queued=sub.queued,
            retries=sub.retries,
            overflowed=sub.overflowed,
            connect_failures=sub.connect_failures,
            disconnects=sub.disconnects,
            takeovers=sub.takeovers,
            duplicate_client_id=sub.duplicate_client_id,
            last_error=sub.last_error,
        ),
        series=SeriesHealthOut(backend=series.name, ok=series_ok),
        database=DatabaseHealthOut(
            backend=session.get_bind().dialect.name, ok=db_error is None
        ),
        counts=CountsOut(
            accepted=counts.accepted,
            predictions_stored=counts.predictions,
            drift_events_stored=counts.drift_events,
            health_reports_stored=counts.health_reports,
            duplicates=counts.duplicates,
            statuses=counts.statuses,
            rejected=counts.rejected,
        ),
        delivery=_fleet_delivery(session) if db_error is None else None,
        confirmations=ConfirmationsOut(
            published=confirmed.published, failures=confirmed.failures,
            resend_rounds=confirmed.resend_rounds,
        ),
    )


@router.get(
    "/healthz",
    responses={200: {"description": "the process is alive; `status` and `problems` say "
                     "whether it can do its job"}},
)
def healthz(
    settings: SettingsDep, series: SeriesDep, subscriber: SubscriberDep, ingestor: IngestorDep,
    session: SessionDep,
) -> HealthOut:
    """Liveness, with details: always 200 while the process runs.

    ``status`` is ``ok`` when ``problems`` is empty, else ``degraded``. A liveness probe
    should use this route (restarting the process does not bring a broker back); a
    readiness probe should use ``/readyz``.
    """
    return _report(settings, series, subscriber, ingestor, session)


@router.get(
    "/readyz",
    responses={
        200: {"description": "ready: subscribed to the broker, the series store and the SQL "
              "database answer, nothing is failing to be stored"},
        503: {"model": HealthOut, "description": _NOT_READY},
    },
)
def readyz(
    response: Response, settings: SettingsDep, series: SeriesDep, subscriber: SubscriberDep,
    ingestor: IngestorDep, session: SessionDep,
) -> HealthOut:
    """Readiness: 200 when the aggregator can do its job, 503 while it cannot.

    Not ready while not subscribed to the broker (unreachable, refused, another client
    using our client id, ...), while the series store or the SQL database does not answer,
    or while a batch of received messages keeps failing to be stored. The body is the one
    of ``/healthz``; ``problems`` says what is wrong.
    """
    report = _report(settings, series, subscriber, ingestor, session)
    if report.problems:
        response.status_code = 503
    return report
