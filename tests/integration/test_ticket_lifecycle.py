"""The ticket lifecycle through the REST API, on SQLite and PostgreSQL (issue #10):
acknowledge, assign, notes, resolve with an outcome and a failure time, reopen (and the
one-open-ticket rule), failures reported without a ticket, paged lists with time filters,
and the audit trail of every change.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aggregator_support import (
    MODEL,
    T0,
    Publisher,
    api_token,
    bearer,
    data_topic,
    drift_events,
    drop_schema,
    payload,
    predictions,
    start_service,
    store_settings,
    wait_until,
)
from servers import free_port

from aggregator import audit, tickets
from aggregator.db import AgentRecord
from aggregator.server import ServerThread
from contract.wire import Status, encode

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
EVIDENCE = {"k": 3, "n": 5, "scores": [
    {"window_end": (NOW - timedelta(hours=2)).isoformat(), "score": 0.9, "alert": True}]}


class Api:
    """A running aggregator, its write and read clients, and a way to open tickets."""

    def __init__(self, tmp_path: Path, **changes: Any) -> None:
        self.broker_port = free_port()
        self.server: ServerThread = start_service(store_settings(
            tmp_path, embedded_broker_port=self.broker_port, http_port=0, **changes))
        self.write = httpx.Client(base_url=self.server.url, timeout=10,
                                  headers=bearer(api_token(self.server, "write", "alice")))
        self.read = httpx.Client(base_url=self.server.url, timeout=10,
                                 headers=bearer(api_token(self.server, "read", "viewer")))

    @property
    def sessions(self) -> Any:
        return self.server.app.state.session_factory

    def open(self, asset: str, *, kind: tickets.Kind = "maintenance", site: str = "plant1",
             line: str = "line3", at: datetime = NOW) -> int:
        subject = tickets.Subject(asset=asset, site=site, line=line, agent="gw-1",
                                  model_name="bearing-gbt", model_version="1.2.0",
                                  threshold=0.7)
        with self.sessions() as session:
            ticket, opened = tickets.open_or_escalate(session, subject, kind, EVIDENCE, now=at)
            session.commit()
            assert ticket is not None and opened
            return ticket.id

    def history(self, ticket_id: int) -> list[tuple[str, str, dict[str, Any]]]:
        entries = self.read.get(f"/tickets/{ticket_id}/history").json()
        return [(e["actor"], e["action"], e["detail"]) for e in entries]

    def close(self) -> None:
        self.write.close()
        self.read.close()
        self.server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    changes: dict[str, Any] = {}
    if request.param == "postgresql":
        changes = {"db_url": request.getfixturevalue("postgres_url")}
    service = Api(tmp_path, **changes)
    try:
        yield service
    finally:
        service.close()
        if "db_url" in changes:
            drop_schema(changes["db_url"])


def test_acknowledge_assign_note_resolve_with_failure_time(api: Api) -> None:
    tid = api.open("pump-1")
    url = f"/tickets/{tid}"
    assert api.write.post(f"{url}/ack").status_code == 200
    assigned = api.write.post(f"{url}/assign", json={"assignee": "Bob Müller"})
    assert (assigned.status_code, assigned.json()["assignee"]) == (200, "Bob Müller")
    assert api.write.post(f"{url}/assign", json={"assignee": "Bob Müller"}).status_code == 200
    note = api.write.post(f"{url}/notes", json={"text": "bearing noisy\n\tcage worn"})
    assert note.status_code == 201
    assert (note.json()["author"], note.json()["text"]) == ("alice", "bearing noisy\n\tcage worn")
    failed_at = (NOW - timedelta(minutes=30)).isoformat()
    resolved = api.write.post(f"{url}/resolve", json={
        "outcome": "confirmed_failure", "note": "replaced", "failed_at": failed_at})
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert (body["status"], body["outcome"], body["note"]) == ("resolved", "confirmed_failure",
                                                               "replaced")
    assert datetime.fromisoformat(body["failed_at"]) == NOW - timedelta(minutes=30)
    assert [n["text"] for n in body["notes"]] == ["bearing noisy\n\tcage worn"]
    # A note is welcome after the resolution; an assignment is not.
    assert api.write.post(f"{url}/notes", json={"text": "photo in the log"}).status_code == 201
    refused = api.write.post(f"{url}/assign", json={"assignee": None})
    assert refused.status_code == 409 and "reopen it" in refused.json()["detail"]

    assert api.history(tid) == [
        ("alice", "acknowledge", {"from": "open", "to": "acknowledged"}),
        ("alice", "assign", {"from": None, "to": "Bob Müller"}),  # the second: no change
        ("alice", "note", {"text": "bearing noisy\n\tcage worn"}),
        ("alice", "resolve", {"from": "acknowledged", "to": "resolved",
                              "outcome": "confirmed_failure", "note": "replaced",
                              "failed_at": datetime.fromisoformat(failed_at).isoformat()}),
        ("alice", "note", {"text": "photo in the log"}),
    ]
    got = api.read.get(url).json()
    assert [n["text"] for n in got["notes"]] == ["bearing noisy\n\tcage worn", "photo in the log"]


def test_every_outcome_a_person_may_give(api: Api) -> None:
    for outcome in ("confirmed_failure", "preventive_action", "no_fault_found",
                    "sensor_fault", "other"):
        tid = api.open(f"pump-{outcome}")
        done = api.write.post(f"/tickets/{tid}/resolve", json={"outcome": outcome})
        assert (done.status_code, done.json()["outcome"]) == (200, outcome), done.text
    tid = api.open("pump-x")
    for body in ({"outcome": "superseded"}, {"outcome": "maybe"},
                 {"outcome": "preventive_action", "failed_at": "2026-03-01T00:00:00Z"},
                 {"outcome": "confirmed_failure", "failed_at": "2026-03-01T00:00:00"}):
        assert api.write.post(f"/tickets/{tid}/resolve", json=body).status_code == 422, body
    for body in ({"assignee": ""}, {"assignee": "   "}, {"assignee": "a\nb"}, {},
                 {"assignee": "x" * 129}):
        assert api.write.post(f"/tickets/{tid}/assign", json=body).status_code == 422, body
    for body in ({"text": ""}, {"text": " \n\t"}, {"text": "nul\x00"}, {"text": "x" * 4001}):
        assert api.write.post(f"/tickets/{tid}/notes", json=body).status_code == 422, body
    assert api.read.get(f"/tickets/{tid}").json()["status"] == "open"
    assert api.history(tid) == []


def test_reopen_and_the_one_open_ticket_rule(api: Api) -> None:
    first = api.open("pump-1", at=NOW - timedelta(days=2))
    url = f"/tickets/{first}"
    not_resolved = api.write.post(f"{url}/reopen")
    assert not_resolved.status_code == 409 and "not resolved" in not_resolved.json()["detail"]
    api.write.post(f"{url}/resolve", json={"outcome": "no_fault_found", "note": "fine"})
    reopened = api.write.post(f"{url}/reopen", json={"note": "failed the next day"})
    assert reopened.status_code == 200, reopened.text
    body = reopened.json()
    assert (body["status"], body["outcome"], body["note"], body["resolved_at"]) == (
        "open", None, None, None)
    (_, action, detail) = api.history(first)[-1]
    assert (action, detail["was"]["outcome"], detail["was"]["note"], detail["note"]) == (
        "reopen", "no_fault_found", "fine", "failed the next day")

    # One non-resolved ticket per (site, asset, kind): resolve, let a new one open, then
    # reopening the first is a 409 that names the second; nothing changes.
    api.write.post(f"{url}/resolve", json={"outcome": "no_fault_found"})
    second = api.open("pump-1", at=NOW - timedelta(days=1))
    before = api.read.get(url).json()
    conflict = api.write.post(f"{url}/reopen")
    assert conflict.status_code == 409
    assert f"maintenance ticket {second} is open for pump-1 at plant1" in \
        conflict.json()["detail"]
    assert api.read.get(url).json() == before
    # Another kind, or another site's asset of the same name, is no conflict.
    sensor = api.open("pump-2", kind="sensor")
    api.write.post(f"/tickets/{sensor}/resolve", json={"outcome": "other"})
    api.open("pump-2")
    api.open("pump-2", kind="sensor", site="plant2")
    assert api.write.post(f"/tickets/{sensor}/reopen").status_code == 200
    # Superseded by the aggregator: not for a person to reopen.
    with api.sessions() as session:
        ticket = tickets.get(session, api.open("pump-3"))
        tickets.supersede(session, ticket, "it was a sensor fault")
        session.commit()
        superseded = ticket.id
    refused = api.write.post(f"/tickets/{superseded}/reopen")
    assert refused.status_code == 409 and "superseded" in refused.json()["detail"]
    assert api.write.post("/tickets/999999/reopen").status_code == 404


def test_lists_are_paged_and_filtered_by_time(api: Api) -> None:
    ids = [api.open(f"pump-{i}", at=NOW - timedelta(hours=10 - i)) for i in range(7)]
    for tid in ids[:3]:
        api.write.post(f"/tickets/{tid}/resolve", json={"outcome": "other"})
    page = api.read.get("/tickets", params={"limit": 3})
    assert [t["id"] for t in page.json()] == ids[::-1][:3]
    assert page.headers["x-total-count"] == "7"
    nxt = page.links["next"]["url"]
    assert "prev" not in page.links
    page2 = api.read.get(nxt)
    assert [t["id"] for t in page2.json()] == ids[::-1][3:6]
    assert "offset=0" in page2.links["prev"]["url"] and "limit=3" in page2.links["next"]["url"]
    last = api.read.get(page2.links["next"]["url"])
    assert [t["id"] for t in last.json()] == [ids[0]] and "next" not in last.links

    def listed(**params: str) -> list[int]:
        return [t["id"] for t in api.read.get("/tickets", params=params).json()]

    cut = (NOW - timedelta(hours=6)).isoformat()
    assert listed(opened_since=cut) == ids[::-1][:3]
    assert listed(opened_until=cut) == ids[3::-1]
    assert listed(opened_since=cut, opened_until=cut) == []  # an empty range: no items
    assert sorted(listed(resolved_since=(NOW - timedelta(hours=12)).isoformat())) == ids[:3]
    assert listed(resolved_until=(NOW - timedelta(hours=12)).isoformat()) == []
    many = api.read.get("/tickets", params={"status": "open", "limit": 2, "offset": 1})
    assert many.headers["x-total-count"] == "4"
    assert [t["id"] for t in many.json()] == ids[::-1][1:3]
    for bad in ({"limit": 0}, {"offset": -1}, {"opened_since": "yesterday"}):
        assert api.read.get("/tickets", params=bad).status_code == 422, bad


def test_failures_without_a_ticket(api: Api) -> None:
    with api.sessions() as session:
        session.add(AgentRecord(agent_id="gw-1", site="plant1", line="line3", state="online",
                                model_name="bearing-gbt", model_version="1.2.0",
                                predictions_count=0))
        session.add(AgentRecord(agent_id="gw-9", site="plant1", line="line9", state="online",
                                model_name="a", model_version="1", predictions_count=0))
        session.add(AgentRecord(agent_id="gw-8", site="plant1", line="line9", state="online",
                                model_name="b", model_version="1", predictions_count=0))
        session.commit()
    day = timedelta(days=1)
    reported = api.write.post("/failures", json={
        "site": "plant1", "line": "line3", "asset": "pump-7",
        "at": (NOW - 3 * day).isoformat(), "note": "seized overnight"})
    assert reported.status_code == 201, reported.text
    one = reported.json()
    assert (one["model_name"], one["model_version"], one["reported_by"]) == (
        "bearing-gbt", "1.2.0", "alice")  # the one model its line runs
    two = api.write.post("/failures", json={
        "site": "plant1", "line": "line9", "asset": "press-1", "at": (NOW - day).isoformat()
    }).json()
    assert (two["model_name"], two["model_version"]) == (None, None)  # two models there
    three = api.write.post("/failures", json={
        "site": "plant1", "line": "line9", "asset": "press-2", "at": (NOW - 2 * day).isoformat(),
        "model": {"name": "b", "version": "1"}}).json()
    assert (three["model_name"], three["model_version"]) == ("b", "1")

    # A failure while a maintenance ticket of the asset was open was not missed.
    tid = api.open("pump-8", at=NOW - 5 * day)
    ticketed = api.write.post("/failures", json={
        "site": "plant1", "line": "line3", "asset": "pump-8", "at": (NOW - 4 * day).isoformat()})
    assert ticketed.status_code == 409
    assert f"resolve ticket {tid} as confirmed_failure" in ticketed.json()["detail"]
    before = api.write.post("/failures", json={  # before the ticket opened: missed
        "site": "plant1", "line": "line3", "asset": "pump-8", "at": (NOW - 6 * day).isoformat()})
    assert before.status_code == 201

    listed = api.read.get("/failures", params={"limit": 2})
    assert [f["id"] for f in listed.json()] == [two["id"], three["id"]]
    assert listed.headers["x-total-count"] == "4" and "next" in listed.links
    assert [f["id"] for f in api.read.get("/failures", params={
        "since": (NOW - 3 * day).isoformat(), "until": (NOW - day).isoformat()}).json()] == [
        three["id"], one["id"]]
    assert [f["asset"] for f in api.read.get("/failures", params={"asset": "pump-7"}).json()
            ] == ["pump-7"]
    with api.sessions() as session:
        (entry,) = audit.history(session, "failure", one["id"])
        assert (entry.actor, entry.action, entry.detail["asset"], entry.detail["note"]) == (
            "alice", "report", "pump-7", "seized overnight")
    for bad in ({"site": "plant1", "line": "line3", "asset": "p"},  # when?
                {"site": "plant1", "line": "line3", "asset": "p", "at": "2026-03-01T00:00:00Z",
                 "model": {"name": "x"}},
                {"site": "plant1", "asset": "p", "at": "2026-03-01T00:00:00Z"}):
        assert api.write.post("/failures", json=bad).status_code == 422, bad


def test_asset_history_scores_and_events(api: Api) -> None:
    with Publisher("127.0.0.1", api.broker_port, data_topic("gw-1")) as pub:
        pub.publish(encode(Status(schema=1, agent="gw-1", state="online", ts=T0,
                                  model=MODEL)),
                    data_topic("gw-1", "status"))
        pub.publish(payload("gw-1", 0, predictions("pump-1", [0.1, 0.2, 0.9, 0.95, 0.99])))
        pub.publish(payload("gw-1", 1, drift_events("pump-1", 2)), data_topic("gw-1", "drift"))
    wait_until(lambda: len(api.read.get("/assets/pump-1/scores").json()) == 5, 10,
               what="5 scores")
    wait_until(lambda: len(api.read.get("/assets/pump-1/events").json()["drift"]) == 2, 10,
               what="2 events")
    page = api.read.get("/assets/pump-1/scores", params={"limit": 2, "site": "plant1"})
    assert [p["score"] for p in page.json()] == [0.1, 0.2]
    page2 = api.read.get(page.links["next"]["url"])
    assert [p["score"] for p in page2.json()] == [0.9, 0.95]
    page3 = api.read.get(page2.links["next"]["url"])
    assert [p["score"] for p in page3.json()] == [0.99] and "next" not in page3.links
    assert page.json()[0]["model_name"] == "bearing-gbt"
    assert api.read.get("/assets/pump-1/scores", params={"site": "plant2"}).json() == []
    until = (T0 + timedelta(minutes=3)).isoformat()
    assert [p["score"] for p in api.read.get(
        "/assets/pump-1/scores", params={"until": until}).json()] == [0.1, 0.2]

    events = api.read.get("/assets/pump-1/events", params={"site": "plant1"}).json()
    assert events["asset"] == "pump-1" and events["site"] == "plant1"
    assert [t["kind"] for t in events["tickets"]] == ["maintenance"]
    assert [e["detector"] for e in events["drift"]] == ["range", "range"]
    only_first = api.read.get("/assets/pump-1/events", params={
        "until": (T0 + timedelta(seconds=30)).isoformat()}).json()
    assert len(only_first["drift"]) == 1
    assert api.read.get("/assets/pump%2F1/scores").status_code in (404, 422)
