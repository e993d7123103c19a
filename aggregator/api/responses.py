"""The error responses routes declare in OpenAPI, each with the body the app sends.

``app.py``'s exception handlers answer ``ErrorOut`` (``{"detail": "..."}``) for 404, 409 and
503, ``security.authenticate`` for 401 and 403, and FastAPI itself for 400 (a body that
cannot be read at all); a request that
fails validation gets FastAPI's own 422 body, which FastAPI declares by itself on every
route that takes parameters.
"""

from __future__ import annotations

from typing import Any

from aggregator.api.schemas import ErrorOut

__all__ = [
    "ASSET_PATH_NOT_FOUND",
    "AUTH",
    "BAD_BODY",
    "DB_DOWN",
    "FAILURE_TICKETED",
    "SERIES_OR_DB_DOWN",
    "TICKET_CONFLICT",
    "TICKET_NOT_FOUND",
    "TOKEN_CONFLICT",
    "TOKEN_NOT_FOUND",
    "Responses",
]


Responses = dict[int | str, dict[str, Any]]
"""What a route's ``responses=`` takes; merge them with ``|``."""


def _error(status: int, description: str) -> Responses:
    return {status: {"model": ErrorOut, "description": description}}


TICKET_NOT_FOUND = _error(404, "no ticket has this id")
TICKET_CONFLICT = _error(409, "the ticket's status does not allow it (it is resolved)")
BAD_BODY = _error(400, "the body could not be read at all (e.g. not UTF-8)")
DB_DOWN = _error(503, "the SQL database cannot be reached; retry later")
SERIES_OR_DB_DOWN = _error(
    503, "the series store, or the SQL database (which holds the API tokens), cannot be "
    "reached; retry later")
TOKEN_NOT_FOUND = _error(404, "no token has this id")
FAILURE_TICKETED = _error(
    409, "a maintenance ticket of the asset was open when it failed: it was not missed; "
    "the answer names the ticket to resolve (confirmed_failure, with failed_at) instead")
ASSET_PATH_NOT_FOUND = _error(
    404, "no such path: an asset name of '.' or '..' cannot be a URL path segment (clients "
    "remove it)")
TOKEN_CONFLICT = _error(409, "an active token already has this name")
AUTH: Responses = {
    401: {
        "model": ErrorOut,
        "description": "no API token, or one that is malformed, unknown or revoked",
        "headers": {"WWW-Authenticate": {
            "description": "Bearer, as RFC 6750 says", "schema": {"type": "string"}}},
    },
    403: {"model": ErrorOut, "description": "the token's scope does not allow this"},
}
"""What every route that needs a token may answer; the SQL database holds the tokens, so
such a route also declares ``DB_DOWN`` (or ``SERIES_OR_DB_DOWN``)."""
