"""The model registry end to end: a real aggregator (uvicorn, SQLite or PostgreSQL), a
real Mosquitto, artifacts uploaded and fetched over HTTP and verified with the public key
the agents trust, assignments received by MQTT subscribers standing in for the agents.

The promotion gate (``aggregator.rollout.gate``) is built elsewhere; here the app's
``registry_judge`` is given chosen verdicts, so the registry's decisions are what is
tested, not the gate's figures.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from aggregator_support import api_token, bearer, broker_settings, drop_schema, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer, free_port
from sqlalchemy import select

from aggregator.db import AuditEntry, Ticket
from aggregator.registry.lifecycle import Question
from aggregator.registry.models import PublishedModel
from aggregator.registry.publisher import ModelPublisher
from aggregator.rollout.gate import Figures, Verdict
from aggregator.server import ServerThread
from aggregator.settings import Settings
from contract import artifact
from contract.wire import Assignment, Status, decode_assignment, encode, topic
from linewatch.registry import keygen, publish

pytestmark = pytest.mark.integration

MODELS = Path(__file__).resolve().parents[2] / "models"
FIGURES = Figures(windows=400, agreement=0.81, score_mad=0.12, candidate_alerts=40,
                  baseline_alerts=12, estimated_f1=0.55, f1_target=0.84, new_drift=2)
FAILING = Verdict(ready=True, passed=False, figures=FIGURES,
                  reasons=("agreement 0.81 with the live version, below 0.95",
                           "estimated F1 0.55, more than 0.05 below the card's 0.84"))
PASSING = Verdict(ready=True, passed=True, reasons=(), figures=FIGURES)
PENDING = Verdict(ready=False, passed=False, reasons=("12 common windows of 200",),
                  figures=FIGURES)


@dataclass
class Judge:
    """Chosen verdicts; remembers what it was asked."""

    verdict: Verdict
    asked: list[Question]

    def __call__(self, _session: Any, question: Question) -> Verdict:
        self.asked.append(question)
        return self.verdict


class Agents:
    """What the agents' command topics carry: every message a subscriber receives."""

    def __init__(self, broker: MosquittoServer, client_id: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("linewatch/v1/+/+/+/cmd/model", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload),
                                  bool(message.retain)))

    def latest(self, agent: str) -> Assignment | None:
        with self._lock:
            mine = [p for t, p, _ in self.messages if t.split("/")[4] == agent]
        return decode_assignment(mine[-1]) if mine and mine[-1] else None

    def count(self, agent: str | None = None, retained: bool | None = None) -> int:
        with self._lock:
            return sum(1 for t, _, r in self.messages
                       if (agent is None or t.split("/")[4] == agent)
                       and (retained is None or r == retained))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/linewatch.db"
        return
    url: str = request.getfixturevalue("postgres_url")
    drop_schema(url)
    yield url
    drop_schema(url)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys")


def registry_settings(tmp_path: Path, broker: MosquittoServer, db_url: str,
                      key: Path | None, port: int) -> Settings:
    return broker_settings(tmp_path, broker, db_url=db_url, http_port=port,
                           signing_key_file=key, public_url=f"http://127.0.0.1:{port}")


@dataclass
class Registry:
    server: ServerThread
    token: str
    judge: Judge

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(self.token), **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def upload(self, model_dir: Path, **params: Any) -> httpx.Response:
        return self.call("POST", "/registry/versions", content=artifact.pack(model_dir),
                         headers={"Content-Type": "application/gzip"}, params=params)

    def assign(self, **body: Any) -> httpx.Response:
        return self.call("POST", "/registry/assignments", json=body)

    def sync(self) -> None:
        self.server.app.state.model_publisher.sync()


def start(settings: Settings, verdict: Verdict = PASSING, token: str | None = None
          ) -> Registry:
    server = ServerThread(settings)
    server.start()
    assert server.app.state.subscriber.wait_ready(10)
    judge = Judge(verdict, [])
    server.app.state.registry_judge = judge
    return Registry(server, token or api_token(server, "admin", "release-manager"), judge)


@pytest.fixture
def registry(tmp_path: Path, mosquitto: MosquittoServer, db_url: str,
             keys: tuple[Path, Path]) -> Iterator[Registry]:
    running = start(registry_settings(tmp_path, mosquitto, db_url, keys[0], free_port()))
    yield running
    running.server.stop()


