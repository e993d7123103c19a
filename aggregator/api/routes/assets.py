"""One asset's history (read): its scores from the series store, and what happened to it
(tickets, drift and data-quality conditions and events). Asset names repeat across sites:
``site`` narrows to one plant's."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import or_, select

from aggregator import tickets
from aggregator.api.deps import SeriesDep, SessionDep
from aggregator.api.paging import SCORES_PAGED, scores_page
from aggregator.api.params import AssetPath, Limit, ScoreLimit, Since, SiteFilter, Until
from aggregator.api.responses import ASSET_PATH_NOT_FOUND, AUTH, SERIES_OR_DB_DOWN
from aggregator.api.schemas import (
    AssetEventsOut,
    ConditionOut,
    DriftOut,
    ScorePointOut,
    TicketOut,
)
from aggregator.api.security import READ
from aggregator.db import AssetCondition

__all__ = ["asset_events", "asset_scores", "router"]

router = APIRouter(prefix="/assets", tags=["assets"], dependencies=[READ],
                   responses=AUTH | SERIES_OR_DB_DOWN | ASSET_PATH_NOT_FOUND)


@router.get("/{asset}/scores", responses=SCORES_PAGED)
def asset_scores(
    request: Request,
    response: Response,
    asset: AssetPath,
    series: SeriesDep,
    site: SiteFilter = None,
    since: Since = None,
    until: Until = None,
    limit: ScoreLimit = 1000,
) -> list[ScorePointOut]:
    """The asset's scored windows with ``since <= window_end < until``, oldest first, at
    most ``limit``; ``Link: rel="next"`` when more follow (the same request, ``since``
    moved on). Read from the series store: 503 while it is down."""
    fetched = series.scores(asset, site=site, since=since, until=until, limit=limit + 1)
    return [ScorePointOut.model_validate(p) for p in scores_page(request, response, fetched,
                                                                 limit)]


@router.get("/{asset}/events")
def asset_events(
    asset: AssetPath,
    session: SessionDep,
    series: SeriesDep,
    site: SiteFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 500,
) -> AssetEventsOut:
    """What happened to the asset: every ticket of it (newest first), the drift and
    data-quality conditions that overlap [since, until) and the agents' events in it
    (newest first, at most ``limit``). The events come from the series store: 503 while it
    is down."""
    found = tickets.find(session, asset=asset, site=site)
    query = select(AssetCondition).where(AssetCondition.asset == asset)
    if site is not None:
        query = query.where(AssetCondition.site == site)
    if since is not None:
        query = query.where(or_(AssetCondition.ended_at.is_(None),
                                AssetCondition.ended_at >= since))
    if until is not None:
        query = query.where(AssetCondition.since < until)
    conditions = session.scalars(
        query.order_by(AssetCondition.since.desc(), AssetCondition.id.desc()))
    events = series.drift_events(asset=asset, site=site, since=since, until=until,
                                 limit=limit)
    return AssetEventsOut(
        asset=asset, site=site, tickets=[TicketOut.model_validate(t) for t in found],
        conditions=[ConditionOut.model_validate(c) for c in conditions],
        drift=[DriftOut.model_validate(e) for e in events])
