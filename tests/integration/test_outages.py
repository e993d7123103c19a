"""Outages are told, once, and readiness follows them (issue 6, items 2 and 5).

Against real servers only: the fixtures' Mosquitto (stopped and started under the clients)
and InfluxDB, the real agent and the real aggregator (uvicorn, lifespan, subscriber).

- an agent pointed at a closed port says so at WARNING once (address, reason, next retry),
  whatever the number of retries, at the time it announced, and once more when it is back;
  the ``python -m agent`` command prints that line; a TLS client on a plain port is told
  as a TLS failure;
- the aggregator likewise, and ``/readyz`` answers 503 (with the reason) while the broker
  is down and 200 once it is back, while ``/healthz`` stays 200;
- InfluxDB down: ``/readyz`` 503 and the failing write logged once, over many retries;
- two aggregators, or two agents, with the same client id (MQTT 3.1.1 and 5): an ERROR that
  names the id and the setting to change, counted in ``/healthz``, ``/readyz`` 503 while
  it lasts.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from agent_support import ROOT, TEST_FILE, agent_cfg
from aggregator_support import (
    Publisher,
    broker_settings,
    data_topic,
    payload,
    predictions,
    start_service,
    wait_until,
)
from servers import MosquittoServer, free_port

from agent.config import MqttConfig
from agent.outbox import Outbox
from agent.pipeline import Agent, RunReport
from agent.publisher import Publisher as AgentPublisher
from aggregator.api.app import create_app
from aggregator.server import ServerThread
from aggregator.settings import Settings
from outage.mqtt import STABLE_S

pytestmark = pytest.mark.integration


def assert_thinned(attempts: list[logging.LogRecord]) -> None:
    """Failed attempts 1, 2, 4, 8, ... are at WARNING, the others at DEBUG."""
    numbers = [int(m[1]) if (m := re.search(r"\(attempt (\d+),", r.getMessage())) else 1
               for r in attempts]
    assert numbers == list(range(1, len(attempts) + 1))
    assert [r.levelno for r in attempts] == [
        logging.WARNING if n & (n - 1) == 0 else logging.DEBUG for n in numbers]


def messages(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and text in r.getMessage()]


def loud(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def wait_for(caplog: pytest.LogCaptureFixture, logger: str, text: str, n: int = 1,
             timeout_s: float = 30) -> list[logging.LogRecord]:
    """Wait until ``logger`` has logged ``text`` (at any level) ``n`` times."""
    return wait_until(lambda: (found := messages(caplog, logger, text)) and len(found) >= n
                      and found, timeout_s, what=f"{n} x {text!r} from {logger}")


# -- the agent --------------------------------------------------------------------------------
def test_the_agent_tells_once_that_the_broker_is_down_and_when_it_is_back(
    tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.publisher")
    address = f"127.0.0.1:{mosquitto.port}"
    mosquitto.stop()
    # No aggregator: the broker's acknowledgement is all there is.
    agent = Agent(agent_cfg(tmp_path, mosquitto.url, confirm="broker"))
    reports: list[RunReport] = []
    runner = threading.Thread(target=lambda: reports.append(agent.run(drain_timeout_s=60)))
    runner.start()
    try:
        failures = wait_for(caplog, "agent.publisher", f"cannot connect to broker {address}", 3)
        assert failures[0].getMessage() == (
            f"cannot connect to broker {address}: connection refused; retrying in 3 s")
        # Attempts 1, 2, 4, 8, ... at WARNING, the others at DEBUG.
        assert [r.levelno for r in failures[:3]] == [logging.WARNING, logging.WARNING,
                                                     logging.DEBUG]
        assert re.fullmatch(rf"cannot connect to broker {re.escape(address)}: connection "
                            r"refused \(attempt 2, failing for \d+ s\); retrying in 4 s",
                            failures[1].getMessage())
        assert failures[2].getMessage().endswith("retrying in 5 s")  # the cap
        # The announced retry is when paho really tried again (never early; late only by
        # the scheduler on a busy machine).
        assert 2.9 <= failures[1].created - failures[0].created < 6
        assert 3.9 <= failures[2].created - failures[1].created < 8
        problem = agent.publisher.problem
        assert problem is not None and "connection refused" in problem

        mosquitto.start()
        runner.join(60)
    finally:
        agent.stop()
        runner.join(30)
    assert reports and reports[0].drained
    back = messages(caplog, "agent.publisher", f"connected to broker {address}")
    assert [r.levelno for r in back] == [logging.INFO]
    assert re.fullmatch(rf"connected to broker {re.escape(address)} after \d+ s, \d+ attempts",
                        back[0].getMessage())
    assert_thinned(messages(caplog, "agent.publisher", "cannot connect"))


def test_the_agent_command_prints_the_first_failure(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "agent": {"id": "gw-closed", "site": "plant1", "line": "line1"},
        "model": {"dir": "models/cmapss_fd001"},
        "source": {"type": "replay", "path": str(TEST_FILE), "assets": ["engine-001"],
                   "speed": 0, "step_s": 600, "start": "2026-01-01T00:00:00Z"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}"},
        "outbox": {"path": str(tmp_path / "outbox.db")},
    }))
    # 5 s of draining: attempts at 0 and 3 s, both told (attempts 1, 2, 4, ...).
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(config), "--drain-timeout", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    told = [line for line in done.stderr.splitlines() if "cannot connect" in line]
    assert 1 <= len(told) <= 2, done.stderr
    assert told[0].endswith(f"WARNING agent.publisher: cannot connect to broker 127.0.0.1:{port}: "
                            "connection refused; retrying in 3 s")
    assert all("(attempt 2, failing for " in line for line in told[1:])
    assert done.returncode == 1 and "left in the outbox" in done.stdout


# paho 2.2.0 drops the SSLSocket of a failed handshake without closing it (reconnect() ->
# _create_socket() raises after wrap_socket()); the garbage collector closes it, with a
# ResourceWarning that is paho's, not ours.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
def test_a_tls_client_on_a_plain_port_is_told_as_a_tls_failure(
    tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.publisher")
    publisher = AgentPublisher(
        MqttConfig(url=f"mqtts://127.0.0.1:{mosquitto.port}"), Outbox(tmp_path / "outbox.db"),
        client_id="gw-tls", status_topic="linewatch/v1/p/l/gw-tls/status",
        status=lambda state, ts: state.encode(),
    )
    publisher.start()
    try:
        failures = wait_for(caplog, "agent.publisher", "cannot connect to broker", 2)
    finally:
        publisher.close()
        publisher.outbox.close()
    told = loud(failures)[0]
    assert told.startswith(f"cannot connect to broker 127.0.0.1:{mosquitto.port}: "
                           "TLS handshake failed (")
    assert told.endswith("; retrying in 3 s")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_two_agents_with_one_client_id_are_told_apart(
    tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.publisher")

    def publisher(name: str) -> AgentPublisher:
        return AgentPublisher(
            MqttConfig(url=mosquitto.url, protocol=protocol), Outbox(tmp_path / f"{name}.db"),
            client_id="linewatch-agent-gw-7", status_topic="linewatch/v1/p/l/gw-7/status",
            status=lambda state, ts: state.encode(),
        )

    first, second = publisher("first"), publisher("second")
    first.start()
    wait_until(lambda: first.connected, 10, what="the first agent connected")
    second.start()
    try:
        told = wait_for(caplog, "agent.publisher", "another client is using the client id")
        assert told and {r.levelno for r in told} <= {logging.ERROR, logging.DEBUG}
        assert told[0].levelno == logging.ERROR
        assert told[0].getMessage().startswith(
            f"another client is using the client id 'linewatch-agent-gw-7' on broker "
            f"127.0.0.1:{mosquitto.port}: every agent needs its own agent.id")
        # Both are knocked off in turn, so both find out.
        wait_until(lambda: first.link.duplicate_client_id and second.link.duplicate_client_id,
                   30, what="both agents aware")
        for problem in (first.problem, second.problem):
            assert problem is not None
            assert "another client is using the client id 'linewatch-agent-gw-7'" in problem
    finally:
        second.close()
        second.outbox.close()
    try:
        # Alone again: the survivor's connection lasts, and the duplicate is over.
        (over,) = wait_for(caplog, "agent.publisher", "is ours alone again",
                           timeout_s=STABLE_S + 20)
        assert over.levelno == logging.INFO
        assert first.problem is None or "another client" not in first.problem
    finally:
        first.close()
        first.outbox.close()


# -- the aggregator ---------------------------------------------------------------------------
@pytest.fixture
def http() -> Iterator[dict[str, httpx.Client]]:
    clients: dict[str, httpx.Client] = {}
    yield clients
    for client in clients.values():
        client.close()


def client_of(server: ServerThread, http: dict[str, httpx.Client]) -> httpx.Client:
    http[server.url] = httpx.Client(base_url=server.url, timeout=10)
    return http[server.url]


def test_readyz_and_healthz_are_in_the_openapi_schema(tmp_path: Path) -> None:
    paths = create_app(Settings(http_port=0, series_path=tmp_path / "s.db")).openapi()["paths"]
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/healthz"]["get"]["responses"]) == {"200"}
    not_ready = paths["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    assert not_ready["schema"] == {"$ref": "#/components/schemas/HealthOut"}


def test_aggregator_tells_once_that_the_broker_is_down_and_readyz_follows(
    tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture,
    http: dict[str, httpx.Client],
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggregator.subscriber")
    address = f"127.0.0.1:{mosquitto.port}"
    mosquitto.stop()
    server = ServerThread(broker_settings(tmp_path, mosquitto), ready_timeout_s=0.1)
    server.start()
    try:
        api = client_of(server, http)
        failures = wait_for(caplog, "aggregator.subscriber",
                            f"cannot connect to broker {address}", 3)
        ready, health = api.get("/readyz"), api.get("/healthz")
        assert ready.status_code == 503 and health.status_code == 200
        assert ready.json()["status"] == health.json()["status"] == "degraded"
        (problem,) = ready.json()["problems"]
        assert problem.startswith(f"cannot connect to broker {address}: connection refused "
                                  "(failing for ")
        assert health.json()["mqtt"]["last_error"] == (
            f"cannot connect to broker {address}: connection refused")
        assert health.json()["mqtt"]["connect_failures"] >= 3
        assert loud(failures)[0] == (
            f"cannot connect to broker {address}: connection refused; retrying in 3 s")
        assert_thinned(failures)

        mosquitto.start()
        wait_until(lambda: api.get("/readyz").status_code == 200, 30, what="ready again")
        ready = api.get("/readyz").json()
        assert (ready["status"], ready["problems"]) == ("ok", [])
        assert api.get("/healthz").status_code == 200
    finally:
        server.stop()
    back = messages(caplog, "aggregator.subscriber", f"connected to broker {address}")
    assert [r.levelno for r in back] == [logging.INFO]
    assert re.fullmatch(rf"connected to broker {re.escape(address)} after \d+ s, \d+ attempts",
                        back[0].getMessage())
    assert_thinned(messages(caplog, "aggregator.subscriber", "cannot connect"))


def test_the_aggregator_tells_why_it_lost_the_broker_and_when_it_is_back(
    tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue #9: after a broker outage the aggregator logged nothing but "Unspecified error".
    caplog.set_level(logging.DEBUG, logger="aggregator.subscriber")
    address = re.escape(f"127.0.0.1:{mosquitto.port}")
    server = start_service(broker_settings(tmp_path, mosquitto, mqtt_protocol="5"))
    subscriber = server.app.state.subscriber
    try:
        mosquitto.stop()
        wait_for(caplog, "aggregator.subscriber", "(attempt 3, ")
        mosquitto.start()
        (back,) = wait_for(caplog, "aggregator.subscriber", " again after ")
        wait_until(lambda: subscriber.ready, 30, what="subscribed again")
    finally:
        server.stop()
    (gone,) = messages(caplog, "aggregator.subscriber", "lost the connection")
    assert gone.levelno == logging.WARNING
    # Mosquitto 2.0.11 closes the socket on SIGTERM, with no DISCONNECT, for 3.1.1 and 5.
    assert re.fullmatch(rf"lost the connection to broker {address} after [\d.]+ (s|min): the "
                        r"broker closed the connection \(socket EOF\); retrying in 1 s",
                        gone.getMessage()), gone.getMessage()
    attempts = messages(caplog, "aggregator.subscriber", "cannot connect to broker")
    assert len(attempts) >= 3
    assert_thinned(attempts)
    assert back.levelno == logging.INFO
    assert re.fullmatch(rf"connected to broker {address} again after \d+ s, "
                        rf"{len(attempts) + 1} attempts", back.getMessage()), back.getMessage()
    assert not [r for r in caplog.records if "Unspecified error" in r.getMessage()]
    assert not messages(caplog, "aggregator.subscriber", "has no session for us")


def test_a_broker_that_lost_our_session_is_told_and_subscribed_to_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggregator.subscriber")
    broker = MosquittoServer(extra_config="persistence false\nlog_type all")
    broker.start()
    try:
        server = start_service(broker_settings(tmp_path, broker))
        try:
            broker.restart()  # without persistence: our session and subscription are gone
            (told,) = wait_for(caplog, "aggregator.subscriber", "has no session for us")
            subscriber = server.app.state.subscriber
            wait_until(lambda: subscriber.ready, 30, what="subscribed again")
            with Publisher(broker.host, broker.port, data_topic("gw-1")) as pub:
                pub.publish(payload("gw-1", 0, predictions("pump-1", [0.1])))
            ingestor = server.app.state.ingestor
            wait_until(lambda: ingestor.counts.accepted == 1, 30, what="stored after it")
        finally:
            server.stop()
        log = broker.log_text()
    finally:
        broker.close()
    assert told.levelno == logging.WARNING
    assert told.getMessage() == (
        f"broker 127.0.0.1:{broker.port} has no session for us (restarted without "
        "persistence?): resubscribed; every agent is asked to resend what we have not "
        "confirmed")
    # On the new connection, the first packet after CONNECT is the SUBSCRIBE.
    after = log.rsplit("as aggregator-test", 1)[1]
    received = re.findall(r"Received (\w+) from aggregator-test", after)
    assert received[0] == "SUBSCRIBE", received[:5]


def test_influxdb_down_makes_readyz_503_and_the_write_failure_is_logged_once(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb, caplog: pytest.LogCaptureFixture,
    http: dict[str, httpx.Client],
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggregator.subscriber")
    server = start_service(broker_settings(tmp_path, mosquitto, influx_url=influxdb.url,
                                           influx_database=influxdb.database))
    try:
        api = client_of(server, http)
        assert api.get("/readyz").status_code == 200
        influxdb.server.stop()
        ready = api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["problems"] == ["the series store (influx1) does not answer"]
        assert api.get("/healthz").status_code == 200

        with Publisher(mosquitto.host, mosquitto.port, data_topic("gw-1")) as pub:
            pub.publish(payload("gw-1", 0, predictions("pump-1", [0.1, 0.2])))
        subscriber = server.app.state.subscriber
        wait_until(lambda: subscriber.counts.retries >= 4, 30, what="four retries")
        failures = messages(caplog, "aggregator.subscriber", "cannot store 1 received messages")
        assert len(failures) >= 4
        (told,) = loud(failures)
        assert told.startswith(f"cannot store 1 received messages: InfluxDB at {influxdb.url}")
        assert told.endswith("; retrying in 0.5 s")
        problems = api.get("/readyz").json()["problems"]
        assert problems[0].startswith("cannot store received messages for ")
        assert problems[1] == "the series store (influx1) does not answer"

        influxdb.server.start()
        ingestor = server.app.state.ingestor
        wait_until(lambda: ingestor.counts.accepted == 1, 30, what="the message stored")
        wait_until(lambda: api.get("/readyz").status_code == 200, 10, what="ready again")
    finally:
        server.stop()
    back = messages(caplog, "aggregator.subscriber", "storing received messages again")
    assert [r.levelno for r in back] == [logging.INFO]
    assert re.fullmatch(r"storing received messages again after \d+ s, \d+ failures",
                        back[0].getMessage())


def test_stopping_while_the_queue_is_full_and_the_store_down_loses_nothing(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb,  # type: ignore[no-untyped-def]
) -> None:
    # on_message waits for room while the worker retries; stop() must end both, and what
    # was received but not stored comes again from the broker to the next start.
    settings = broker_settings(tmp_path, mosquitto, ingest_queue_size=5, ingest_batch_size=5,
                               influx_url=influxdb.url, influx_database=influxdb.database)
    server = start_service(settings)
    influxdb.server.stop()
    with Publisher(mosquitto.host, mosquitto.port, data_topic("gw-1")) as pub:
        for i in range(30):
            pub.publish(payload("gw-1", i, predictions("pump-1", [0.5], start=i)))
    subscriber = server.app.state.subscriber
    wait_until(lambda: subscriber.counts.waits > 0 and subscriber.counts.retries > 0, 30,
               what="a full queue and a failing store")
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(60)
    assert not stopper.is_alive(), "stop() hangs with on_message waiting for room"
    assert subscriber.counts.acked == 0
    influxdb.server.start()
    server = start_service(settings)
    try:
        ingestor = server.app.state.ingestor
        wait_until(lambda: ingestor.counts.accepted == 30, 60, what="all 30 stored")
        assert server.app.state.series.count() == 30
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_two_aggregators_with_one_client_id_are_reported(
    tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture,
    http: dict[str, httpx.Client], protocol: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggregator.subscriber")
    settings = broker_settings(tmp_path, mosquitto, mqtt_protocol=protocol,
                               mqtt_client_id="linewatch-aggregator")
    first = start_service(settings)
    second = ServerThread(settings, ready_timeout_s=0.1)
    second.start()
    try:
        api = client_of(first, http)
        subscriber = first.app.state.subscriber

        def duplicate_in_readyz() -> bool:
            problems = api.get("/readyz").json().get("problems", [])
            return any("another client is using" in p for p in problems)

        wait_until(duplicate_in_readyz, 30, what="the duplicate in /readyz")
        ready = api.get("/readyz")
        assert ready.status_code == 503
        advice = ("another client is using the client id 'linewatch-aggregator' on broker "
                  f"127.0.0.1:{mosquitto.port}")
        assert any(p.startswith(advice) and p.endswith(
            "every aggregator replica needs its own LINEWATCH_MQTT_CLIENT_ID (see README)")
            for p in ready.json()["problems"]), ready.json()["problems"]
        health = api.get("/healthz")
        assert health.status_code == 200
        assert health.json()["mqtt"]["duplicate_client_id"] is True
        assert health.json()["mqtt"]["takeovers"] >= 3
        told = messages(caplog, "aggregator.subscriber", "another client is using")
        assert told and {r.levelno for r in told} <= {logging.ERROR, logging.DEBUG}
        assert told[0].levelno == logging.ERROR
        assert told[0].getMessage().startswith(
            f"{advice}: every aggregator replica needs its own LINEWATCH_MQTT_CLIENT_ID "
            "(see README) (")
        # Each of the two says it once, however often they knock each other off.
        wait_until(lambda: subscriber.counts.takeovers >= 6, 30, what="more takeovers")
        told = messages(caplog, "aggregator.subscriber", "another client is using")
        assert len(loud(told)) <= 2 < len(told)
    finally:
        second.stop()
    try:
        wait_until(lambda: api.get("/readyz").status_code == 200, STABLE_S + 20,
                   what="ready again once alone")
        assert api.get("/healthz").json()["mqtt"]["duplicate_client_id"] is False
    finally:
        first.stop()
    assert messages(caplog, "aggregator.subscriber", "is ours alone again")


def test_every_connection_stamps_its_online_and_its_last_will_alike(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The aggregator orders an agent's states by these stamps (a will at the same stamp ends
    that session); a will stamped once at start would predate every reconnection's online."""
    stamped: list[tuple[str, object]] = []

    def status(state: str, ts: object) -> bytes:
        stamped.append((state, ts))
        return state.encode()

    publisher = AgentPublisher(
        MqttConfig(url=mosquitto.url), Outbox(tmp_path / "outbox.db"), client_id="gw-stamps",
        status_topic="linewatch/v1/p/l/gw-stamps/status", status=status)
    publisher.start()
    try:
        wait_until(lambda: publisher.connected, 10, what="connected")
        mosquitto.restart()
        wait_until(lambda: len(stamped) >= 4 and publisher.connected, 30,
                   what="a new session after the broker restarted")
    finally:
        publisher.close()
        publisher.outbox.close()
    (on1, t1), (off1, t1b), (on2, t2), (off2, t2b) = stamped[:4]
    assert (on1, off1, on2, off2) == ("online", "offline", "online", "offline")
    assert t1 == t1b and t2 == t2b and t2 > t1  # type: ignore[operator]
