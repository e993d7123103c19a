"""``GET /agents``: every agent the aggregator has heard from, with its latest health, the
models it runs (live, shadow) and its latest deployment's outcome, and which of its
messages are stored; ``GET /agents/{agent_id}/completeness``: its windows
per hour, received against reported undeliverable. Both need a read token."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator.api.deps import SeriesDep, SessionDep
from aggregator.api.params import Limit, Since, Until
from aggregator.api.responses import AUTH, DB_DOWN, Responses
from aggregator.api.schemas import (
    AgentDeploymentOut,
    AgentHealthOut,
    AgentOut,
    CompletenessOut,
    DeliveryOut,
    ErrorOut,
    GapOut,
    HourOut,
)
from aggregator.api.security import READ
from aggregator.db import AgentDelivery, AgentRecord, DeliveryHour
from aggregator.errors import SeriesUnavailableError
from aggregator.operations import delivered
from aggregator.reactions.delivery import ledger_of
from aggregator.series import HealthPoint, SeriesStore
from contract.wire import MAX_NAME, Name

__all__ = ["agent_completeness", "deployment_of", "list_agents", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/agents", tags=["agents"], responses=AUTH | DB_DOWN)

AGENT_NOT_FOUND: Responses = {404: {"model": ErrorOut, "description": "no agent has this id"}}
AgentId = Annotated[Name, Path(description=f"an agent's id (1 .. {MAX_NAME} characters)")]
OPEN_GAPS_SHOWN = 100
_HOUR = timedelta(hours=1)
_DAY = timedelta(hours=24)


@router.get("", dependencies=[READ])
def list_agents(session: SessionDep, series: SeriesDep) -> list[AgentOut]:
    """Agents by id. ``health`` is None for an agent that sent no report yet, and for
    every agent while the series store is down (the list itself lives in SQL)."""
    rows = session.scalars(select(AgentRecord).order_by(AgentRecord.agent_id))
    latest = _latest_health(series)
    delivery = _deliveries(session, datetime.now(UTC))
    return [
        AgentOut.model_validate(row).model_copy(update={
            "health": _health(latest, row), "delivery": delivery.get(row.agent_id),
            "deployment": deployment_of(row),
        })
        for row in rows
    ]


@router.get("/{agent_id}/completeness", dependencies=[READ],
            responses=DB_DOWN | AGENT_NOT_FOUND)
def agent_completeness(
    agent_id: AgentId,
    session: SessionDep,
    since: Since = None,
    until: Until = None,
    limit: Limit = 744,
) -> CompletenessOut:
    """The agent's windows per hour (by when it sent them), for the hours that overlap
    ``since`` .. ``until`` (default: the last 24 h): received, and reported undeliverable
    by the agent. Messages still missing are counted apart (``outstanding_messages``):
    what they held is unknown. 404 for an agent never heard from."""
    agent = session.get(AgentRecord, agent_id)
    if agent is None:
        raise HTTPException(404, f"no agent {agent_id!r} has been heard from")
    until = until or datetime.now(UTC)
    since = since or until - _DAY
    # An hour's bucket overlaps the range when it starts after since - 1 h and before until.
    where = (DeliveryHour.agent_id == agent_id, DeliveryHour.hour > since - _HOUR,
             DeliveryHour.hour < until)
    received, lost = delivered(session, since, until, agent_id).get(agent_id, (0, 0))
    hours = session.scalars(
        select(DeliveryHour).where(*where).order_by(DeliveryHour.hour.desc()).limit(limit))
    row = session.get(AgentDelivery, agent_id)
    return CompletenessOut(
        agent=agent_id, since=since, until=until, windows_received=received,
        windows_undeliverable=lost, completeness=_percent(received, lost),
        outstanding_messages=0 if row is None else row.outstanding,
        hours=[HourOut(hour=h.hour, windows_received=h.windows_received,
                       windows_undeliverable=h.windows_undeliverable,
                       completeness=_percent(h.windows_received, h.windows_undeliverable))
               for h in hours],
    )


def _percent(received: int, lost: int) -> float | None:
    total = received + lost
    return None if total == 0 else 100.0 * received / total


def _deliveries(session: Session, now: datetime) -> dict[str, DeliveryOut]:
    day = dict(
        (agent, (int(received), int(lost)))
        for agent, received, lost in session.execute(
            select(DeliveryHour.agent_id, func.sum(DeliveryHour.windows_received),
                   func.sum(DeliveryHour.windows_undeliverable))
            .where(DeliveryHour.hour > now - _DAY - _HOUR)
            .group_by(DeliveryHour.agent_id)
        )
    )
    out = {}
    for row in session.scalars(select(AgentDelivery)):
        gaps = ledger_of(row).gaps[:OPEN_GAPS_SHOWN]
        out[row.agent_id] = DeliveryOut(
            stored_through=row.stored_through, highest_seq=row.highest_seq,
            outstanding_messages=row.outstanding,
            open_gaps=[GapOut(first=g.first, last=g.last, since=g.since) for g in gaps],
            gaps_opened=row.gaps_opened, reorders=row.reorders, duplicates=row.duplicates,
            resets=row.resets, resend_requests=row.resend_requests,
            messages_received=row.messages, windows_received=row.windows,
            dropped_messages=row.dropped_messages, dropped_windows=row.dropped_windows,
            gone_messages=row.gone_messages, gone_windows=row.gone_windows,
            completeness_24h=_percent(*day.get(row.agent_id, (0, 0))),
        )
    return out


def deployment_of(row: AgentRecord) -> AgentDeploymentOut | None:
    """The agent's latest deployment outcome, None before it reported one."""
    if row.deployment_state is None or row.deployment_at is None:
        return None
    return AgentDeploymentOut(
        assignment=row.deployment_assignment,
        state=row.deployment_state,
        reason=row.deployment_reason, at=row.deployment_at)


def _latest_health(series: SeriesStore) -> dict[str, HealthPoint]:
    try:
        return series.latest_health()
    except SeriesUnavailableError as exc:
        logger.warning("agents listed without health: %s", exc)
        return {}


def _health(latest: dict[str, HealthPoint], row: AgentRecord) -> AgentHealthOut | None:
    point = latest.get(row.agent_id)
    return None if point is None else AgentHealthOut.model_validate(point)