def version_dir(tmp_path: Path, version: str, source: str = "cmapss_fd001") -> Path:
    """A copy of a shipped model whose card says ``version`` (the card's sha256 covers
    model.onnx, not the card)."""
    out = Path(shutil.copytree(MODELS / source, tmp_path / f"{source}-{version}"))
    card = json.loads((out / "card.json").read_text())
    card["version"] = version
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out


def come_online(broker: MosquittoServer, registry: Registry, *agents: tuple[str, str, str],
                state: str = "online") -> None:
    """The agents' retained status, as a real agent publishes it; waits until stored."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agents-status")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for site, line, agent in agents:
            info = client.publish(topic(site, line, agent, "status"),
                                  encode(Status.build(agent, state)), qos=1, retain=True)
            info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    names = {a for _, _, a in agents}

    def stored() -> bool:
        rows = registry.call("GET", "/agents").json()
        return {r["agent"] for r in rows if r["state"] == state} >= names

    wait_until(stored, what=f"agents {sorted(names)} {state}")


def half_canary(registry: Registry, tmp_path: Path) -> dict[str, Any]:
    """1.0.0 live on line3, then 2.0.0 as canary on half of its agents: the assignment."""
    registry.upload(MODELS / "cmapss_fd001")
    registry.upload(version_dir(tmp_path, "2.0.0"))
    registry.assign(name="cmapss_fd001", version="1.0.0", stage="live",
                    target={"site": "plant1", "line": "line3"})
    made = registry.assign(name="cmapss_fd001", version="2.0.0", stage="canary",
                           target={"site": "plant1", "line": "line3"}, share=0.5)
    assert made.status_code == 201, made.text
    canary: dict[str, Any] = made.json()
    return canary


LINE3 = [("plant1", "line3", "gw-1"), ("plant1", "line3", "gw-2")]
LINE4 = ("plant1", "line4", "gw-9")


def test_upload_list_download_and_verify_with_the_agents_key(
        registry: Registry, keys: tuple[Path, Path], tmp_path: Path) -> None:
    model = MODELS / "cmapss_fd001"
    first = registry.upload(model)
    assert first.status_code == 201, first.text
    version = first.json()["version"]
    assert (version["name"], version["version"]) == ("cmapss_fd001", "1.0.0")
    assert version["uploaded_by"] == "release-manager"
    data = artifact.pack(model)
    assert version["sha256"] == artifact.sha256_bytes(data) and version["size"] == len(data)

    again = registry.upload(model)  # a retried upload changes nothing
    assert again.status_code == 200 and again.json() == {"created": False, "version": version}
    listed = registry.call("GET", "/registry/versions").json()
    assert [(v["name"], v["version"]) for v in listed] == [("cmapss_fd001", "1.0.0")]
    detail = registry.call("GET", "/registry/versions/cmapss_fd001/1.0.0").json()
    assert detail["card"]["sha256"]["model"] == json.loads(
        (model / "card.json").read_text())["sha256"]["model"]
    assert detail["assignments"] == []

    # No token: an agent fetches by URL alone.
    fetched = httpx.get(f"{registry.url}/registry/artifacts/{version['sha256']}")
    assert fetched.status_code == 200 and fetched.content == data
    assert fetched.headers["etag"] == f'"{version["sha256"]}"'
    assert fetched.headers["content-type"] == "application/gzip"
    artifact.verify([keys[1].read_bytes()], fetched.content, name="cmapss_fd001",
                    version="1.0.0", sha256=version["sha256"], signature=version["signature"])
    cached = httpx.get(f"{registry.url}/registry/artifacts/{version['sha256']}",
                       headers={"If-None-Match": fetched.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    assert httpx.get(f"{registry.url}/registry/artifacts/{'0' * 64}").status_code == 404

    with registry.server.app.state.session_factory() as session:
        entries = session.scalars(select(AuditEntry).where(
            AuditEntry.action == "registry.upload")).all()
    assert [(e.actor, e.subject_id) for e in entries] == [
        ("release-manager", "cmapss_fd001@1.0.0")]


def test_the_cli_publishes_a_model_directory(registry: Registry, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from linewatch.cli import main

    status, answer = publish(version_dir(tmp_path, "2.0.0"), registry.url, registry.token)
    assert status == 201 and answer["version"]["version"] == "2.0.0"  # type: ignore[index]
    token_file = tmp_path / "token"
    token_file.write_text(registry.token + "\n")
    args = ["registry", "publish", str(version_dir(tmp_path, "2.1.0")), "--url",
            registry.url, "--token-file", str(token_file)]
    assert main(args) == 0
    assert main(args) == 0  # the same directory again changes nothing
    out = capsys.readouterr().out
    assert "stored: cmapss_fd001 2.1.0" in out and "already stored: cmapss_fd001 2.1.0" in out
    token_file.write_text("lw_not-a-token\n")
    assert main(args) != 0
    assert "401" in capsys.readouterr().err


def problem(response: httpx.Response) -> str:
    """The message of a 422 (FastAPI's body: a list of problems)."""
    (only,) = response.json()["detail"]
    return str(only["msg"])


def test_bad_artifacts_are_refused_naming_the_problem(registry: Registry,
                                                      tmp_path: Path) -> None:
    garbage = registry.call("POST", "/registry/versions", content=b"not a tar",
                            headers={"Content-Type": "application/gzip"})
    assert garbage.status_code == 422 and "not a gzipped tar" in problem(garbage)

    tampered = version_dir(tmp_path, "3.0.0")
    onnx = tampered / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    refused = registry.upload(tampered)
    assert refused.status_code == 422 and "sha256" in problem(refused)

    no_ticket = registry.upload(version_dir(tmp_path, "4.0.0"), answers=999)
    assert no_ticket.status_code == 422 and "no such ticket" in problem(no_ticket)
    assert no_ticket.json()["detail"][0]["loc"] == ["query", "answers"]

    assert registry.upload(MODELS / "cmapss_fd001").status_code == 201
    # Other bytes under a stored name and version: CARD.md changed.
    edited = version_dir(tmp_path, "1.0.0")
    (edited / "CARD.md").write_text("edited")
    conflict = registry.upload(edited)
    assert conflict.status_code == 409 and "a version never changes" in conflict.json()[
        "detail"]
    names = [v["version"] for v in registry.call("GET", "/registry/versions").json()]
    assert names == ["1.0.0"]

    read_only = api_token(registry.server, "read", "viewer")
    assert registry.call("POST", "/registry/versions", content=artifact.pack(edited),
                         headers={"Content-Type": "application/gzip", **bearer(read_only)}
                         ).status_code == 403


def test_without_a_signing_key_the_registry_is_off(tmp_path: Path,
                                                   mosquitto: MosquittoServer) -> None:
    running = start(registry_settings(tmp_path, mosquitto, f"sqlite:///{tmp_path}/off.db",
                                      None, free_port()))
    try:
        answer = running.upload(MODELS / "cmapss_fd001")
        assert answer.status_code == 503
        assert "LINEWATCH_SIGNING_KEY_FILE" in answer.json()["detail"]
        assert running.call("GET", "/registry/versions").json() == []
    finally:
        running.server.stop()


def test_live_on_a_line_reaches_each_of_its_agents_retained(
        registry: Registry, mosquitto: MosquittoServer, keys: tuple[Path, Path]) -> None:
    come_online(mosquitto, registry, *LINE3, LINE4)
    v1 = registry.upload(MODELS / "cmapss_fd001").json()["version"]
    made = registry.assign(name="cmapss_fd001", version="1.0.0", stage="live",
                           target={"site": "plant1", "line": "line3"})
    assert made.status_code == 201, made.text
    assert made.json()["agents"] == ["gw-1", "gw-2"]

    # A subscriber that connects afterwards gets it: the agents that were offline.
    registry.sync()
    late = Agents(mosquitto, "late-agents")
    try:
        wait_until(lambda: late.latest("gw-1") and late.latest("gw-2"), what="assignments")
        for agent in ("gw-1", "gw-2"):
            got = late.latest(agent)
            assert got is not None and got.agent == agent and got.stage == "live"
            assert got.shadow is None
            assert (got.live.name, got.live.version, got.live.sha256) == (
                "cmapss_fd001", "1.0.0", v1["sha256"])
            assert got.live.url == f"{registry.url}/registry/artifacts/{v1['sha256']}"
            data = httpx.get(got.live.url).content
            artifact.verify([keys[1].read_bytes()], data, name=got.live.name,
                            version=got.live.version, sha256=got.live.sha256,
                            signature=got.live.signature)
        assert late.count(retained=True) == 2 and late.latest("gw-9") is None
        assert late.latest("gw-1").id != late.latest("gw-2").id  # type: ignore[union-attr]
    finally:
        late.close()


def test_canary_on_half_of_two_agents_then_rollback(
        registry: Registry, mosquitto: MosquittoServer, tmp_path: Path) -> None:
    come_online(mosquitto, registry, *LINE3)
    agents = Agents(mosquitto, "agents")
    try:
        registry.upload(MODELS / "cmapss_fd001")
        registry.upload(version_dir(tmp_path, "2.0.0"))
        live = registry.assign(name="cmapss_fd001", version="1.0.0", stage="live",
                               target={"site": "plant1", "line": "line3"}).json()
        wait_until(lambda: agents.latest("gw-1") and agents.latest("gw-2"))
        before = {a: agents.latest(a) for a in ("gw-1", "gw-2")}

        canary = registry.assign(name="cmapss_fd001", version="2.0.0", stage="canary",
                                 target={"site": "plant1", "line": "line3"}, share=0.5)
        assert canary.status_code == 201, canary.text
        chosen = canary.json()["agents"]
        assert len(chosen) == 1 and canary.json()["baseline_version"] == "1.0.0"
        (picked,), (other,) = chosen, {"gw-1", "gw-2"} - set(chosen)

        def moved() -> Assignment | None:
            got = agents.latest(picked)
            return got if got is not None and got.stage == "canary" else None

        got = wait_until(moved, what="the canary's assignment")
        assert got.live.version == "2.0.0"
        assert got.shadow is not None and got.shadow.version == "1.0.0"
        registry.sync()
        assert agents.latest(other) == before[other]  # untouched, not even republished
        assert agents.count(other) == 1

        rolled = registry.call("POST", f"/registry/assignments/{canary.json()['id']}/rollback",
                               json={"reason": "operators saw too many alerts"})
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["assignment"]["state"] == "rolled_back"
        assert rolled.json()["ticket"] is None

        def back() -> Assignment | None:
            got = agents.latest(picked)
            return got if got is not None and got.stage == "live" else None

        restored = wait_until(back, what="the previous live version")
        assert restored.live.version == "1.0.0" and restored.shadow is None
        assert restored.id not in (got.id, before[picked].id)  # type: ignore[union-attr]
        again = registry.call("POST", f"/registry/assignments/{canary.json()['id']}/rollback",
                              json={"reason": "twice"})
        assert again.status_code == 409
        detail = registry.call("GET", "/registry/versions/cmapss_fd001/2.0.0").json()
        assert [(a["stage"], a["state"], a["reason"]) for a in detail["assignments"]] == [
            ("canary", "rolled_back", "operators saw too many alerts")]
        assert live["state"] == "active"
    finally:
        agents.close()


def test_promotion_passes_only_through_the_gate(
        registry: Registry, mosquitto: MosquittoServer, tmp_path: Path) -> None:
    come_online(mosquitto, registry, *LINE3)
    registry.upload(MODELS / "cmapss_fd001")
    registry.upload(version_dir(tmp_path, "2.0.0"))
    live = registry.assign(name="cmapss_fd001", version="1.0.0", stage="live",
                           target={"site": "plant1", "line": "line3"}).json()
    shadow = registry.assign(name="cmapss_fd001", version="2.0.0", stage="shadow",
                             target={"site": "plant1", "line": "line3"}).json()
    agents = Agents(mosquitto, "agents")
    try:
        def shadowed() -> bool:
            got = [agents.latest(a) for a in ("gw-1", "gw-2")]
            return all(g is not None and g.shadow is not None and g.shadow.version == "2.0.0"
                       and g.live.version == "1.0.0" for g in got)

        wait_until(shadowed, what="the shadow beside the live version")

        registry.judge.verdict = PENDING
        pending = registry.call("POST", f"/registry/assignments/{shadow['id']}/promote",
                                json={"share": 0.5})
        assert pending.status_code == 409
        assert pending.json()["reasons"] == list(PENDING.reasons)
        assert pending.json()["figures"]["windows"] == 400
        asked = registry.judge.asked[-1]
        assert (asked.candidate.version, asked.baseline.version) == ("2.0.0", "1.0.0")
        assert asked.agents == ("gw-1", "gw-2") and asked.f1_target == pytest.approx(0.8443)

        registry.judge.verdict = PASSING
        canary = registry.call("POST", f"/registry/assignments/{shadow['id']}/promote",
                               json={"share": 1.0})
        assert canary.status_code == 200, canary.text
        new = canary.json()["new_assignment"]
        assert (new["stage"], new["share"], new["agents"]) == ("canary", 1.0, ["gw-1", "gw-2"])

        registry.judge.verdict = FAILING
        refused = registry.call("POST", f"/registry/assignments/{new['id']}/promote")
        assert refused.status_code == 409 and refused.json()["reasons"] == list(
            FAILING.reasons)
        registry.judge.verdict = PASSING
        done = registry.call("POST", f"/registry/assignments/{new['id']}/promote")
        assert done.status_code == 200, done.text
        final = done.json()["new_assignment"]
        assert final["stage"] == "live" and final["previous_id"] == live["id"]

        def everywhere() -> bool:
            got = [agents.latest(a) for a in ("gw-1", "gw-2")]
            return all(g is not None and g.stage == "live" and g.live.version == "2.0.0"
                       and g.shadow is None for g in got)

        wait_until(everywhere, what="version 2 live everywhere")
        states = {a["id"]: a["state"]
                  for a in registry.call("GET", "/registry/assignments").json()}
        assert states == {live["id"]: "superseded", shadow["id"]: "promoted",
                          new["id"]: "promoted", final["id"]: "active"}
        # Each decision kept the gate's verdict.
        detail = registry.call("GET", "/registry/versions/cmapss_fd001/2.0.0").json()
        decisions = {a["id"]: [(f["decision"], f["passed"]) for f in a["figures"]]
                     for a in detail["assignments"]}
        assert decisions[new["id"]] == [("promote", False), ("promote", True)]
    finally:
        agents.close()


def test_a_failing_canary_is_rolled_back_with_a_retraining_ticket(
        registry: Registry, mosquitto: MosquittoServer, tmp_path: Path) -> None:
    come_online(mosquitto, registry, *LINE3)
    agents = Agents(mosquitto, "agents")
    try:
        canary = half_canary(registry, tmp_path)
        (picked,) = canary["agents"]
        wait_until(lambda: (got := agents.latest(picked)) and got.stage == "canary")
        publisher = registry.server.app.state.model_publisher

        registry.judge.verdict = PENDING  # not enough windows yet: it stays
        assert publisher.check() == 0
        registry.judge.verdict = FAILING
        assert publisher.check() == 1
        assert publisher.check() == 0  # once

        state = registry.call("GET", "/registry/assignments").json()
        rolled = next(a for a in state if a["id"] == canary["id"])
        assert rolled["state"] == "rolled_back" and "below 0.95" in rolled["reason"]
        assert rolled["figures"][-1]["reasons"] == list(FAILING.reasons)
        with registry.server.app.state.session_factory() as session:
            (ticket,) = session.scalars(select(Ticket).where(Ticket.kind == "retraining"))
            evidence = ticket.evidence["rollout"]
            assert (ticket.model_name, ticket.model_version) == ("cmapss_fd001", "2.0.0")
            assert ticket.site == "plant1" and ticket.line == "line3"
            assert evidence["reasons"] == list(FAILING.reasons)
            assert evidence["figures"]["agreement"] == pytest.approx(0.81)
            assert evidence["agents"] == [picked] and evidence["baseline_version"] == "1.0.0"

        wait_until(lambda: (got := agents.latest(picked)) and got.stage == "live"
                   and got.live.version == "1.0.0" and got.shadow is None,
                   what="the previous live version back")
    finally:
        agents.close()


def test_a_restart_republishes_nothing_unchanged_and_a_returning_agent_gets_its_own(
        tmp_path: Path, mosquitto: MosquittoServer, db_url: str,
        keys: tuple[Path, Path]) -> None:
    port = free_port()
    settings = registry_settings(tmp_path, mosquitto, db_url, keys[0], port)
    first = start(settings)
    agents = Agents(mosquitto, "agents")
    try:
        come_online(mosquitto, first, *LINE3)
        first.upload(MODELS / "cmapss_fd001")
        first.assign(name="cmapss_fd001", version="1.0.0", stage="live",
                     target={"site": "plant1", "line": "line3"})
        wait_until(lambda: agents.count() == 2, what="two assignments")
        ids = {a: agents.latest(a).id for a in ("gw-1", "gw-2")}  # type: ignore[union-attr]
        first.server.stop()

        second = start(settings, token=first.token)
        try:
            publisher = second.server.app.state.model_publisher
            for _ in range(3):
                assert publisher.sync() == 0
            assert agents.count() == 2 and publisher.counts.published == 0

            # gw-2 went away and came back: the same message again (same id).
            come_online(mosquitto, second, LINE3[1], state="offline")
            publisher.sync()
            come_online(mosquitto, second, LINE3[1])
            wait_until(lambda: agents.count("gw-2") == 2, what="gw-2's assignment again")
            assert agents.latest("gw-2").id == ids["gw-2"]  # type: ignore[union-attr]
            assert agents.count("gw-1") == 1

            # A new agent on the line gets the line's live version when first seen.
            come_online(mosquitto, second, ("plant1", "line3", "gw-3"))
            got = wait_until(lambda: agents.latest("gw-3"), what="the new agent's")
            assert got.live.version == "1.0.0" and got.id not in ids.values()
            def published() -> dict[str, str]:
                with second.server.app.state.session_factory() as session:
                    return {p.agent_id: p.message_id
                            for p in session.scalars(select(PublishedModel))}

            wait_until(lambda: published() == {**ids, "gw-3": got.id}, what="gw-3's row")
        finally:
            second.server.stop()
    finally:
        agents.close()


def test_assignments_are_checked(registry: Registry, tmp_path: Path) -> None:
    registry.upload(MODELS / "cmapss_fd001")
    unknown = registry.assign(name="cmapss_fd001", version="9", stage="live",
                              target={"site": "plant1"})
    assert unknown.status_code == 404
    no_share = registry.assign(name="cmapss_fd001", version="1.0.0", stage="canary",
                               target={"site": "plant1"})
    assert no_share.status_code == 409 and "share" in no_share.json()["detail"]
    both = registry.assign(name="cmapss_fd001", version="1.0.0", stage="live",
                           target={"site": "plant1", "agents": ["gw-1"]})
    assert both.status_code == 422
    shadow = registry.assign(name="cmapss_fd001", version="1.0.0", stage="shadow",
                             target={"agents": ["gw-1"]}).json()
    # Nothing live on its agents when it began: nothing to judge it against.
    nothing = registry.call("POST", f"/registry/assignments/{shadow['id']}/promote",
                            json={"share": 0.5})
    assert nothing.status_code == 409 and "nothing to compare" in nothing.json()["detail"]
    assert registry.call("POST", "/registry/assignments/999/rollback",
                         json={"reason": "x"}).status_code == 404


# -- replicas ---------------------------------------------------------------------------------
class StallingClient(mqtt.Client):
    """A replica's paho client whose model publishes wait (at most ``stall_s``) until
    ``go`` is set: the worst timing, a replica between reading what to publish and
    recording that it did."""

    def __init__(self, broker: MosquittoServer, client_id: str, stall_s: float) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.go = threading.Event()
        self.stalled = threading.Event()
        self.stall_s = stall_s
        self.connect(broker.host, broker.port)
        self.loop_start()
        wait_until(self.is_connected, what=f"{client_id} connected")

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Any = None) -> mqtt.MQTTMessageInfo:
        if topic.endswith("/cmd/model"):
            self.stalled.set()
            self.go.wait(self.stall_s)
        return super().publish(topic, payload, qos, retain, properties)

    def flush_to(self, agents: Agents) -> None:
        """Wait until ``agents`` has everything this client published (one client's QoS 1
        messages arrive in order: a marker after them arrives last)."""
        marker = f"linewatch/v1/plant1/line3/{self._client_id.decode()}/cmd/model"
        before = agents.count(self._client_id.decode())
        super().publish(marker, b"", qos=1)
        wait_until(lambda: agents.count(self._client_id.decode()) > before, what="the marker")

    def close(self) -> None:
        self.disconnect()
        self.loop_stop()


