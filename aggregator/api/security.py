"""Who may call which route: API tokens as a FastAPI dependency.

A route asks for a scope by taking a ``ReadToken``, ``WriteToken`` or ``AdminToken``
parameter (or ``dependencies=[READ]`` when it needs no caller), and gets the caller as a
``Principal`` (its token's name is the actor the audit log records). The token comes
from the ``Authorization: Bearer <token>`` header and from nowhere else: no cookie, no
HTTP basic auth, no query parameter. A browser never attaches that header on its own to a
cross-site request, so a forged form post or image tag carries no credential and cannot
act (no CSRF token is needed), and the API sends no CORS headers, so no other origin's
script may read an answer either.

Answers: 401 with ``WWW-Authenticate: Bearer`` without a token or with a malformed,
unknown or revoked one; 403 with a token whose scope is too low; both with the ``ErrorOut``
body (``responses.AUTH`` declares them). The scheme is declared in the OpenAPI schema
(``HTTPBearer``), with each operation's scope, so Swagger UI's "Authorize" button works.
(FastAPI reads a request's body before it runs any dependency: a body that cannot be read
at all is refused with 400 before the token is looked at. Nothing is done with it.)

Public, on purpose: ``/healthz`` and ``/readyz`` (probes carry no token), the docs pages
``/docs`` and ``/redoc`` and their vendored assets under ``/static``, and
``/openapi.json``: the API's shape, already public in the source, holds no data, and the
docs pages must load it before anyone can press "Authorize". And
``/registry/artifacts/{sha256}``: the agents fetch model artifacts by URL alone; the bytes
are content-addressed and signed (``aggregator.api.routes.registry``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from aggregator import auth
from aggregator.auth import Principal, Scope
from aggregator.db import TOKEN_SCOPES

__all__ = [
    "ADMIN",
    "PUBLIC_PATHS",
    "READ",
    "WRITE",
    "AdminToken",
    "ReadToken",
    "WriteToken",
    "authenticate",
    "required_scope",
    "scope_checker",
]

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/redoc", "/openapi.json",
                          "/registry/artifacts/{sha256}"})
"""Routes answered without a token (and the ``/static`` mount of the docs' assets)."""

_HOW = "send it as 'Authorization: Bearer <token>' (create one with `linewatch token create`)"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIToken",
    bearerFormat="lw_ and 43 characters",
    description="An API token from `linewatch token create --scope read|write|admin --name "
    "NAME` (or `POST /tokens`). read: every GET; write: also change tickets and report "
    "failures; admin: also manage tokens.",
)

F = TypeVar("F", bound=Callable[..., object])
# Dependencies that check a caller's scope: ``authenticate`` for the API, and the web
# pages' session check (``aggregator.web``), so ``required_scope`` finds both.
_CHECKERS: set[object] = set()


def scope_checker(call: F) -> F:
    """Mark ``call`` as a dependency that checks the caller's scope (asked for with
    ``Security(call, scopes=[...])``), for ``required_scope``."""
    _CHECKERS.add(call)
    return call


def _unauthorized(detail: str, error: str | None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def _needed(scopes: list[str]) -> Scope:
    """The strongest of the scopes a route asked for (read if none)."""
    known = [s for s in scopes if s in TOKEN_SCOPES] or ["read"]
    strongest = max(known, key=TOKEN_SCOPES.index)
    return "admin" if strongest == "admin" else "write" if strongest == "write" else "read"


def _principal(request: Request, token: str) -> Principal:
    """The caller, verified once per request (a route may ask more than once)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    # A session of its own: the route's session must not commit last_used_at, and the
    # token is checked before the route opens any transaction.
    with request.app.state.session_factory() as session:
        principal = auth.verify(session, token)
        session.commit()
    request.state.principal = principal
    return principal


@scope_checker
def authenticate(
    request: Request,
    security_scopes: SecurityScopes,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, if its token is valid and its scope covers what the route asks for."""
    if credentials is None:
        raise _unauthorized(f"this needs an API token: {_HOW}", None)
    try:
        principal = _principal(request, credentials.credentials)
    except auth.InvalidTokenError as exc:
        raise _unauthorized(f"{exc}: {_HOW}", "invalid_token") from exc
    needed = _needed(security_scopes.scopes)
    if not principal.allows(needed):
        raise HTTPException(
            403,
            f"this needs a token with scope {needed}; token {principal.name!r} has scope "
            f"{principal.scope}",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
        )
    return principal


READ = Security(authenticate, scopes=["read"])
WRITE = Security(authenticate, scopes=["write"])
ADMIN = Security(authenticate, scopes=["admin"])
ReadToken = Annotated[Principal, READ]
WriteToken = Annotated[Principal, WRITE]
AdminToken = Annotated[Principal, ADMIN]


def required_scope(route: object) -> Scope | None:
    """The scope a route asks for (the strongest, if it asks more than once); None for a
    route that needs no token, or that is no API route (a mount, ``/openapi.json``).

    ``route`` is an ``APIRoute``, or a ``fastapi.routing.RouteContext`` as
    ``iter_route_contexts(app.routes)`` yields them (with the routers' dependencies).
    """
    top: Dependant | None = getattr(route, "dependant", None)
    found: list[str] = []
    stack = [] if top is None else list(top.dependencies)
    while stack:
        dependant = stack.pop()
        if dependant.call in _CHECKERS:
            found.extend(dependant.own_oauth_scopes or ["read"])
        stack.extend(dependant.dependencies)
    return _needed(found) if found else None
