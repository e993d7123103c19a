"""``GET /agents``: every agent the aggregator has heard from, with its latest health (read)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy import select

from aggregator.api.deps import SeriesDep, SessionDep
from aggregator.api.responses import AUTH, DB_DOWN
from aggregator.api.schemas import AgentHealthOut, AgentOut
from aggregator.api.security import READ
from aggregator.db import AgentRecord
from aggregator.errors import SeriesUnavailableError
from aggregator.series import HealthPoint, SeriesStore

__all__ = ["list_agents", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/agents", tags=["agents"], responses=AUTH | DB_DOWN)


@router.get("", dependencies=[READ])
def list_agents(session: SessionDep, series: SeriesDep) -> list[AgentOut]:
    """Agents by id. ``health`` is None for an agent that sent no report yet, and for
    every agent while the series store is down (the list itself lives in SQL)."""
    rows = session.scalars(select(AgentRecord).order_by(AgentRecord.agent_id))
    latest = _latest_health(series)
    return [
        AgentOut.model_validate(row).model_copy(update={"health": _health(latest, row)})
        for row in rows
    ]


def _latest_health(series: SeriesStore) -> dict[str, HealthPoint]:
    try:
        return series.latest_health()
    except SeriesUnavailableError as exc:
        logger.warning("agents listed without health: %s", exc)
        return {}


def _health(latest: dict[str, HealthPoint], row: AgentRecord) -> AgentHealthOut | None:
    point = latest.get(row.agent_id)
    return None if point is None else AgentHealthOut.model_validate(point)