def replica_publisher(registry: Registry, client: mqtt.Client,
                      judge: Any = None) -> ModelPublisher:
    app = registry.server.app
    return ModelPublisher(app.state.settings, app.state.session_factory, client, judge=judge)


@pytest.fixture
def pg_registry(tmp_path: Path, mosquitto: MosquittoServer, postgres_url: str,
                keys: tuple[Path, Path]) -> Iterator[Registry]:
    """A registry on PostgreSQL: what replicas share."""
    drop_schema(postgres_url)
    running = start(registry_settings(tmp_path, mosquitto, postgres_url, keys[0], free_port()))
    yield running
    running.server.stop()
    drop_schema(postgres_url)


def test_two_replicas_publish_a_change_once(pg_registry: Registry,
                                            mosquitto: MosquittoServer) -> None:
    registry = pg_registry
    registry.server.app.state.model_publisher.stop()  # the two below are the replicas
    agents = Agents(mosquitto, "agents")
    slow = StallingClient(mosquitto, "replica-a", stall_s=2)
    fast = StallingClient(mosquitto, "replica-b", stall_s=0)
    fast.go.set()
    try:
        come_online(mosquitto, registry, *LINE3)
        registry.upload(MODELS / "cmapss_fd001")
        registry.assign(name="cmapss_fd001", version="1.0.0", stage="live",
                        target={"site": "plant1", "line": "line3"})
        a, b = replica_publisher(registry, slow), replica_publisher(registry, fast)
        sent: dict[str, int] = {}
        first = threading.Thread(target=lambda: sent.update(a=a.sync()))
        first.start()
        assert slow.stalled.wait(10)  # A is inside its first publish
        sent["b"] = b.sync()  # without a lock B publishes both now, then A again
        slow.go.set()
        first.join(30)
        slow.flush_to(agents)
        fast.flush_to(agents)

        assert sent["a"] + sent["b"] == 2, sent
        assert [agents.count(g) for g in ("gw-1", "gw-2")] == [1, 1]
        with registry.server.app.state.session_factory() as session:
            rows = {p.agent_id: p.message_id for p in session.scalars(select(PublishedModel))}
        assert rows == {g: agents.latest(g).id for g in ("gw-1", "gw-2")}  # type: ignore[union-attr]
        assert a.sync() == b.sync() == 0
    finally:
        slow.close()
        fast.close()
        agents.close()


