"""Failures no ticket warned of (missed detections): report one (write), list them (read,
paged, with a time filter). Model health counts them against the model's recall."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from aggregator import audit, failures
from aggregator.api.deps import SeriesDep, SessionDep, SettingsDep
from aggregator.api.paging import PAGED, page_headers
from aggregator.api.params import AssetFilter, Limit, Offset, Since, SiteFilter, Until
from aggregator.api.responses import AUTH, BAD_BODY, DB_DOWN, FAILURE_TICKETED
from aggregator.api.schemas import FailureIn, FailureOut
from aggregator.api.security import READ, WriteToken
from aggregator.failures import FailureReport
from aggregator.reactions import performance
from aggregator.tickets import TimeRange

__all__ = ["list_failures", "report_failure", "router"]

router = APIRouter(prefix="/failures", tags=["failures"], responses=AUTH | DB_DOWN)


@router.post("", status_code=201, responses=BAD_BODY | FAILURE_TICKETED)
def report_failure(body: FailureIn, session: SessionDep, caller: WriteToken,
                   series: SeriesDep, settings: SettingsDep) -> FailureOut:
    """Report a failure that no maintenance ticket warned of: a missed detection, which
    model health counts against the model's recall. Without ``model``, it counts against
    the one model version the agents of the line run (none if they run several). 409 when
    a maintenance ticket of the asset was open when it failed: resolve that one instead."""
    report = FailureReport(
        site=body.site, line=body.line, asset=body.asset, at=body.at, note=body.note,
        model_name=None if body.model is None else body.model.name,
        model_version=None if body.model is None else body.model.version)
    row = failures.report(session, report, caller.name)
    out = FailureOut.model_validate(row)
    audit.record(session, caller.actor, "report", "failure", row.id,
                 out.model_dump(mode="json", exclude={"id", "reported_by"}),
                 now=row.reported_at)
    session.flush()
    performance.check_realised(session, series, settings, site=row.site,
                               model_name=row.model_name, model_version=row.model_version,
                               now=row.reported_at)
    session.commit()
    return out


@router.get("", dependencies=[READ], responses=PAGED)
def list_failures(
    request: Request,
    response: Response,
    session: SessionDep,
    site: SiteFilter = None,
    asset: AssetFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[FailureOut]:
    """Reported failures, newest failure first; ``since`` and ``until`` bound when they
    happened. Paged like ``/tickets`` (``X-Total-Count``, ``Link``)."""
    at = TimeRange(since, until)
    found = failures.find(session, site=site, asset=asset, at=at, limit=limit, offset=offset)
    total = failures.count(session, site=site, asset=asset, at=at)
    page_headers(request, response, limit=limit, offset=offset, returned=len(found),
                 total=total)
    return [FailureOut.model_validate(f) for f in found]
