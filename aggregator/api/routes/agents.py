"""``GET /agents``: every agent the aggregator has heard from."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from aggregator.api.deps import SessionDep
from aggregator.api.schemas import AgentOut
from aggregator.db import AgentRecord

__all__ = ["list_agents", "router"]

router = APIRouter(prefix="/agents", tags=["agents"])


@router.get("")
def list_agents(session: SessionDep) -> list[AgentOut]:
    rows = session.scalars(select(AgentRecord).order_by(AgentRecord.agent_id))
    return [AgentOut.model_validate(row) for row in rows]
