"""API tokens: create, verify, list, revoke. Who may call the REST API, and for what.

A token is ``lw_`` and 43 URL-safe characters: 256 random bits from ``secrets``. It is
shown once, when created; the database keeps its SHA-256 (a salted slow hash protects
passwords people choose; a random 256-bit token has nothing to guess, so a plain hash is
the right tool) and its first ``PREFIX_LENGTH`` characters, which are not secret: they name
the token in listings and find its row, and the hashes are then compared in constant time.

Scopes, weakest first (``TOKEN_SCOPES``): ``read`` (every GET), ``write`` (also changes:
acknowledge, resolve), ``admin`` (also the tokens themselves). Each allows what the ones
before it allow.

Functions take the caller's ``Session`` and never commit, like ``aggregator.tickets``;
creating and revoking write their audit entry in that same session.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator import audit
from aggregator.db import TOKEN_NAME_LENGTH, TOKEN_SCOPES, ApiToken
from aggregator.errors import AggregatorError

__all__ = [
    "NAME_PATTERN",
    "PREFIX_LENGTH",
    "TOKEN_PATTERN",
    "TOUCH_INTERVAL",
    "AuthError",
    "InvalidTokenError",
    "Principal",
    "Scope",
    "TokenNameTakenError",
    "TokenNotFoundError",
    "allows",
    "count_active",
    "create_token",
    "find_token",
    "hash_token",
    "list_tokens",
    "new_secret",
    "revoke_token",
    "verify",
]

Scope = Literal["read", "write", "admin"]

_MARK = "lw_"
TOKEN_PATTERN = re.compile(r"lw_[A-Za-z0-9_-]{43}")
PREFIX_LENGTH = len(_MARK) + 8
# Starts with a letter, so a name is never taken for an id (``token revoke 3``).
NAME_PATTERN = rf"^[A-Za-z][A-Za-z0-9._@+-]{{0,{TOKEN_NAME_LENGTH - 1}}}$"
_NAME = re.compile(NAME_PATTERN)
# last_used_at is written at most this often per token: a read-only request must not
# become a write each time.
TOUCH_INTERVAL = timedelta(minutes=1)


class AuthError(AggregatorError):
    """A token operation that cannot be done, or a token that is not accepted."""


class InvalidTokenError(AuthError):
    """The presented token is malformed, unknown or revoked (the message says which)."""


class TokenNotFoundError(AuthError):
    """No token has this id, or no active token has this name."""


class TokenNameTakenError(AuthError):
    """An active token already has this name (revoke it first, or choose another)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a verified token stands for."""

    token_id: int
    name: str
    scope: Scope

    def allows(self, needed: Scope) -> bool:
        return allows(self.scope, needed)

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(self.name, self.token_id)


def allows(have: str, needed: str) -> bool:
    """Whether scope ``have`` covers ``needed`` (admin > write > read).

    >>> allows("admin", "write"), allows("write", "write"), allows("read", "write")
    (True, True, False)
    """
    return TOKEN_SCOPES.index(have) >= TOKEN_SCOPES.index(needed)


def new_secret() -> str:
    """A fresh token: ``lw_`` and 256 random bits, URL-safe base64."""
    return _MARK + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 of a token, as stored (64 hex digits)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"token name {name!r}: 1 to {TOKEN_NAME_LENGTH} characters, a letter first, then "
            "letters, digits and . _ @ + -"
        )


def _check_scope(scope: str) -> Scope:
    if scope not in TOKEN_SCOPES:
        raise ValueError(f"scope {scope!r}: one of {', '.join(TOKEN_SCOPES)}")
    return cast(Scope, scope)


def _active(session: Session, name: str) -> ApiToken | None:
    query = select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    return session.scalars(query).first()


def create_token(
    session: Session, name: str, scope: str, actor: audit.Actor, *, now: datetime | None = None
) -> tuple[ApiToken, str]:
    """A new token of ``scope`` named ``name``, made by ``actor``: its row, and the token
    itself, which nothing can show again.

    ``ValueError`` for a name or scope outside the rules; ``TokenNameTakenError`` if an
    active token has the name.
    """
    _check_name(name)
    checked = _check_scope(scope)
    if _active(session, name) is not None:
        raise TokenNameTakenError(f"an active token is already named {name!r}: revoke it "
                                  "first, or choose another name")
    now = _now(now)
    secret = new_secret()
    row = ApiToken(name=name, scope=checked, prefix=secret[:PREFIX_LENGTH],
                   token_hash=hash_token(secret), created_at=now, created_by=actor.name)
    try:
        # A savepoint: losing a race for the name rolls back this insert only.
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:
        raise TokenNameTakenError(f"an active token is already named {name!r}") from exc
    audit.record(session, actor, "create", "token", row.id,
                 {"name": name, "scope": checked, "prefix": row.prefix}, now=now)
    return row, secret


def verify(session: Session, token: str, *, now: datetime | None = None) -> Principal:
    """The caller ``token`` stands for; ``InvalidTokenError`` if it stands for nobody.

    Records the use in ``last_used_at`` (at most once per ``TOUCH_INTERVAL``; the caller
    commits).
    """
    if not TOKEN_PATTERN.fullmatch(token):
        raise InvalidTokenError("this is not a linewatch API token (lw_ and 43 characters)")
    digest = hash_token(token)
    query = select(ApiToken).where(ApiToken.prefix == token[:PREFIX_LENGTH])
    match = None
    for row in session.scalars(query):
        # Every candidate is compared, in constant time each.
        if hmac.compare_digest(row.token_hash, digest):
            match = row
    if match is None:
        raise InvalidTokenError("unknown API token")
    if match.revoked_at is not None:
        raise InvalidTokenError(f"API token {match.name!r} ({match.prefix}...) was revoked")
    now = _now(now)
    if match.last_used_at is None or now - match.last_used_at >= TOUCH_INTERVAL:
        match.last_used_at = now
    return Principal(match.id, match.name, _check_scope(match.scope))


def list_tokens(session: Session, *, revoked: bool = True) -> list[ApiToken]:
    """Every token by id (without the revoked ones unless ``revoked``)."""
    query = select(ApiToken).order_by(ApiToken.id)
    if not revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return list(session.scalars(query))


def find_token(session: Session, ref: int | str) -> ApiToken:
    """The token with id ``ref`` (an int, or a string of digits), else the active token
    named ``ref``; ``TokenNotFoundError`` if there is none."""
    if isinstance(ref, int) or ref.isdigit():
        row = session.get(ApiToken, int(ref)) if int(ref) < 2**31 else None
        if row is None:
            raise TokenNotFoundError(f"no token {ref}")
        return row
    row = _active(session, ref)
    if row is None:
        raise TokenNotFoundError(f"no active token named {ref!r}")
    return row


def revoke_token(
    session: Session, ref: int | str, actor: audit.Actor, *, now: datetime | None = None
) -> tuple[ApiToken, bool]:
    """Revoke the token ``ref`` names (see ``find_token``): it is refused from now on.

    Returns the row and whether it was revoked now (False: it already was; nothing changes
    and nothing is recorded).
    """
    row = find_token(session, ref)
    if row.revoked_at is not None:
        return row, False
    now = _now(now)
    row.revoked_at = now
    audit.record(session, actor, "revoke", "token", row.id,
                 {"name": row.name, "scope": row.scope, "prefix": row.prefix}, now=now)
    return row, True


def count_active(session: Session) -> int:
    """How many tokens are not revoked."""
    query = select(func.count()).select_from(ApiToken).where(ApiToken.revoked_at.is_(None))
    return int(session.scalar(query) or 0)