def test_two_replicas_roll_a_failing_canary_back_once(
        pg_registry: Registry, mosquitto: MosquittoServer, tmp_path: Path) -> None:
    registry = pg_registry
    come_online(mosquitto, registry, *LINE3)
    canary = half_canary(registry, tmp_path)
    a_judging, b_done = threading.Event(), threading.Event()

    def slow_judge(_session: Any, _question: Question) -> Verdict:
        a_judging.set()
        b_done.wait(10)  # A has judged the canary; B rolls it back meanwhile
        return FAILING

    client = registry.server.app.state.subscriber.confirmer.client
    a = replica_publisher(registry, client, judge=slow_judge)
    b = replica_publisher(registry, client, judge=lambda _s, _q: FAILING)
    rolled: dict[str, int] = {}
    first = threading.Thread(target=lambda: rolled.update(a=a.check()))
    first.start()
    assert a_judging.wait(10)
    rolled["b"] = b.check()
    b_done.set()
    first.join(30)

    assert rolled == {"a": 0, "b": 1}
    with registry.server.app.state.session_factory() as session:
        found = list(session.scalars(select(Ticket).where(Ticket.kind == "retraining")))
        assert len(found) == 1 and found[0].escalations == 0
        assert found[0].evidence["rollout"]["assignment"] == canary["id"]
        actions = [e.action for e in session.scalars(select(AuditEntry))
                   if e.action == "registry.rollback"]
        assert actions == ["registry.rollback"]
