"""Sessions of the web pages: sign in once with an API token, then a cookie.

The cookie holds a random session id (256 bits from ``secrets``); the database keeps its
SHA-256 (``db.WebSession``), the token it was opened with and a CSRF token for the
session's forms (a synchronizer token: a forged cross-site form cannot know it). Every
request re-reads the token, so a session acts with the token's name and scope as they are
now, and revoking the token ends every session it opened. Sessions expire after
``LIFETIME`` (a working day and a half), whatever happens in between.

Functions take the caller's ``Session`` and never commit, like ``aggregator.auth``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from aggregator import auth
from aggregator.auth import Principal, Scope
from aggregator.db import ApiToken, WebSession

__all__ = ["LIFETIME", "Signed", "csrf_matches", "end", "find", "start"]

LIFETIME = timedelta(hours=36)


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed-in browser: who it acts as, and the CSRF token its forms must carry."""

    principal: Principal
    csrf: str


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def start(session: Session, token: str, *, now: datetime | None = None
          ) -> tuple[str, Signed]:
    """A new session for ``token``: the id to set as the cookie, and who it signs in.

    ``auth.InvalidTokenError`` (with the reason in words) when the token stands for
    nobody. Expired sessions of every token are deleted on the way.
    """
    now = _now(now)
    principal = auth.verify(session, token, now=now)
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(WebSession(id_hash=_hash(session_id), token_id=principal.token_id, csrf=csrf,
                           created_at=now, expires_at=now + LIFETIME))
    return session_id, Signed(principal, csrf)


def find(session: Session, session_id: str, *, now: datetime | None = None
         ) -> Signed | None:
    """Who the session ``session_id`` signs in, or None: unknown, expired, or its token
    was revoked."""
    now = _now(now)
    row = session.execute(
        select(WebSession, ApiToken).join(ApiToken, ApiToken.id == WebSession.token_id)
        .where(WebSession.id_hash == _hash(session_id))
    ).first()
    if row is None:
        return None
    web, token = row
    if web.expires_at <= now or token.revoked_at is not None:
        return None
    return Signed(Principal(token.id, token.name, cast(Scope, token.scope)), web.csrf)


def end(session: Session, session_id: str) -> None:
    """Sign the session out (nothing happens for an unknown one)."""
    session.execute(delete(WebSession).where(WebSession.id_hash == _hash(session_id)))


def csrf_matches(expected: str, given: str | None) -> bool:
    """Whether a form carried the session's CSRF token (compared in constant time)."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
