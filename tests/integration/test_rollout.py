"""Issue 14 end to end, every part real: the aggregator (registry, signing key, promotion
gate, canary check) over uvicorn, a real Mosquitto, two real agents scoring FD001 engines
and taking their assignments over MQTT and HTTP. Nothing stands in for the gate: the
verdicts come from the windows the agents scored.

The replay runs at plant time = wall-clock time (one FD001 cycle every 0.05 s, started
now, looping), as a live source stamps its windows, because a stage is judged on the
windows scored since it began.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from agent_support import MODEL, TEST_FILE
from aggregator_support import api_token, bearer, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from servers import MosquittoServer, free_port

from agent import config as agent_config
from agent.pipeline import Agent, RunReport
from aggregator.api.app import create_app
from aggregator.server import ServerThread
from aggregator.settings import Settings
from contract import artifact
from contract.card import ModelCard
from linewatch.registry import keygen

pytestmark = pytest.mark.integration

V1 = ModelCard.load(MODEL).version
ENGINES = [f"engine-{n:03d}" for n in range(31, 41)]
AGENTS = ("gw-a", "gw-b")
GATE_WINDOWS = 150


def _version(tmp: Path, version: str, threshold: float | None = None) -> Path:
    """The shipped model under another card version (the card's sha256 covers model.onnx
    only); ``threshold``: a retrain that alerts on other windows than the live model."""
    out = Path(shutil.copytree(MODEL, tmp / f"model-{version}"))
    card = json.loads((out / "card.json").read_text())
    card["version"] = version
    if threshold is not None:
        card["threshold"]["value"] = threshold
    (out / "card.json").write_text(json.dumps(card))
    return out


class _Agent:
    """A real agent on a thread, trusting the registry's key."""

    def __init__(self, tmp: Path, broker: MosquittoServer, agent_id: str, trusted: Path,
                 ca_file: Path | None = None) -> None:
        config = agent_config.parse({
            "agent": {"id": agent_id, "site": "plant1", "line": "line1"},
            "model": {"dir": str(MODEL), "trusted_keys": [str(trusted)],
                      "store": str(tmp / agent_id / "models"),
                      "ca_file": None if ca_file is None else str(ca_file)},
            "source": {"type": "replay", "path": str(TEST_FILE), "assets": ENGINES,
                       "step_s": 0.05, "speed": 1, "loop": True},
            "mqtt": {"url": broker.url},
            "outbox": {"path": str(tmp / agent_id / "outbox.db")},
            "publish": {"max_items": 200, "flush_interval_s": 0.2, "health_interval_s": 1},
        })
        self.agent = Agent(config)
        self.report: RunReport | None = None
        self.thread = threading.Thread(target=self._run, name=agent_id)
        self.thread.start()

    def _run(self) -> None:
        self.report = self.agent.run(drain_timeout_s=10)

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(timeout=60)


