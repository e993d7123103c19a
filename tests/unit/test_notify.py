"""Notifications without servers: what is recorded for a ticket change (one announcement
per incident, updates, past incidents suppressed), the bodies, the retry schedule and the
target settings."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator import audit, tickets
from aggregator.db import Notification, NotificationAttempt, open_engine, open_sessions
from aggregator.notify import bodies, intents
from aggregator.notify.targets import TargetConfig
from aggregator.notify.worker import backoff

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SUBJECT = tickets.Subject(asset="pump-1", site="plant1", line="line3", agent="gw-1",
                          model_name="m", model_version="1", threshold=0.7)
TARGETS = (TargetConfig(name="ops", kind="json", url="http://127.0.0.1:9/hook"),
           TargetConfig(name="sensors", kind="slack", url="http://127.0.0.1:9/s",
                        ticket_kinds=["sensor"]))


def evidence(at: datetime) -> dict[str, Any]:
    return {"k": 3, "n": 5, "scores": [
        {"window_end": (at - timedelta(minutes=m)).isoformat(), "score": 0.9, "alert": True}
        for m in (2, 1, 0)]}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database at the newest revision, migrated once: each test works on a copy."""
    path = tmp_path_factory.mktemp("notify") / "t.db"
    open_engine(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture
def session(tmp_path: Path, migrated: Path) -> Iterator[Session]:
    shutil.copy(migrated, tmp_path / "t.db")
    engine = open_engine(f"sqlite:///{tmp_path}/t.db", create=False)
    factory = open_sessions(engine)
    woken: list[int] = []
    intents.install(factory, intents.Policy(
        targets=TARGETS, past_after=timedelta(hours=1),
        escalation_interval=timedelta(minutes=30), andon_kinds=("maintenance",)),
        lambda: woken.append(1))
    with factory() as s:
        yield s
    engine.dispose()


def rows(session: Session, target: str | None = None) -> list[Notification]:
    query = select(Notification).order_by(Notification.id)
    if target is not None:
        query = query.where(Notification.target == target)
    return list(session.scalars(query))


def test_one_announcement_then_rate_limited_updates_then_the_resolution(
        session: Session) -> None:
    ticket, opened = tickets.open_or_escalate(session, SUBJECT, "maintenance", evidence(NOW),
                                              now=NOW)
    assert opened and ticket is not None
    for minutes in (10, 20, 40):  # only the one 30 min after the last notification counts
        at = NOW + timedelta(minutes=minutes)
        tickets.open_or_escalate(session, SUBJECT, "maintenance", evidence(at), now=at)
    tickets.resolve(session, ticket.id, "confirmed_failure", now=NOW + timedelta(hours=2))
    ops = rows(session, "ops")
    assert [(r.event, r.announce) for r in ops] == [
        ("opened", True), ("escalated", False), ("resolved", False)]
    assert {r.incident for r in ops} == {f"linewatch:plant1:ticket-{ticket.id}"}
    assert all(r.status == "pending" for r in ops)
    assert rows(session, "sensors") == []  # wants sensor tickets only
    # The andon: every change of state, never an escalation.
    assert [r.event for r in rows(session, "andon")] == ["opened", "resolved"]


def test_a_past_opening_is_recorded_not_sent_and_a_current_escalation_announces_it(
        session: Session) -> None:
    old = NOW - timedelta(hours=10)
    ticket, _ = tickets.open_or_escalate(session, SUBJECT, "maintenance", evidence(old),
                                         now=NOW)
    assert ticket is not None
    tickets.open_or_escalate(session, SUBJECT, "maintenance",
                             evidence(old + timedelta(minutes=5)), now=NOW)  # still past
    [ops] = rows(session, "ops")
    assert (ops.event, ops.status, ops.last_error) == ("opened", "suppressed",
                                                       "suppressed: past incident")
    [log] = session.scalars(select(NotificationAttempt)).all()
    assert (log.target, log.status, log.attempt) == ("ops", "suppressed: past incident", 0)
    [entry] = audit.history(session, "ticket", ticket.id)
    assert (entry.action, entry.actor) == ("not_notified", "aggregator")
    assert entry.detail["age_s"] == 10 * 3600 and entry.detail["targets"] == ["ops"]
    andon = rows(session, "andon")
    assert [(r.event, r.body["publish_event"]) for r in andon] == [("opened", False)]
    # The alerts go on now: the incident is current, and announced once.
    later = NOW + timedelta(minutes=1)
    tickets.open_or_escalate(session, SUBJECT, "maintenance", evidence(later), now=later)
    assert [(r.event, r.announce, r.status) for r in rows(session, "ops")] == [
        ("opened", True, "suppressed"), ("escalated", True, "pending")]


def test_a_resolution_of_an_incident_nobody_was_told_of_tells_nobody(
        session: Session) -> None:
    ticket, _ = tickets.open_or_escalate(session, SUBJECT, "maintenance",
                                         evidence(NOW - timedelta(days=2)), now=NOW)
    assert ticket is not None
    tickets.resolve(session, ticket.id, "no_fault_found", now=NOW)
    assert [r.status for r in rows(session, "ops")] == ["suppressed"]


def test_a_target_told_of_an_incident_hears_its_reclassification(session: Session) -> None:
    only = intents.Policy(targets=(TargetConfig(name="mech", kind="json", url="http://h/",
                                                ticket_kinds=["maintenance"]),),
                          past_after=timedelta(hours=1), escalation_interval=timedelta(0),
                          andon_kinds=None)
    session.info[intents.POLICY_KEY] = only
    ticket, _ = tickets.open_or_escalate(session, SUBJECT, "maintenance", evidence(NOW),
                                         now=NOW)
    assert ticket is not None
    tickets.reclassify(session, ticket, "sensor", {"conditions": []}, "a sensor fault",
                       now=NOW)
    assert [(r.event, r.body["kind"]) for r in rows(session, "mech")] == [
        ("opened", "maintenance"), ("reclassified", "sensor")]


def test_no_policy_records_nothing(tmp_path: Path, migrated: Path) -> None:
    shutil.copy(migrated, tmp_path / "t.db")
    engine = open_engine(f"sqlite:///{tmp_path}/t.db", create=False)
    with open_sessions(engine)() as session:
        tickets.open_or_escalate(session, SUBJECT, "maintenance", evidence(NOW), now=NOW)
        assert rows(session) == []
    engine.dispose()


TICKET = {"id": 7, "kind": "maintenance", "status": "open", "site": "p1", "line": "l2",
          "asset": "pump-3", "model": {"name": "m", "version": "1"}, "alerts": 3,
          "windows": 5, "max_score": 0.93, "action": None, "outcome": None}


def test_slack_threads_an_update_or_says_update() -> None:
    first = bodies.slack_body("opened", True, "2026-06-01T12:00:00+00:00", TICKET)
    assert first["text"].startswith("maintenance ticket 7 opened") and "thread_ts" not in first
    plain = bodies.slack_body("escalated", False, "t", TICKET)
    assert plain["text"].startswith("update: maintenance ticket 7 escalated")
    threaded = bodies.slack_body("escalated", False, "t", TICKET, channel="C1",
                                 thread_ts="1700.1")
    assert threaded["thread_ts"] == "1700.1" and threaded["channel"] == "C1"
    assert threaded["text"].startswith("maintenance ticket 7 escalated")


def test_teams_gets_an_adaptive_card_naming_the_incident() -> None:
    body = bodies.teams_body("resolved", False, "t", "inc-7", {**TICKET, "outcome": "other"})
    [attachment] = body["attachments"]
    card = attachment["content"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["type"] == "AdaptiveCard" and card["body"][0]["text"].startswith("update:")
    assert card["body"][-1]["text"] == "incident inc-7"


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, 1.5, 10.0) for n in (1, 2, 3, 4, 100)] == [1.5, 3.0, 6.0, 10.0, 10.0]


def test_a_target_reads_its_secret_and_refuses_what_cannot_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "Bearer s3")
    target = TargetConfig(name="a", kind="json", url="https://h/x", secret_header="Authorization",
                          secret_env="HOOK_TOKEN")
    assert target.headers() == {"Authorization": "Bearer s3"}
    (tmp_path / "key").write_text("k1\n")
    assert TargetConfig(name="b", kind="teams", url="https://h/", secret_header="X-Key",
                        secret_file=tmp_path / "key").headers() == {"X-Key": "k1"}
    bad: list[dict[str, Any]] = [
        {"url": "ftp://h/"}, {"url": "https://u:p@h/"}, {"name": "andon"},
        {"secret_header": "Authorization", "secret_env": "NOT_SET_ANYWHERE"},
        {"secret_header": "X-Key", "secret_file": str(tmp_path / "missing")},
        {"secret_env": "HOOK_TOKEN"}, {"kind": "email"},
    ]
    for change in bad:
        with pytest.raises(ValidationError):
            TargetConfig(**({"name": "c", "kind": "json", "url": "https://h/"} | change))
