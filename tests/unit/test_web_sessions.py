"""Web sessions (``aggregator.web.sessions``) on an SQLite database: a session acts as its
token, ends with it, expires, and keeps only the hash of its id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from aggregator import audit, auth
from aggregator.db import WebSession, open_engine, open_sessions
from aggregator.web import sessions

T0 = datetime(2026, 5, 1, 8, tzinfo=UTC)


def test_a_session_stands_for_its_token_until_revoked_expired_or_ended(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/lw.db")
    try:
        with open_sessions(engine)() as db:
            _, token = auth.create_token(db, "alice", "write", audit.Actor("tests"), now=T0)
            _, other = auth.create_token(db, "bob", "read", audit.Actor("tests"), now=T0)
            sid, signed = sessions.start(db, token, now=T0)
            bob, _ = sessions.start(db, other, now=T0)
            db.commit()
            assert (signed.principal.name, signed.principal.scope) == ("alice", "write")
            stored = db.scalars(select(WebSession.id_hash)).all()
            assert sid not in stored and token not in stored and len(stored) == 2

            found = sessions.find(db, sid, now=T0 + timedelta(hours=1))
            assert found == signed
            assert sessions.find(db, sid, now=T0 + sessions.LIFETIME) is None
            assert sessions.find(db, "nonsense", now=T0) is None

            auth.revoke_token(db, "alice", audit.Actor("tests"), now=T0)
            assert sessions.find(db, sid, now=T0) is None
            with pytest.raises(auth.InvalidTokenError, match="'alice'.*revoked"):
                sessions.start(db, token, now=T0)
            assert sessions.find(db, bob, now=T0) is not None
            sessions.end(db, bob)
            assert sessions.find(db, bob, now=T0) is None
            assert sessions.csrf_matches(signed.csrf, signed.csrf)
            assert not sessions.csrf_matches(signed.csrf, None)
            assert not sessions.csrf_matches(signed.csrf, signed.csrf[:-1])
    finally:
        engine.dispose()
