"""API tokens, for admins: create (the token is in the answer, once), list (never a
secret), revoke. ``linewatch token create|list|revoke`` does the same from a shell."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator import auth
from aggregator.api.deps import SessionDep
from aggregator.api.params import TokenId
from aggregator.api.responses import AUTH, BAD_BODY, DB_DOWN, TOKEN_CONFLICT, TOKEN_NOT_FOUND
from aggregator.api.schemas import TokenCreatedOut, TokenIn, TokenOut
from aggregator.api.security import AdminToken

__all__ = ["create_token", "list_tokens", "revoke_token", "router"]

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=AUTH | DB_DOWN)

@router.post("", status_code=201, responses=TOKEN_CONFLICT | BAD_BODY)
def create_token(body: TokenIn, session: SessionDep, caller: AdminToken) -> TokenCreatedOut:
    """A new token, made by the caller (its name is the new token's ``created_by``); the
    answer holds the token itself, which nothing shows again. 409 if an active token has
    the name."""
    row, secret = auth.create_token(session, body.name, body.scope, caller.actor)
    session.commit()
    return TokenCreatedOut.model_validate(
        {**TokenOut.model_validate(row).model_dump(), "token": secret}
    )


@router.get("")
def list_tokens(session: SessionDep, _caller: AdminToken) -> list[TokenOut]:
    """Every token, revoked ones too, by id; never a secret."""
    return [TokenOut.model_validate(t) for t in auth.list_tokens(session)]


@router.delete("/{token_id}", responses=TOKEN_NOT_FOUND)
def revoke_token(token_id: TokenId, session: SessionDep, caller: AdminToken) -> TokenOut:
    """Revoke a token: refused from now on. It stays listed, with ``revoked_at``;
    revoking it again changes nothing."""
    row, _ = auth.revoke_token(session, token_id, caller.actor)
    session.commit()
    return TokenOut.model_validate(row)
