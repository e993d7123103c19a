"""API tokens and the audit log on SQLite in tmp_path (no servers): what is stored, what is
accepted, scopes, names, revocation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from aggregator import audit, auth
from aggregator.auth import InvalidTokenError, TokenNameTakenError, TokenNotFoundError
from aggregator.db import ApiToken, AuditEntry, SessionFactory, open_engine, open_sessions

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADMIN = audit.Actor("root-admin", 1)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[SessionFactory]:
    engine = open_engine(f"sqlite:///{tmp_path}/auth.db")
    yield open_sessions(engine)
    engine.dispose()


def create(sessions: SessionFactory, name: str, scope: str = "write") -> tuple[int, str]:
    with sessions() as session:
        row, token = auth.create_token(session, name, scope, ADMIN, now=NOW)
        session.commit()
        return row.id, token


def test_a_token_is_256_random_bits_and_only_its_hash_is_stored(
    sessions: SessionFactory,
) -> None:
    token_id, token = create(sessions, "alice")
    assert auth.TOKEN_PATTERN.fullmatch(token) and len(token) == 46
    assert len({auth.new_secret() for _ in range(1000)}) == 1000
    with sessions() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert row.prefix == token[: auth.PREFIX_LENGTH] == token[:11]
        assert (row.name, row.scope, row.created_by, row.created_at) == (
            "alice", "write", "root-admin", NOW)
        assert row.last_used_at is None and row.revoked_at is None
        # Nowhere in the database, in any table, is the token itself.
        dump = "\n".join(session.connection().connection.driver_connection.iterdump())
    assert token not in dump and token[auth.PREFIX_LENGTH:] not in dump


def test_verify_accepts_the_token_and_nothing_else(sessions: SessionFactory) -> None:
    token_id, token = create(sessions, "alice", "admin")
    with sessions() as session:
        assert auth.verify(session, token) == auth.Principal(token_id, "alice", "admin")
        for wrong, why in (
            ("", "not a linewatch API token"),
            ("Bearer " + token, "not a linewatch API token"),
            (token + "x", "not a linewatch API token"),
            (token[:-1] + ("A" if token[-1] != "A" else "B"), "unknown API token"),
            (auth.new_secret(), "unknown API token"),
            (token[:3] + token[3:].swapcase(), "API token"),
        ):
            with pytest.raises(InvalidTokenError, match=why):
                auth.verify(session, wrong)


def test_tokens_sharing_a_prefix_are_told_apart_by_their_hash(sessions: SessionFactory) -> None:
    _, token = create(sessions, "alice", "read")
    with sessions() as session:
        # Another row with the same (non-secret) prefix, as a collision would make.
        impostor = token[: auth.PREFIX_LENGTH] + "x" * (len(token) - auth.PREFIX_LENGTH)
        session.add(ApiToken(name="mallory", scope="admin", prefix=token[: auth.PREFIX_LENGTH],
                             token_hash=auth.hash_token(impostor), created_at=NOW,
                             created_by="test"))
        session.commit()
        assert auth.verify(session, token).name == "alice"
        assert auth.verify(session, impostor).name == "mallory"


def test_last_use_is_recorded_at_most_once_a_minute(sessions: SessionFactory) -> None:
    token_id, token = create(sessions, "alice")

    def last_used(at: datetime) -> datetime | None:
        with sessions() as session:
            auth.verify(session, token, now=at)
            session.commit()
            row = session.get(ApiToken, token_id)
            assert row is not None
            return row.last_used_at

    assert last_used(NOW) == NOW
    assert last_used(NOW + timedelta(seconds=59)) == NOW
    assert last_used(NOW + timedelta(seconds=60)) == NOW + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("have", "allowed"),
    [("read", {"read"}), ("write", {"read", "write"}), ("admin", {"read", "write", "admin"})],
)
def test_each_scope_allows_the_weaker_ones(have: str, allowed: set[str]) -> None:
    assert {need for need in ("read", "write", "admin") if auth.allows(have, need)} == allowed


def test_names_follow_the_rules_and_are_unique_among_active_tokens(
    sessions: SessionFactory,
) -> None:
    for name in ("alice", "ci-bot.line3", "a@plant1+night_shift", "x" * 64):
        create(sessions, name)
    with sessions() as session:
        for name in ("", "1bob", "42", "-bob", "bob smith", "bob\n", "x" * 65, "bøb"):
            with pytest.raises(ValueError, match="token name"):
                auth.create_token(session, name, "read", ADMIN)
        with pytest.raises(ValueError, match="scope"):
            auth.create_token(session, "carol", "root", ADMIN)
        with pytest.raises(TokenNameTakenError):
            auth.create_token(session, "alice", "read", ADMIN)


def test_the_database_keeps_active_names_unique_too(sessions: SessionFactory) -> None:
    create(sessions, "alice")
    with sessions() as session, pytest.raises(Exception, match="UNIQUE"):
        session.add(ApiToken(name="alice", scope="read", prefix="lw_xxxxxxxx",
                             token_hash="0" * 64, created_at=NOW, created_by="test"))
        session.commit()


def test_a_revoked_token_is_refused_and_its_name_can_be_given_again(
    sessions: SessionFactory,
) -> None:
    first_id, first = create(sessions, "alice")
    with sessions() as session:
        row, now = auth.revoke_token(session, "alice", audit.Actor("bob", 2), now=NOW)
        session.commit()
        assert (row.id, now, row.revoked_at) == (first_id, True, NOW)
        with pytest.raises(InvalidTokenError, match="'alice' .* was revoked"):
            auth.verify(session, first)
        # Revoking again (by id now) changes and records nothing.
        again, now = auth.revoke_token(session, str(first_id), ADMIN)
        assert (again.revoked_at, now) == (NOW, False)
        with pytest.raises(TokenNotFoundError, match="no active token named 'alice'"):
            auth.revoke_token(session, "alice", ADMIN)
    second_id, second = create(sessions, "alice")
    with sessions() as session:
        assert auth.verify(session, second).token_id == second_id != first_id
        assert auth.find_token(session, "alice").id == second_id
        assert auth.count_active(session) == 1
        assert [t.id for t in auth.list_tokens(session)] == [first_id, second_id]
        assert [t.id for t in auth.list_tokens(session, revoked=False)] == [second_id]
        for missing in (999, "999", "99999999999999999999", "nobody"):
            with pytest.raises(TokenNotFoundError):
                auth.find_token(session, missing)


def test_creating_and_revoking_are_in_the_audit_log(sessions: SessionFactory) -> None:
    token_id, _ = create(sessions, "alice", "read")
    with sessions() as session:
        auth.revoke_token(session, token_id, audit.Actor("bob", 7), now=NOW + timedelta(hours=1))
        session.commit()
        entries = audit.history(session, "token", token_id)
        assert [(e.actor, e.token_id, e.action, e.at) for e in entries] == [
            ("root-admin", 1, "create", NOW), ("bob", 7, "revoke", NOW + timedelta(hours=1))]
        assert entries[0].detail == {"name": "alice", "scope": "read",
                                     "prefix": entries[0].detail["prefix"]}


def test_an_audit_entry_commits_or_rolls_back_with_its_change(sessions: SessionFactory) -> None:
    with sessions() as session:
        audit.record(session, ADMIN, "resolve", "ticket", 17, {"outcome": "other"}, now=NOW)
        session.execute(text("SELECT 1"))
        session.rollback()
        assert session.scalars(select(AuditEntry)).all() == []
        audit.record(session, ADMIN, "resolve", "ticket", 17, {"outcome": "other"}, now=NOW)
        session.commit()
        (entry,) = audit.history(session, "ticket", "17")
        assert (entry.actor, entry.subject_type, entry.subject_id) == ("root-admin", "ticket", "17")


def test_a_command_is_recorded_as_its_user() -> None:
    actor = audit.cli_actor()
    assert actor.name.startswith("cli:") and actor.token_id is None
