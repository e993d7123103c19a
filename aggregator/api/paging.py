"""Paging of the lists: ``limit`` + ``offset``, and headers that say where the rest is.

A list answers a JSON array (the page), newest first, and two headers:

- ``X-Total-Count``: how many items match the filters in all (not on ``/drift``, whose
  series store cannot count under every filter cheaply);
- ``Link`` (RFC 8288): ``rel="next"`` when more items follow, ``rel="prev"`` when the page
  did not start at the first; each is this request's URL with ``offset`` changed.

Offsets count from the newest item, so items that arrive while a client pages move the
older ones one place on: a client that must see every item once pages with a time filter
(``until``/``opened_until`` fixed at the first request) instead.

``scores_page`` does the same for an asset's score history, oldest first, with a cursor
instead of an offset (see its docstring).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import Request, Response

from aggregator.api.responses import Responses
from aggregator.series import PredictionPoint

__all__ = ["PAGED", "SCORES_PAGED", "UNCOUNTED", "link", "page_headers", "scores_page"]


def _headers(total: bool) -> dict[str, dict[str, object]]:
    headers: dict[str, dict[str, object]] = {"Link": {
        "description": "RFC 8288 links to the next page (rel=\"next\", when more items "
        "follow) and the previous one (rel=\"prev\")", "schema": {"type": "string"}}}
    if total:
        headers["X-Total-Count"] = {"description": "how many items match the filters in all",
                                    "schema": {"type": "integer", "minimum": 0}}
    return headers


PAGED: Responses = {200: {"description": "one page, newest first", "headers": _headers(True)}}
UNCOUNTED: Responses = {200: {"description": "one page, newest first",
                              "headers": _headers(False)}}
SCORES_PAGED: Responses = {200: {"description": "one page, oldest first", "headers": {
    "Link": {"description": "RFC 8288 link to the next page (rel=\"next\"), when more points "
             "follow: this request with `since` moved past this page",
             "schema": {"type": "string"}}}}}


def link(request: Request, rel: str, **params: str | int) -> str:
    """``<this request's URL with params changed>; rel="..."``."""
    url = request.url.include_query_params(**params)
    return f'<{url}>; rel="{rel}"'


def page_headers(request: Request, response: Response, *, limit: int, offset: int,
                 returned: int, total: int | None) -> None:
    """Set ``Link`` (and ``X-Total-Count`` when ``total`` is known) for a page of
    ``returned`` items at ``offset``. Without a total, a full page means "maybe more"."""
    links = []
    more = offset + returned < total if total is not None else returned >= limit
    if more:
        links.append(link(request, "next", offset=offset + returned))
    if offset > 0:
        links.append(link(request, "prev", offset=max(0, offset - limit)))
    if links:
        response.headers["Link"] = ", ".join(links)
    if total is not None:
        response.headers["X-Total-Count"] = str(total)


_ONE_US = timedelta(microseconds=1)


def scores_page(request: Request, response: Response, fetched: list[PredictionPoint],
                limit: int) -> list[PredictionPoint]:
    """The page of an asset's score history to answer, from up to ``limit + 1`` points
    fetched oldest first; sets ``Link: rel="next"`` when more follow.

    The next page starts at a window end (``since``), so a page never ends inside one
    instant: when the cut falls between points with the same window end (two agents or
    model versions scoring the asset at once), that instant goes to the next page whole.
    Only a page that would be empty then (more than ``limit`` points at one instant) ends
    inside it, and the next page starts after it.
    """
    if len(fetched) <= limit:
        return fetched
    cut = fetched[limit].window_end
    page = [p for p in fetched[:limit] if p.window_end < cut]
    since: datetime = cut
    if not page:
        page, since = fetched[:limit], cut + _ONE_US
    response.headers["Link"] = link(request, "next", since=since.isoformat())
    return page