class _Plant:
    def __init__(self, server: ServerThread | _HttpsServer, token: str) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, headers=bearer(token), timeout=30,
                                 verify=getattr(server, "verify", True))

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def upload(self, model_dir: Path) -> None:
        r = self.call("POST", "/registry/versions", content=artifact.pack(model_dir),
                      headers={"Content-Type": "application/gzip"})
        assert r.status_code in (200, 201), r.text

    def assign(self, version: str, stage: str, share: float | None = None) -> int:
        body: dict[str, Any] = {"name": "cmapss_fd001", "version": version, "stage": stage,
                                "target": {"site": "plant1", "line": "line1"}}
        if share is not None:
            body["share"] = share
        r = self.call("POST", "/registry/assignments", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def agents(self) -> dict[str, dict[str, Any]]:
        return {a["agent"]: a for a in self.call("GET", "/agents").json()}

    def running(self, want: dict[str, tuple[str, str | None]], what: str) -> None:
        """Wait until each agent runs (live, shadow) as given, by what it reported."""
        def there() -> bool:
            seen = self.agents()
            return all(
                a in seen and seen[a]["model_version"] == live
                and seen[a]["shadow_model_version"] == shadow
                and (seen[a]["deployment"] or {}).get("state") == "applied"
                for a, (live, shadow) in want.items())
        try:
            wait_until(there, 60, what=what)
        except AssertionError as exc:
            seen = {a: (r["model_version"], r["shadow_model_version"], r["deployment"])
                    for a, r in self.agents().items()}
            raise AssertionError(f"{exc}; the agents report {seen}") from None

    def assignment(self, assignment_id: int) -> dict[str, Any]:
        rows = self.call("GET", "/registry/assignments").json()
        return next(r for r in rows if r["id"] == assignment_id)

    def promote_when_ready(self, assignment_id: int, **body: Any) -> httpx.Response:
        """Ask until the gate has enough windows to judge; its first answers say so."""
        answers: list[httpx.Response] = []

        def judged() -> bool:
            r = self.call("POST", f"/registry/assignments/{assignment_id}/promote",
                          json=body or None)
            answers.append(r)
            return r.status_code == 200 or r.json().get("ready", True)
        wait_until(judged, 90, interval_s=1.0, what=f"a verdict on assignment {assignment_id}")
        return answers[-1]


def _certificates(out: Path) -> tuple[Path, Path, Path]:
    """A plant's private CA and, signed by it, a server certificate for 127.0.0.1:
    (CA bundle, server certificate, server key), PEM files in ``out``."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "linewatch test plant CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
              encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class _HttpsServer:
    """The aggregator under uvicorn with its TLS options, as a plant serves it behind its own
    CA (``ServerThread`` speaks plain HTTP)."""

    def __init__(self, settings: Settings, cert: Path, key: Path, ca: Path) -> None:
        self.app = create_app(settings)
        self.url = f"https://127.0.0.1:{settings.http_port}"
        self.verify = ssl.create_default_context(cafile=str(ca))
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=settings.http_port, lifespan="on",
            log_config=None, access_log=False, ssl_certfile=str(cert), ssl_keyfile=str(key)))
        self._thread = threading.Thread(target=self._server.run, name="aggregator-https",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: self._server.started or not self._thread.is_alive(), 30,
                   what="the aggregator serving HTTPS")
        assert self._server.started, "the aggregator did not start"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture
def plant(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[tuple[_Plant, Path]]:
    private, public = keygen(tmp_path / "keys")
    port = free_port()
    settings = Settings(
        mqtt_url=mosquitto.url, db_url=f"sqlite:///{tmp_path / 'agg.db'}",
        series_path=tmp_path / "series.db", http_port=port, mqtt_client_id="agg-rollout",
        signing_key_file=private, public_url=f"http://127.0.0.1:{port}",
        # The estimated F1 over ten engines depends on how far their replay got (0.72 in
        # one run, 0.00 before any alert in another): the gate's F1 check is tested over
        # real stored estimates in test_gate.py; here agreement and windows decide.
        registry_check_s=1.0, gate_min_windows=GATE_WINDOWS, gate_f1_margin=1.0)
    server = ServerThread(settings)
    server.start()
    assert server.app.state.subscriber.wait_ready(10)
    running = _Plant(server, api_token(server, "admin", "release-manager"))
    try:
        yield running, public
    finally:
        running.http.close()
        server.stop()


def test_shadow_canary_rollback_and_a_failing_canary_rolled_back_by_the_gate(
        plant: tuple[_Plant, Path], tmp_path: Path, mosquitto: MosquittoServer) -> None:
    registry, public = plant
    for model_dir in (MODEL, _version(tmp_path, "2.0.0"),
                      _version(tmp_path, "3.0.0", threshold=0.001)):
        registry.upload(model_dir)
    agents = [_Agent(tmp_path, mosquitto, a, public) for a in AGENTS]
    try:
        wait_until(lambda: set(AGENTS) <= {a for a, r in registry.agents().items()
                                           if r["model_version"] == V1}, 60,
                   what="both agents known, running the shipped version")

        # Shadow: both agents score 2.0.0 beside the live version; it opens no ticket.
        shadow = registry.assign("2.0.0", "shadow")
        registry.running({a: (V1, "2.0.0") for a in AGENTS}, "2.0.0 in shadow on both")
        answer = registry.promote_when_ready(shadow, share=0.5)
        assert answer.status_code == 200, answer.text
        judged = registry.assignment(shadow)["figures"][-1]
        assert judged["passed"] and judged["figures"]["windows"] >= GATE_WINDOWS
        assert judged["figures"]["agreement"] == 1.0  # the same ONNX under another card
        tickets = registry.call("GET", "/tickets").json()
        assert all(t["model_version"] != "2.0.0" for t in tickets)

        # Canary on one of the two: 2.0.0 live there, the old live version as its shadow.
        canary = answer.json()["new_assignment"]
        drawn = canary["agents"]
        assert len(drawn) == 1
        other = next(a for a in AGENTS if a not in drawn)
        registry.running({drawn[0]: ("2.0.0", V1), other: (V1, None)},
                         "2.0.0 live on the canary agent only")

        # Rolled back by hand: the canary agent runs the previous version again.
        r = registry.call("POST", f"/registry/assignments/{canary['id']}/rollback",
                          json={"reason": "planned: the test rolls it back"})
        assert r.status_code == 200, r.text
        registry.running({a: (V1, None) for a in AGENTS}, "both back on the shipped version")

        # A retrain that alerts on nearly every window: the gate refuses its promotion ...
        bad = registry.assign("3.0.0", "shadow")
        registry.running({a: (V1, "3.0.0") for a in AGENTS}, "3.0.0 in shadow on both")
        refused = registry.promote_when_ready(bad, share=0.5)
        assert refused.status_code == 409, refused.text
        assert refused.json()["ready"] is True
        assert any("agrees with the live model" in why for why in refused.json()["reasons"])
        assert refused.json()["figures"]["agreement"] < 0.95
        r = registry.call("POST", f"/registry/assignments/{bad}/rollback",
                          json={"reason": "the gate refused it"})
        assert r.status_code == 200, r.text

        # ... and, put in as a canary anyway, the canary check rolls it back with a ticket.
        forced = registry.assign("3.0.0", "canary", share=0.5)
        wait_until(lambda: registry.assignment(forced)["state"] == "rolled_back", 90,
                   interval_s=1.0, what="the failing canary rolled back")
        rolled = registry.assignment(forced)
        assert rolled["reason"].startswith("automatic rollback:")
        assert rolled["figures"][-1]["figures"]["agreement"] < 0.95
        retraining = [t for t in registry.call("GET", "/tickets",
                                               params={"kind": "retraining"}).json()
                      if t["model_version"] == "3.0.0"]
        # One ticket for the rollback. A canary that alerts on nearly every window may
        # also trip its agent's alert-rate monitor: that one is the drift rule's, and says so.
        (rolled_back,) = [t for t in retraining if "rollout" in t["evidence"]]
        assert all("rollout" in t["evidence"] or "assets_moved" in t["evidence"]
                   for t in retraining)
        rollout = rolled_back["evidence"]["rollout"]
        assert rollout["assignment"] == forced and rollout["reasons"]
        registry.running({a: (V1, None) for a in AGENTS},
                         "both back on the shipped version after the automatic rollback")
    finally:
        for a in agents:
            a.stop()
    for a in agents:
        assert a.report is not None
        assert a.report.progress.models_refused == 0


def test_a_tampered_artifact_and_a_wrong_signature_are_refused_and_the_old_model_scores(
        plant: tuple[_Plant, Path], tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """What the aggregator serves is changed behind its back (its database, or anything
    on the way): the agent refuses it, says why, and its model keeps scoring."""
    registry, public = plant
    registry.upload(MODEL)
    registry.upload(_version(tmp_path, "2.0.0"))
    registry.upload(_version(tmp_path, "4.0.0"))
    database = sqlite3.connect(tmp_path / "agg.db")
    with database:
        (data,) = database.execute("SELECT artifact FROM model_versions WHERE version = "
                                   "'2.0.0'").fetchone()
        tampered = bytearray(data)
        tampered[len(tampered) // 2] ^= 0xFF
        database.execute("UPDATE model_versions SET artifact = ? WHERE version = '2.0.0'",
                         (bytes(tampered),))
        (sha,) = database.execute("SELECT sha256 FROM model_versions WHERE version = "
                                  "'4.0.0'").fetchone()
        other_key = artifact.generate_key()
        database.execute("UPDATE model_versions SET signature = ? WHERE version = '4.0.0'",
                         (artifact.sign(other_key, "cmapss_fd001", "4.0.0", sha),))
    database.close()
    gateway = _Agent(tmp_path, mosquitto, "gw-a", public)
    try:
        wait_until(lambda: registry.agents().get("gw-a", {}).get("model_version") == V1, 60,
                   what="the agent known, running the shipped version")
        for version, why in (("2.0.0", "sha256 "), ("4.0.0", "signature ")):
            registry.assign(version, "live")

            def refused(version: str = version) -> dict[str, Any] | None:
                seen = registry.agents()["gw-a"]
                deployment = seen["deployment"] or {}
                return seen if deployment.get("state") == "refused" and version in \
                    deployment.get("reason", "") else None
            seen = wait_until(refused, 60, what=f"{version} refused")
            assert seen["deployment"]["reason"].startswith(why), seen["deployment"]
            assert seen["model_version"] == V1
            scored = seen["predictions_count"]
            wait_until(lambda scored=scored: registry.agents()["gw-a"]["predictions_count"]
                       > scored + 50, 30, what="the shipped version still scoring")
            assert registry.agents()["gw-a"]["model_version"] == V1
    finally:
        gateway.stop()
    assert gateway.report is not None and gateway.report.progress.models_refused == 2
    assert gateway.report.progress.models_applied == 0
    store = tmp_path / "gw-a" / "models"  # created with the first version installed
    assert not store.exists() or not [p for p in store.iterdir()
                                      if "2.0.0" in p.name or "4.0.0" in p.name]


def test_over_https_with_the_plant_ca_the_model_is_taken_and_without_it_refused(
        tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """The registry served over HTTPS under a plant's private CA: the agent given it as
    model.ca_file verifies the server and runs the assigned version; the one left on the
    system's CA store refuses the download, says the certificate is why, and scores on."""
    ca, cert, key = _certificates(tmp_path)
    private, public = keygen(tmp_path / "keys")
    port = free_port()
    server = _HttpsServer(Settings(
        mqtt_url=mosquitto.url, db_url=f"sqlite:///{tmp_path / 'agg.db'}",
        series_path=tmp_path / "series.db", http_port=port, mqtt_client_id="agg-https",
        signing_key_file=private, public_url=f"https://127.0.0.1:{port}"), cert, key, ca)
    server.start()
    registry = _Plant(server, api_token(server, "admin", "release-manager"))
    agents: list[_Agent] = []
    try:
        assert server.app.state.subscriber.wait_ready(10)
        registry.upload(MODEL)
        registry.upload(_version(tmp_path, "2.0.0"))
        agents = [_Agent(tmp_path, mosquitto, "gw-ca", public, ca_file=ca),
                  _Agent(tmp_path, mosquitto, "gw-sys", public)]
        wait_until(lambda: {"gw-ca", "gw-sys"} <= {a for a, r in registry.agents().items()
                                                   if r["model_version"] == V1}, 60,
                   what="both agents known, running the shipped version")
        registry.assign("2.0.0", "live")
        registry.running({"gw-ca": ("2.0.0", None)}, "2.0.0 live on the agent given the CA")

        def refused() -> dict[str, Any] | None:
            seen = registry.agents()["gw-sys"]
            return seen if (seen["deployment"] or {}).get("state") == "refused" else None
        seen = wait_until(refused, 60, what="the download refused without the CA")
        reason = seen["deployment"]["reason"]
        assert reason.startswith(f"download of https://127.0.0.1:{port}/registry/artifacts/")
        assert "certificate is not trusted (unable to get local issuer certificate)" in reason
        assert "model.ca_file" in reason and seen["model_version"] == V1
        scored = seen["predictions_count"]
        wait_until(lambda: registry.agents()["gw-sys"]["predictions_count"] > scored + 50, 30,
                   what="the shipped version still scoring")
    finally:
        for a in agents:
            a.stop()
        registry.http.close()
        server.stop()
    assert agents[0].report is not None and agents[1].report is not None
    assert agents[0].report.progress.models_applied == 1
    assert (agents[1].report.progress.models_applied, agents[1].report.progress.models_refused
            ) == (0, 1)  # a certificate that fails is not fetched again and again
    assert not (tmp_path / "gw-sys" / "models").exists()
