"""``GET /drift``: drift and data-quality events the agents reported, newest first (read)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from aggregator.api.deps import SeriesDep
from aggregator.api.paging import UNCOUNTED, page_headers
from aggregator.api.params import (
    AgentFilter,
    AssetFilter,
    DetectorFilter,
    Limit,
    Offset,
    Since,
    SiteFilter,
    Until,
)
from aggregator.api.responses import AUTH, SERIES_OR_DB_DOWN
from aggregator.api.schemas import DriftOut
from aggregator.api.security import READ

__all__ = ["list_drift", "router"]

router = APIRouter(prefix="/drift", tags=["drift"], responses=AUTH | SERIES_OR_DB_DOWN)


@router.get("", dependencies=[READ], responses=UNCOUNTED)
def list_drift(
    request: Request,
    response: Response,
    series: SeriesDep,
    agent: AgentFilter = None,
    asset: AssetFilter = None,
    detector: DetectorFilter = None,
    site: SiteFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[DriftOut]:
    """Newest first; every given filter must match. Paged by ``limit`` and ``offset``:
    ``Link`` has the next page while a page comes back full (no total: the series store
    does not count under every filter). 503 while the series store is down."""
    events = series.drift_events(
        agent=agent, asset=asset, detector=detector, since=since, limit=limit,
        until=until, site=site, offset=offset,
    )
    page_headers(request, response, limit=limit, offset=offset, returned=len(events),
                 total=None)
    return [DriftOut.model_validate(e) for e in events]
