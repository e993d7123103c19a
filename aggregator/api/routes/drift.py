"""``GET /drift``: drift and data-quality events the agents reported, newest first (read)."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator.api.deps import SeriesDep
from aggregator.api.params import AgentFilter, AssetFilter, DetectorFilter, Limit, Since
from aggregator.api.responses import AUTH, SERIES_OR_DB_DOWN
from aggregator.api.schemas import DriftOut
from aggregator.api.security import READ

__all__ = ["list_drift", "router"]

router = APIRouter(prefix="/drift", tags=["drift"], responses=AUTH | SERIES_OR_DB_DOWN)


@router.get("", dependencies=[READ])
def list_drift(
    series: SeriesDep,
    agent: AgentFilter = None,
    asset: AssetFilter = None,
    detector: DetectorFilter = None,
    since: Since = None,
    limit: Limit = 500,
) -> list[DriftOut]:
    """Newest first; every given filter must match. 503 while the series store is down."""
    events = series.drift_events(
        agent=agent, asset=asset, detector=detector, since=since, limit=limit
    )
    return [DriftOut.model_validate(e) for e in events]
