"""Paging headers of the REST API's lists (aggregator.api.paging), without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from fastapi import Request, Response

from aggregator.api.paging import page_headers, scores_page
from aggregator.series import PredictionPoint

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def request(query: str = "") -> Request:
    return Request({"type": "http", "method": "GET", "scheme": "http", "path": "/x",
                    "query_string": query.encode(), "headers": [(b"host", b"api")],
                    "server": ("api", 80)})


def point(minute: int, agent: str = "gw-1") -> PredictionPoint:
    end = T0 + timedelta(minutes=minute)
    return PredictionPoint("p", "l", agent, "a", "m", "1", end - timedelta(minutes=1), end,
                           0.5, False, minute)


def next_since(response: Response) -> datetime:
    link = response.headers["link"]
    assert link.endswith('>; rel="next"')
    url = link[1:link.index(">")]
    return datetime.fromisoformat(parse_qs(urlsplit(url).query)["since"][0])


def test_offset_pages_link_both_ways_and_count() -> None:
    response = Response()
    page_headers(request("limit=10&offset=10&kind=x"), response, limit=10, offset=10,
                 returned=10, total=25)
    assert response.headers["x-total-count"] == "25"
    assert response.headers["link"] == (
        '<http://api/x?limit=10&kind=x&offset=20>; rel="next", '
        '<http://api/x?limit=10&kind=x&offset=0>; rel="prev"')
    last = Response()
    page_headers(request(), last, limit=10, offset=20, returned=5, total=25)
    assert last.headers["link"] == '<http://api/x?offset=10>; rel="prev"'
    uncounted = Response()
    page_headers(request(), uncounted, limit=2, offset=0, returned=2, total=None)
    assert "x-total-count" not in uncounted.headers and 'rel="next"' in uncounted.headers["link"]


def test_a_score_page_never_ends_inside_one_instant() -> None:
    fetched = [point(0), point(1), point(2), point(2, "gw-2")]  # limit 3, plus one
    response = Response()
    assert scores_page(request(), response, fetched, 3) == fetched[:2]
    assert next_since(response) == point(2).window_end  # both points at minute 2 come next

    whole = Response()
    assert scores_page(request(), whole, fetched[:3], 3) == fetched[:3]
    assert "link" not in whole.headers

    crowded = [point(5), point(5, "gw-2"), point(5, "gw-3")]  # more than limit at once
    response = Response()
    assert scores_page(request(), response, crowded, 2) == crowded[:2]
    assert next_since(response) == point(5).window_end + timedelta(microseconds=1)
