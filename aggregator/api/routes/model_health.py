"""Model health (read): the figures as JSON (``GET /health/models``) and the report for
people who want a yes or a no (``GET /reports/model-health``, HTML or Markdown).

Both, and ``linewatch report``, come from one computation,
``aggregator.modelhealth.model_health``: the same period gives the same figures in every
form. The period is ``period`` long (default 30 days) and ends at ``until`` (default:
now), which it excludes.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from aggregator.api.deps import SeriesDep, SessionDep, SettingsDep
from aggregator.api.params import Period, ReportFormat, UntilNow
from aggregator.api.responses import AUTH, DB_DOWN
from aggregator.api.schemas import HealthFiguresOut
from aggregator.api.security import READ
from aggregator.figures import HealthFigures
from aggregator.modelhealth import DEFAULT_PERIOD, model_health, parse_period, period_ending
from aggregator.report import render_html, render_markdown
from aggregator.series import SeriesStore
from aggregator.settings import Settings

__all__ = ["MARKDOWN", "health_figures", "health_report", "router"]

router = APIRouter(tags=["model health"], dependencies=[READ], responses=AUTH | DB_DOWN)

MARKDOWN = "text/markdown; charset=utf-8"


def _figures(session: Session, series: SeriesStore, settings: Settings, period: str,
             until: datetime | None) -> HealthFigures:
    since, end = period_ending(until, parse_period(period))
    return model_health(session, series, settings, since=since, until=end)


@router.get("/health/models")
def health_figures(
    session: SessionDep, series: SeriesDep, settings: SettingsDep,
    period: Period = DEFAULT_PERIOD, until: UntilNow = None,
) -> HealthFiguresOut:
    """Does the model still work? Precision, recall and F1 of its alerts with 95 %
    intervals, warning time, cost in technician visits, drift and a verdict (keep, watch,
    retrain, not enough data), over the period: in all, then per model version, site, line
    and calendar month. From ticket outcomes, reported missed failures, the assets the
    series store saw scored (without them while it is down) and the agents' drift
    conditions; ``aggregator.figures`` says how each figure is made."""
    figures = _figures(session, series, settings, period, until)
    return HealthFiguresOut.model_validate(figures.to_dict())


@router.get(
    "/reports/model-health",
    # Response, not HTMLResponse: the route class's media type would also be declared for
    # the JSON error answers (401, 403, 503).
    response_class=Response,
    responses={200: {"description": "the report, as the `format` asked for",
                     "content": {"text/html": {"schema": {"type": "string"}},
                                 "text/markdown": {"schema": {"type": "string"}}}}},
)
def health_report(
    session: SessionDep, series: SeriesDep, settings: SettingsDep,
    period: Period = DEFAULT_PERIOD, until: UntilNow = None, fmt: ReportFormat = "html",
) -> Response:
    """The model health of the period in plain words, for people who want a yes or a
    no: one self-contained HTML page (the default), or Markdown (``format=markdown``,
    ``text/markdown``). The same figures as ``GET /health/models``."""
    figures = _figures(session, series, settings, period, until)
    if fmt == "markdown":
        return Response(render_markdown(figures), media_type=MARKDOWN)
    return HTMLResponse(render_html(figures))
