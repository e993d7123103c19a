"""Request parameters of the REST API, shared by the routes: what each accepts, exactly.

Every bound here is one the storage behind the API can hold, and each is declared in the
OpenAPI schema, so a request the schema calls valid is never refused and one it calls
invalid is refused with 422 (FastAPI's validation error body), never a 500:

- ticket ids: 1 .. ``MAX_TICKET_ID``, the range of the ``tickets.id`` column's type on
  every database (2^31 - 1 while it is an ``INTEGER``: 32-bit on PostgreSQL);
- times: an ISO-8601 / RFC 3339 string with a time zone, in the years ``MIN_YEAR`` ..
  ``MAX_YEAR`` as written. Whatever its UTC offset, such a time lies inside the range of
  InfluxDB's signed 64-bit nanosecond timestamps (1677-09-21 .. 2262-04-11 UTC), which is
  the narrowest of the series backends. Numbers are not dates: ``since=0.5`` is refused;
- names (agent, asset, site, detector): what the wire contract allows for a name
  (``contract.wire.Name``: 1 .. ``MAX_NAME`` characters, no backslash, no control
  character). No stored event or ticket can carry another name, so a filter outside that
  set could never match: it is refused rather than answered with an empty list;
- statuses and kinds: the enumerations of ``aggregator.tickets``;
- paging: ``limit`` 1 .. ``MAX_LIMIT`` and ``offset`` 0 .. ``MAX_OFFSET``;
- periods (model health): a whole number and ``h``, ``d`` or ``w``
  (``modelhealth.PERIOD_PATTERN``), at most 9999 days' worth.

Ranges across two parameters (``since`` after ``until``) are not refused: they are
ranges nothing lies in, and a list answers them with no items (no schema can say that one
parameter must be less than another, and what the schema calls valid is never refused).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AwareDatetime, BeforeValidator, WithJsonSchema
from sqlalchemy import BigInteger, Integer, SmallInteger

from aggregator import tickets
from aggregator.db import Ticket
from aggregator.modelhealth import PERIOD_PATTERN
from contract.wire import MAX_NAME, Name

__all__ = [
    "ASSET_PATTERN",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "MAX_TICKET_ID",
    "MAX_YEAR",
    "MIN_YEAR",
    "TIMESTAMP_PATTERN",
    "AgentFilter",
    "AssetFilter",
    "AssetPath",
    "DetectorFilter",
    "KindFilter",
    "Limit",
    "Offset",
    "OpenedSince",
    "OpenedUntil",
    "Period",
    "ReportFormat",
    "ResolvedSince",
    "ResolvedUntil",
    "ScoreLimit",
    "SiteFilter",
    "Since",
    "StatusFilter",
    "TicketId",
    "Timestamp",
    "Until",
    "TokenId",
    "Until",
    "UntilNow",
]

# What the tickets.id column holds on every database (an INTEGER is 32-bit on PostgreSQL).
_INTEGER_MAX = {BigInteger: 2**63 - 1, SmallInteger: 2**15 - 1, Integer: 2**31 - 1}
MAX_TICKET_ID = next(
    top for kind, top in _INTEGER_MAX.items() if isinstance(Ticket.__table__.c.id.type, kind)
)
MAX_LIMIT = 10_000
MAX_OFFSET = 2**31 - 1  # an INTEGER's range: what every backend's OFFSET takes
MIN_YEAR = 1678
MAX_YEAR = 2261

# Years MIN_YEAR..MAX_YEAR (1678-1699, 1700-1999, 2000-2259, 2260-2261), then the rest of
# an RFC 3339 date-time whose fields are each in range, microseconds at most, and an offset.
_YEARS = r"(16(7[89]|[89][0-9])|1[7-9][0-9]{2}|2[01][0-9]{2}|22[0-5][0-9]|226[01])"
TIMESTAMP_PATTERN = (
    rf"^{_YEARS}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_ANY_YEAR = re.compile(r"^[0-9]{4}-")
_RANGE = f"{MIN_YEAR}-01-01T00:00:00Z .. {MAX_YEAR}-12-31T23:59:59.999999Z"
_FORMAT = "an ISO-8601 date-time with a time zone, e.g. 2026-03-01T08:00:00Z"


def _timestamp_text(value: Any) -> str:
    """The text of a time as the API accepts it; ValueError naming the rule otherwise.

    >>> _timestamp_text("2026-03-01T08:00:00+01:00")
    '2026-03-01T08:00:00+01:00'
    >>> _timestamp_text(0.5)
    Traceback (most recent call last):
    ...
    ValueError: must be an ISO-8601 date-time with a time zone, e.g. 2026-03-01T08:00:00Z
    >>> _timestamp_text("2300-01-01T00:00:00Z")
    Traceback (most recent call last):
    ...
    ValueError: must lie in 1678-01-01T00:00:00Z .. 2261-12-31T23:59:59.999999Z (...), got 2300-...
    """
    if not isinstance(value, str):
        raise ValueError(f"must be {_FORMAT}")
    if _TIMESTAMP.match(value):
        return value
    if _ANY_YEAR.match(value) and not MIN_YEAR <= int(value[:4]) <= MAX_YEAR:
        raise ValueError(
            f"must lie in {_RANGE} (the range every series backend stores), got {value}"
        )
    if re.search(r"[0-9] [0-9]{2}:?[0-9]{2}$", value):
        raise ValueError(f"must be {_FORMAT} (in a URL, write the + of an offset as %2B)")
    raise ValueError(f"must be {_FORMAT}")


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_timestamp_text),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": TIMESTAMP_PATTERN,
            "description": f"{_FORMAT}; in {_RANGE}",
        }
    ),
]
"""A point in time given by a client: see the module docstring."""

TicketId = Annotated[
    int, Path(ge=1, le=MAX_TICKET_ID, description=f"a ticket id, 1 .. {MAX_TICKET_ID}")
]
# api_tokens.id is an INTEGER too: the same range.
TokenId = Annotated[
    int, Path(ge=1, le=MAX_TICKET_ID, description=f"a token id, 1 .. {MAX_TICKET_ID}")
]
StatusFilter = Annotated[tickets.Status | None, Query(description="only tickets in this status")]
KindFilter = Annotated[tickets.Kind | None, Query(description="only tickets of this kind")]
AgentFilter = Annotated[
    Name | None, Query(description=f"only this agent's (a name, 1 .. {MAX_NAME} characters)")
]
AssetFilter = Annotated[
    Name | None,
    Query(description="only this asset's (asset names repeat across sites)"),
]
SiteFilter = Annotated[Name | None, Query(description="only this site's (plant's)")]
DetectorFilter = Annotated[
    Name | None, Query(description="only this detector's, e.g. ADWIN, PageHinkley, range")
]
Since = Annotated[
    Timestamp | None,
    Query(description=f"only events at or after this time: {_FORMAT}, in {_RANGE}"),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many, newest first")]
Until = Annotated[
    Timestamp | None,
    Query(description=f"only events before this time: {_FORMAT}, in {_RANGE}"),
]
OpenedSince = Annotated[
    Timestamp | None, Query(description="only tickets opened at or after this time")]
OpenedUntil = Annotated[Timestamp | None, Query(description="only tickets opened before this time")]
ResolvedSince = Annotated[
    Timestamp | None,
    Query(description="only tickets resolved at or after this time (so: resolved ones)")]
ResolvedUntil = Annotated[
    Timestamp | None,
    Query(description="only tickets resolved before this time (so: resolved ones)")]
Offset = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description="skip this many first (paging: the Link "
               "header's next page sets it)")]
ScoreLimit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description="at most this many, oldest first (the Link "
               "header's next page goes on from the last)")]
Period = Annotated[
    str,
    Query(pattern=PERIOD_PATTERN, description="how long the period is, ending at `until`: a "
          "whole number and h (hours), d (days) or w (weeks), e.g. 30d, 12w, 36h; at most "
          "99999h, 9999d or 999w"),
]
UntilNow = Annotated[
    Timestamp | None,
    Query(description=f"when the period ends (excluded); default: now. {_FORMAT}, in {_RANGE}"),
]
ReportFormat = Annotated[
    Literal["html", "markdown"],
    Query(alias="format",
          description="html: one self-contained page (text/html); markdown: text/markdown"),
]
# A path segment: a name (contract.wire.Name) without '/', which no URL path segment carries.
ASSET_PATTERN = r"^[^\\/\x00-\x1f\x7f-\x9f]+$"
AssetPath = Annotated[
    str, Path(min_length=1, max_length=MAX_NAME, pattern=ASSET_PATTERN,
              description="the asset's name (asset names repeat across sites: see `site`)")]
