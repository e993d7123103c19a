"""``GET /drift``: drift and data-quality events the agents reported, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from aggregator.api.deps import SeriesDep
from aggregator.api.schemas import DriftOut

__all__ = ["list_drift", "router"]

_MAX_LIMIT = 10_000

router = APIRouter(prefix="/drift", tags=["drift"])


@router.get("")
def list_drift(
    series: SeriesDep,
    agent: str | None = None,
    asset: str | None = None,
    detector: str | None = None,
    since: Annotated[AwareDatetime | None, Query(description="events at or after")] = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_LIMIT)] = 500,
) -> list[DriftOut]:
    """Newest first; every given filter must match. 503 while the series store is down."""
    events = series.drift_events(
        agent=agent, asset=asset, detector=detector, since=since, limit=limit
    )
    return [DriftOut.model_validate(e) for e in events]
