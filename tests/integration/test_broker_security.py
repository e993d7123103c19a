"""No credentials, no entry (design guarantee 5), proven on the broker config we ship.

Mosquitto runs ``configs/mosquitto/mosquitto.conf`` with only its paths and ports rewritten
(``_shipped_config``), and reads ``configs/mosquitto/acl`` straight from the repository. The
password file and the certificates are made the way ``configs/mosquitto/README.md`` says:
``mosquitto_passwd -b`` and openssl.

How an absence is proven without sleeping: Mosquitto routes a PUBLISH to the subscribers'
queues while it handles it, before it answers with the PUBACK, and sends each queue in
order. So once a marker published after a refused message has arrived, the refused message
would have arrived first had it been let through.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from agent_support import ROOT, WITH_AGGREGATOR, agent_cfg, running_aggregator
from aggregator_support import data_topic, payload, predictions, wait_until
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from servers import MosquittoServer, ServerError, find_binary

from agent import config as agent_config
from agent.outbox import Outbox
from agent.pipeline import Agent
from contract.wire import decode, subscription

pytestmark = pytest.mark.integration

CONF_DIR = ROOT / "configs" / "mosquitto"
SHIPPED_DIR = "/etc/mosquitto/linewatch/"  # where the shipped config expects its files
AGGREGATOR = "linewatch-aggregator"
USERS = ("gw-a", "gw-b", AGGREGATOR)
PASSWORD_ENV = "LINEWATCH_TEST_AGENT_MQTT_PASSWORD"


@dataclass(frozen=True)
class Site:
    """The broker's files, laid out as under ``SHIPPED_DIR``, and each user's password."""

    dir: Path
    passwords: dict[str, str]

    @property
    def ca_file(self) -> Path:
        return self.dir / "certs" / "ca.crt"


def _run(*command: str, cwd: Path) -> None:
    subprocess.run([find_binary(command[0]), *command[1:]], cwd=cwd, check=True,
                   capture_output=True, timeout=30)


def _make_certificates(certs: Path) -> None:
    """A CA and a server certificate for 127.0.0.1: the README's commands."""
    certs.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run("openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=linewatch test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", "ca.key", "-out", "ca.crt", cwd=certs)
    _run("openssl", "req", "-new", *ec, "-subj", "/CN=127.0.0.1",
         "-keyout", "server.key", "-out", "server.csr", cwd=certs)
    (certs / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
         cwd=certs)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A password file for gw-a, gw-b and linewatch-aggregator, a CA and a server certificate,
    made once for the module."""
    folder = tmp_path_factory.mktemp("mosquitto-linewatch")
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    try:
        for i, (user, password) in enumerate(passwords.items()):
            create = ("-c",) if i == 0 else ()
            _run("mosquitto_passwd", *create, "-b", "passwd", user, password, cwd=folder)
        _make_certificates(folder / "certs")
    except (ServerError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")
        # openssl comes with ca-certificates (which depends on it) on Debian's Python images.
        pytest.fail(f"{exc} {detail}\n(mosquitto_passwd is in the Debian package `mosquitto`, "
                    "openssl in `openssl`)", pytrace=False)
    return Site(folder, passwords)


def _shipped_config(files: Path) -> str:
    """``configs/mosquitto/mosquitto.conf`` as ``MosquittoServer`` extra config: its files
    under ``files`` except the ACL, read from the repository; its TLS listener on
    127.0.0.1:{tls_port}. The lines the fixture owns (the plain listener, the persistence
    directory, the log file) are left out, and so are comments."""
    lines, listeners = [], 0
    for line in (CONF_DIR / "mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if not line or line.startswith("#") or key in ("persistence_location", "log_dest"):
            continue
        if key == "listener":
            listeners += 1
            if line == "listener 1883 127.0.0.1":
                continue
            assert line == "listener 8883", f"unexpected listener in the shipped config: {line}"
            line = "listener {tls_port} {host}"
        line = line.replace(f"{SHIPPED_DIR}acl", str(CONF_DIR / "acl"))
        lines.append(line.replace(SHIPPED_DIR, f"{files}/"))
    assert listeners == 2, "the shipped config should have a plain and a TLS listener"
    return "\n".join(lines)


@pytest.fixture
def broker(site: Site) -> Iterator[MosquittoServer]:
    """A fresh Mosquitto on the shipped configuration, for this test only."""
    server = None
    try:
        server = MosquittoServer(extra_config=_shipped_config(site.dir))
        server.start()
    except ServerError as exc:
        if server is not None:
            server.close()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.close()


class _Probe:
    """A paho client logged in as ``user`` (anonymous if None) that records its CONNACK, the
    reason code of each PUBACK, and the topics of the messages it receives."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None, *,
                 protocol: str = "3.1.1", ca_file: Path | None = None) -> None:
        version = (MQTTProtocolVersion.MQTTv5 if protocol == "5"
                   else MQTTProtocolVersion.MQTTv311)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"probe-{secrets.token_hex(4)}", protocol=version)
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.connack: ReasonCode | None = None
        self.received: list[str] = []
        self._connacked = threading.Event()
        self._subacked = threading.Event()
        self._suback: ReasonCode | None = None
        self._pubacks: dict[int, ReasonCode] = {}
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, message: self.received.append(message.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._connacked.wait(5), "no CONNACK within 5 s"

    def _on_connect(self, client: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        if reason.is_failure:
            client.disconnect()  # no reconnect loop: close() returns at once
        self._connacked.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[ReasonCode],
                      _p: Any) -> None:
        self._suback = reasons[0]
        self._subacked.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self._pubacks[mid] = reason  # before wait_for_publish() returns (paho 2.x)

    def subscribe(self, topic: str) -> ReasonCode | None:
        """Subscribe at QoS 1; the reason code of the broker's SUBACK."""
        self._subacked.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subacked.wait(5), "no SUBACK within 5 s"
        return self._suback

    def publish(self, topic: str, raw: bytes) -> ReasonCode:
        """Publish at QoS 1; the reason code of the broker's PUBACK."""
        info = self.client.publish(topic, raw, qos=1)
        info.wait_for_publish(5)
        return self._pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def _aggregator(tmp_path: Path, url: str, site: Site, **settings: Any) -> Iterator[httpx.Client]:
    """The real aggregator logged in as linewatch-aggregator, once it is subscribed."""
    with running_aggregator(tmp_path, url, mqtt_username=AGGREGATOR,
                            mqtt_password=site.passwords[AGGREGATOR], **settings) as api:
        wait_until(lambda: _health(api)["mqtt"]["subscribed"], 10, what="the subscription")
        yield api


def _health(api: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = api.get("/healthz").json()
    return body


def _agent(tmp_path: Path, url: str, agent_id: str, **mqtt_settings: Any) -> Agent:
    """A real agent replaying 3 FD001 engines, with these ``mqtt:`` settings."""
    cfg = agent_cfg(tmp_path, url, agent_id, confirm=WITH_AGGREGATOR).model_dump(mode="json")
    return Agent(agent_config.parse({**cfg, "mqtt": {**cfg["mqtt"], **mqtt_settings}}))


def _drain_until(monkeypatch: pytest.MonkeyPatch, agent: Agent, condition: Any,
                 what: str) -> None:
    """End the agent's final drain once ``condition`` holds (at most 30 s) instead of after
    a fixed time: how soon the broker's refusals arrive depends on the machine's load."""
    flush = agent.publisher.flush

    def until(timeout_s: float) -> bool:
        wait_until(condition, 30, what=what)
        return flush(0.0)

    monkeypatch.setattr(agent.publisher, "flush", until)


def _kept_predictions(agent: Agent) -> int:
    """Predictions still in the (closed) agent's outbox."""
    outbox = Outbox(agent.config.outbox_path)
    try:
        rows = outbox.pending(after_seq=-1, limit=1_000_000)
    finally:
        outbox.close()
    return sum(len(decode(row.payload).items) for row in rows if row.kind == "predictions")


def _marker(broker: MosquittoServer, site: Site) -> None:
    """Publish 3 predictions as gw-a on its own topic."""
    raw = payload("gw-a", 0, predictions("engine-001", [0.1, 0.2, 0.3]))
    with _Probe(broker.port, "gw-a", site.passwords["gw-a"]) as gw_a:
        assert not gw_a.publish(data_topic("gw-a"), raw).is_failure


# -- authentication -------------------------------------------------------------------------
@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_an_anonymous_client_is_refused(broker: MosquittoServer, site: Site, listener: str) -> None:
    if listener == "plain":
        probe = _Probe(broker.port)
    else:
        probe = _Probe(broker.tls_port, ca_file=site.ca_file)
    with probe:
        assert probe.connack is not None and probe.connack.is_failure
        assert str(probe.connack) == "Not authorized"


@pytest.mark.parametrize("shared_group", [None, "aggregators"])
def test_an_agent_logged_in_as_itself_delivers_every_prediction(
    tmp_path: Path, broker: MosquittoServer, site: Site, monkeypatch: pytest.MonkeyPatch,
    shared_group: str | None,
) -> None:
    """Also through $share/aggregators/...: the read rule is checked on each message's
    topic, so the aggregator's replicas need no $share rule."""
    monkeypatch.setenv(PASSWORD_ENV, site.passwords["gw-a"])
    agent = _agent(tmp_path, broker.url, "gw-a", username="gw-a", password_env=PASSWORD_ENV)
    with _aggregator(tmp_path, broker.url, site, mqtt_shared_group=shared_group) as api:
        report = agent.run(drain_timeout_s=30)
        assert report.drained
        scored = report.progress.windows_scored
        assert scored > 0
        wait_until(lambda: _health(api)["counts"]["predictions_stored"] == scored, 15,
                   what=f"{scored} stored predictions")
        # Its retained status, online then offline at a clean exit, passed the ACL too.
        wait_until(lambda: [(a["agent"], a["state"]) for a in api.get("/agents").json()]
                   == [("gw-a", "offline")], 10, what="gw-a reported offline")
        assert _health(api)["counts"]["rejected"] == {}


def test_an_agent_with_a_wrong_password_is_refused_and_keeps_everything(
    tmp_path: Path, broker: MosquittoServer, site: Site, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-" + site.passwords["gw-a"])
    agent = _agent(tmp_path, broker.url, "gw-a", username="gw-a", password_env=PASSWORD_ENV)

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "agent.publisher" and "refused the connection" in r.getMessage()]

    _drain_until(monkeypatch, agent, refusals, "the broker's refusal")
    report = agent.run()

    assert not agent.publisher.connected and not report.progress.connected
    assert not report.drained and report.progress.published == 0
    assert refusals() and "Not authorized" in refusals()[0]
    assert _kept_predictions(agent) == report.progress.windows_scored > 0


# -- authorisation: an agent writes under its own id only -----------------------------------
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_an_agent_cannot_publish_under_another_agents_id(
    tmp_path: Path, broker: MosquittoServer, site: Site, protocol: str
) -> None:
    # Claims to come from gw-b, on gw-b's topic: the aggregator would store it if it came.
    forged = payload("gw-b", 0, predictions("engine-002", [0.9] * 5))
    own = payload("gw-a", 0, predictions("engine-001", [0.1, 0.2, 0.3]))
    with (
        _aggregator(tmp_path, broker.url, site) as api,
        _Probe(broker.port, AGGREGATOR, site.passwords[AGGREGATOR]) as watcher,
        _Probe(broker.port, "gw-a", site.passwords["gw-a"], protocol=protocol) as gw_a,
    ):
        # Data topics only: the aggregator's delivery commands to gw-a come under cmd/.
        watcher.subscribe(subscription())
        refused = gw_a.publish(data_topic("gw-b"), forged)
        accepted = gw_a.publish(data_topic("gw-a"), own)
        wait_until(lambda: _health(api)["counts"]["predictions_stored"] >= 3 and watcher.received,
                   10, what="gw-a's own message at both subscribers")
        health = _health(api)

    assert not accepted.is_failure
    assert watcher.received == [data_topic("gw-a")]
    assert health["mqtt"]["received"] == 1
    assert health["counts"]["predictions_stored"] == 3 and health["counts"]["rejected"] == {}
    # MQTT 5 tells the publisher. A 3.1.1 PUBACK has no reason code: Mosquitto acks the
    # message and drops it, so a 3.1.1 publisher cannot tell (README: use protocol "5").
    assert str(refused) == ("Not authorized" if protocol == "5" else "Success")


def test_an_agent_logged_in_under_another_name_is_refused_and_keeps_its_messages(
    tmp_path: Path, broker: MosquittoServer, site: Site, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Agent gw-b given gw-a's credentials: over MQTT 5 each refusal reaches the publisher,
    which keeps the message in its outbox."""
    monkeypatch.setenv(PASSWORD_ENV, site.passwords["gw-a"])
    agent = _agent(tmp_path, broker.url, "gw-b", username="gw-a", password_env=PASSWORD_ENV,
                   protocol="5")
    # Every message in the outbox handed over and answered (refused, not to be retried for
    # 30 s), before the marker.
    _drain_until(monkeypatch, agent, lambda: agent.publisher.inflight == 0
                 and agent.publisher.refused >= agent.outbox.depth > 0, "every refusal")
    with _aggregator(tmp_path, broker.url, site) as api:
        report = agent.run()
        assert agent.publisher.refused > 0 and agent.publisher.inflight == 0
        _marker(broker, site)
        wait_until(lambda: _health(api)["counts"]["predictions_stored"] >= 3, 10,
                   what="the marker")
        health = _health(api)

    assert health["mqtt"]["received"] == 1 and health["counts"]["predictions_stored"] == 3
    assert report.progress.published == 0 and not report.drained
    assert any("broker refused message seq" in r.getMessage() for r in caplog.records
               if r.name == "agent.publisher")
    assert _kept_predictions(agent) == report.progress.windows_scored > 0


def test_an_agent_reads_only_the_commands_addressed_to_it(
    broker: MosquittoServer, site: Site
) -> None:
    """Two gw-a clients subscribe to everything, one directly and one through a shared
    subscription. Mosquitto grants both (it checks read rules on delivery, not on SUBSCRIBE)
    and delivers to each only the command addressed to gw-a."""
    to_a, to_b = (f"linewatch/v1/plant1/line3/{agent}/cmd/assign" for agent in ("gw-a", "gw-b"))
    with (
        _Probe(broker.port, AGGREGATOR, site.passwords[AGGREGATOR]) as aggregator,
        _Probe(broker.port, "gw-a", site.passwords["gw-a"]) as direct,
        _Probe(broker.port, "gw-a", site.passwords["gw-a"]) as shared,
    ):
        assert str(direct.subscribe("linewatch/v1/#")) == "Granted QoS 1"
        assert str(shared.subscribe("$share/everything/linewatch/v1/#")) == "Granted QoS 1"
        with _Probe(broker.port, "gw-b", site.passwords["gw-b"]) as gw_b:
            gw_b.publish(data_topic("gw-b"), payload("gw-b", 0, predictions("engine-002", [0.5])))
        assert not aggregator.publish(to_b, b"{}").is_failure
        assert not aggregator.publish(to_a, b"{}").is_failure
        wait_until(lambda: direct.received and shared.received, 5, what="gw-a's command")
    assert direct.received == shared.received == [to_a]


# -- TLS ------------------------------------------------------------------------------------
def test_over_tls_an_agent_trusting_the_plant_ca_delivers(
    tmp_path: Path, broker: MosquittoServer, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_url = f"mqtts://127.0.0.1:{broker.tls_port}"
    monkeypatch.setenv(PASSWORD_ENV, site.passwords["gw-a"])
    agent = _agent(tmp_path, tls_url, "gw-a", username="gw-a", password_env=PASSWORD_ENV,
                   ca_file=str(site.ca_file))
    with _aggregator(tmp_path, tls_url, site, mqtt_ca_file=site.ca_file) as api:
        report = agent.run(drain_timeout_s=30)
        assert report.drained
        scored = report.progress.windows_scored
        wait_until(lambda: _health(api)["counts"]["predictions_stored"] == scored > 0, 15,
                   what=f"{scored} stored predictions")
        assert _health(api)["mqtt"]["broker"] == f"127.0.0.1:{broker.tls_port}"


def test_over_tls_a_client_that_does_not_trust_the_plant_ca_cannot_connect(
    broker: MosquittoServer,
) -> None:
    # What paho's tls_set() without ca_certs does: verify against the system's CAs only. The
    # stdlib client, not paho, because paho 2.2 leaves the socket of a failed handshake open.
    context = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as sock,
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
    ):
        context.wrap_socket(sock, server_hostname="127.0.0.1")
