"""The aggregator as a service: REST API over its lifespan, and delivery guarantees.

- API: ``create_app`` under ``TestClient``'s lifespan with the embedded broker and stores;
  a real paho client publishes, the routes show agents (with their latest health), drift
  events and tickets, and change tickets.
- Guarantees, against a real Mosquitto (and InfluxDB): an InfluxDB outage loses and
  doubles nothing; an aggregator restart gets what was published while it was down; MQTT 5
  shared subscriptions split the work between replicas; a full ingest queue holds the
  broker back and loses nothing; a refused CONNACK is logged and is not "connected".
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aggregator_support import (
    MODEL,
    T0,
    Publisher,
    api_token,
    bearer,
    broker_settings,
    data_topic,
    drift_events,
    envelope,
    health_report,
    payload,
    predictions,
    start_service,
    store_settings,
    stored_drift,
    stored_points,
    wait_until,
)
from servers import MosquittoServer, free_port
from sqlalchemy import func, select
from starlette.exceptions import StarletteDeprecationWarning

from aggregator.api.app import create_app
from aggregator.db import SeenMessage, open_engine, open_sessions
from aggregator.ingest import Ingestor
from aggregator.series.sqlite import SqliteSeriesStore
from aggregator.server import ServerThread
from aggregator.subscriber import Subscriber
from contract.wire import Status, encode

with warnings.catch_warnings():
    # Starlette deprecates httpx for its TestClient in favour of httpx2, which is not a
    # dependency of ours; the warning is raised once, at import.
    warnings.filterwarnings(
        "ignore",
        message="Using `httpx` with `starlette.testclient`",
        category=StarletteDeprecationWarning,
    )
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

AGENT = "gw-1"
TOPIC = data_topic(AGENT)


def stream(n_messages: int, per_message: int = 3, first_seq: int = 0) -> list[Any]:
    """n envelopes of one agent, on consecutive, non-overlapping windows."""
    return [
        envelope(
            AGENT,
            seq,
            predictions(
                f"asset-{seq % 4}", [0.1 + 0.01 * (seq % 50)] * per_message, start=seq * per_message
            ),
        )
        for seq in range(first_seq, first_seq + n_messages)
    ]


# -- REST API over the lifespan, embedded broker ------------------------------------------
@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, int]]:
    port = free_port()
    settings = store_settings(tmp_path, embedded_broker_port=port)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.subscriber.wait_ready(10)  # type: ignore[attr-defined]
        client.headers.update(bearer(api_token(client.app, "write", "technician")))
        yield client, port


def test_tickets_and_agents_through_the_api(api: tuple[TestClient, int]) -> None:
    client, port = api
    with Publisher("127.0.0.1", port, TOPIC) as pub:
        pub.publish(
            encode(Status(schema=1, agent=AGENT, state="online", ts=T0, model=MODEL)),
            data_topic(AGENT, "status"),
        )
        pub.publish(payload(AGENT, 0, predictions("pump-1", [0.9, 0.95, 0.99])))
        pub.publish(payload(AGENT, 1, predictions("pump-2", [0.1, 0.2])))
        wait_until(lambda: client.get("/healthz").json()["counts"]["accepted"] == 3, 10)

    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["mqtt"]["embedded"] is True and health["mqtt"]["connected"] is True
    assert health["series"] == {"backend": "sqlite", "ok": True}
    assert health["counts"]["predictions_stored"] == 5

    (agent,) = client.get("/agents").json()
    assert (agent["agent"], agent["state"], agent["last_seq"], agent["predictions_count"]) == (
        AGENT,
        "online",
        1,
        5,
    )

    (ticket,) = client.get("/tickets").json()
    assert (ticket["kind"], ticket["asset"], ticket["status"]) == ("maintenance", "pump-1", "open")
    assert [s["score"] for s in ticket["evidence"]["scores"]] == [0.9, 0.95, 0.99]
    assert client.get(f"/tickets/{ticket['id']}").json() == ticket

    assert client.get("/tickets", params={"status": "open", "asset": "pump-1"}).json() == [ticket]
    assert client.get("/tickets", params={"asset": "pump-2"}).json() == []
    assert client.get("/tickets", params={"kind": "retraining"}).json() == []
    assert client.get("/tickets", params={"status": "closed"}).status_code == 422

    acked = client.post(f"/tickets/{ticket['id']}/ack")
    assert (acked.status_code, acked.json()["status"]) == (200, "acknowledged")
    resolved = client.post(
        f"/tickets/{ticket['id']}/resolve", json={"outcome": "confirmed_failure", "note": "bearing"}
    ).json()
    assert (resolved["status"], resolved["outcome"], resolved["note"]) == (
        "resolved",
        "confirmed_failure",
        "bearing",
    )
    assert resolved["resolved_at"] is not None

    assert client.post(f"/tickets/{ticket['id']}/ack").status_code == 409
    again = client.post(f"/tickets/{ticket['id']}/resolve", json={"outcome": "other"})
    assert again.status_code == 409
    assert (
        client.post(f"/tickets/{ticket['id']}/resolve", json={"outcome": "maybe"}).status_code
        == 422
    )
    assert client.get("/tickets/999").status_code == 404
    assert client.post("/tickets/999/ack").status_code == 404
    assert client.get("/tickets", params={"status": "resolved"}).json()[0]["id"] == ticket["id"]


def test_tickets_filter_by_site(api: tuple[TestClient, int]) -> None:
    """The same asset name at two sites: two tickets, told apart by ``?site=``."""
    client, port = api
    items = predictions("engine-001", [0.9, 0.95, 0.99])
    with Publisher("127.0.0.1", port, TOPIC) as pub:
        pub.publish(payload("gw-a", 0, items), data_topic("gw-a", site="plant1"))
        pub.publish(payload("gw-b", 0, items), data_topic("gw-b", site="plant2"))
        wait_until(lambda: len(client.get("/tickets").json()) == 2, 10, what="two tickets")

    both = client.get("/tickets", params={"asset": "engine-001"}).json()
    assert sorted((t["site"], t["agent"], t["escalations"]) for t in both) == [
        ("plant1", "gw-a", 0),
        ("plant2", "gw-b", 0),
    ]
    (plant2,) = client.get("/tickets", params={"site": "plant2"}).json()
    assert (plant2["site"], plant2["asset"], plant2["agent"]) == ("plant2", "engine-001", "gw-b")
    (plant1,) = client.get(
        "/tickets", params={"site": "plant1", "asset": "engine-001", "status": "open"}
    ).json()
    assert (plant1["site"], plant1["agent"]) == ("plant1", "gw-a")
    assert plant1["id"] != plant2["id"]
    assert client.get("/tickets", params={"site": "plant3"}).json() == []
    assert client.get("/tickets", params={"site": "plant2", "asset": "pump-1"}).json() == []


def test_drift_and_agent_health_through_the_api(api: tuple[TestClient, int]) -> None:
    client, port = api
    drift = [
        envelope(AGENT, 0, drift_events("pump-1", 3) + drift_events(
            None, 1, start=3, detector="ADWIN", monitor="score",
            detail='the distribution of model scores changed; mean "0.8", \\ ok\nnext line')),
        envelope("gw-2", 0, drift_events("pump-2", 2, start=1, detector="nan", monitor="s3")),
    ]
    newest = health_report(5, 40, outbox_depth=2, outbox_dropped=1, rejected_readings=3,
                           inference_ms_median=0.75)
    with Publisher("127.0.0.1", port, TOPIC) as pub:
        for env in drift:
            pub.publish(encode(env), data_topic(env.agent, "drift"))
        # The newer report first: "latest" is the newest by time, not by arrival.
        pub.publish(payload(AGENT, 1, [newest]), data_topic(AGENT, "health"))
        pub.publish(payload(AGENT, 2, [health_report(0, 10)]), data_topic(AGENT, "health"))
        pub.publish(payload("gw-2", 1, predictions("pump-2", [0.1])), data_topic("gw-2"))
        wait_until(lambda: client.get("/healthz").json()["counts"]["accepted"] == 5, 10)

    def events(**params: Any) -> list[tuple[Any, ...]]:
        response = client.get("/drift", params=params)
        assert response.status_code == 200, response.text
        return [
            (e["agent"], e["asset"], datetime.fromisoformat(e["at"]), e["monitor"],
             e["detector"], e["value"], e["detail"])
            for e in response.json()
        ]

    expected = [
        (p.agent, p.asset, p.at, p.monitor, p.detector, p.value, p.detail)
        for p in stored_drift(drift)
    ]
    assert events() == expected  # newest first, details exactly as sent
    assert [e[2] for e in expected] == sorted((e[2] for e in expected), reverse=True)
    assert events(agent="gw-2") == [e for e in expected if e[0] == "gw-2"]
    assert events(asset="pump-1") == [e for e in expected if e[1] == "pump-1"]
    (fleet,) = events(detector="ADWIN")
    assert fleet[1] is None and fleet[5] is None and '"0.8", \\ ok\n' in fleet[6]
    since = T0 + timedelta(minutes=2)
    assert events(since=since.isoformat()) == [e for e in expected if e[2] >= since]
    assert events(agent=AGENT, limit=2) == [e for e in expected if e[0] == AGENT][:2]
    assert events(agent="nobody") == []
    first = client.get("/drift", params={"limit": 1}).json()[0]
    assert (first["model_name"], first["model_version"], first["site"], first["line"]) == (
        MODEL.name, MODEL.version, "plant1", "line3",
    )
    for bad in ({"limit": 0}, {"limit": 10_001}, {"since": "2026-03-01T08:00:00"}):
        assert client.get("/drift", params=bad).status_code == 422, bad  # naive since too

    agents = {a["agent"]: a for a in client.get("/agents").json()}
    assert agents[AGENT]["health"] == {
        "at": newest.at.isoformat().replace("+00:00", "Z"),
        "windows_scored": 40,
        "outbox_depth": 2,
        "outbox_dropped": 1,
        "rejected_readings": 3,
        "inference_ms_median": 0.75,
    }
    assert agents["gw-2"]["health"] is None  # it sent predictions, no health report
    counts = client.get("/healthz").json()["counts"]
    assert (counts["drift_events_stored"], counts["health_reports_stored"]) == (6, 2)
    assert counts["predictions_stored"] == 1


# -- guarantees against real servers ------------------------------------------------------
def seen_count(server: ServerThread) -> int:
    with server.app.state.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(SeenMessage)) or 0)


def test_influx_outage_loses_and_doubles_nothing(mosquitto, influxdb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = broker_settings(
        tmp_path, mosquitto, influx_url=influxdb.url, influx_database=influxdb.database
    )
    server = start_service(settings)
    pub = Publisher(mosquitto.host, mosquitto.port, TOPIC)
    series = server.app.state.series
    try:
        ingestor, subscriber = server.app.state.ingestor, server.app.state.subscriber
        before, during = stream(5), stream(10, first_seq=5)
        for env in before:
            pub.publish(encode(env))
        # Handled, not merely written: InfluxDB may answer a write it kept with a 500 (seen
        # on a freshly started influxd), and then the batch is retried.
        wait_until(lambda: ingestor.counts.accepted == 5, 10, what="5 messages handled")
        retries = subscriber.counts.retries

        influxdb.server.stop()
        for env in during:
            pub.publish(encode(env))  # the broker acks; the aggregator cannot store
        wait_until(lambda: subscriber.counts.retries > retries, 10, what="a failed write")
        assert ingestor.counts.accepted == 5  # nothing counted while down
        influxdb.server.start()

        wait_until(lambda: ingestor.counts.accepted == 15, 30, what="all 15 messages handled")
        assert series.predictions() == stored_points(before + during)
        rows = influxdb.server.query("SELECT count(score) FROM prediction", influxdb.database)
        assert rows[0]["count"] == 45
        counts = ingestor.counts
        assert (counts.accepted, counts.predictions, counts.duplicates) == (15, 45, 0)
        assert seen_count(server) == 15
        wait_until(lambda: subscriber.counts.acked == 15, 10, what="15 acks")
    finally:
        pub.close()
        server.stop()


def test_messages_published_while_the_aggregator_is_down_arrive(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = broker_settings(tmp_path, mosquitto)
    start_service(settings).stop()  # the broker now holds a persistent session for our client id
    envelopes = stream(20)
    with Publisher(mosquitto.host, mosquitto.port, TOPIC) as pub:
        for env in envelopes:
            pub.publish(encode(env))
    server = start_service(settings)
    try:
        series = server.app.state.series
        ingestor = server.app.state.ingestor
        wait_until(lambda: ingestor.counts.accepted == 20, 10, what="20 messages after restart")
        assert series.predictions() == stored_points(envelopes)
    finally:
        server.stop()


def test_mqtt5_shared_subscription_splits_work_between_replicas(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    replicas = [
        start_service(
            broker_settings(
                tmp_path,
                mosquitto,
                mqtt_protocol="5",
                mqtt_shared_group="aggregators",
                mqtt_client_id=f"aggregator-{i}",
            )
        )
        for i in range(2)
    ]
    pub = Publisher(mosquitto.host, mosquitto.port, TOPIC)
    envelopes = stream(60, per_message=1)
    try:
        for env in envelopes:
            pub.publish(encode(env))
        series = replicas[0].app.state.series  # both replicas share the same files
        wait_until(
            lambda: sum(r.app.state.ingestor.counts.accepted for r in replicas) == 60,
            15,
            what="60 messages handled",
        )
        assert series.predictions() == stored_points(envelopes)
        received = [r.app.state.subscriber.counts.received for r in replicas]
        assert sum(received) == 60  # each message went to exactly one replica ...
        assert min(received) > 0  # ... and both replicas got some
    finally:
        pub.close()
        for r in replicas:
            r.stop()


def test_a_full_queue_holds_the_broker_back(mosquitto, influxdb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 3.1.1 against a broker whose in-flight window (100) is larger than our queue (15):
    # once the queue is full, on_message waits for room (the broker is held back by TCP).
    # InfluxDB is down while the messages arrive, so the worker is stuck retrying its first
    # batch and the queue fills for certain, whatever the machine's speed.
    server = start_service(
        broker_settings(tmp_path, mosquitto, ingest_queue_size=15, ingest_batch_size=15,
                        influx_url=influxdb.url, influx_database=influxdb.database)
    )
    pub = Publisher(mosquitto.host, mosquitto.port, TOPIC)
    envelopes = stream(40, per_message=1)
    try:
        influxdb.server.stop()
        for env in envelopes:
            pub.publish(encode(env))
        subscriber = server.app.state.subscriber
        wait_until(lambda: subscriber.counts.waits > 0, 30, what="the queue to fill")
        influxdb.server.start()
        series = server.app.state.series
        ingestor = server.app.state.ingestor
        wait_until(lambda: ingestor.counts.accepted == 40, 60, what="40 messages handled")
        assert series.predictions() == stored_points(envelopes)
        assert ingestor.counts.predictions == 40
        counts = subscriber.counts
        assert (counts.overflowed, counts.disconnects, ingestor.counts.duplicates) == (0, 0, 0)
    finally:
        pub.close()
        server.stop()


class ClosedMosquitto(MosquittoServer):
    """The fixture's Mosquitto, configured to refuse every client (no anonymous access)."""

    def _write_config(self) -> list[str]:
        command = super()._write_config()
        config = self.tmpdir / "mosquitto.conf"
        text = config.read_text().replace("allow_anonymous true", "allow_anonymous false")
        config.write_text(text)
        return command


def test_refused_connack_is_logged_at_a_falling_rate_and_not_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggregator.subscriber")
    broker = ClosedMosquitto()
    broker.start()
    settings = broker_settings(tmp_path, broker)
    series = SqliteSeriesStore(settings.series_path)
    engine = open_engine(settings.db_url)
    subscriber = Subscriber(settings, Ingestor(series, open_sessions(engine), settings))
    subscriber.start()
    try:

        def refusals() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "refused the connection" in r.getMessage()]

        wait_until(lambda: len(refusals()) >= 3, 30, what="three refused CONNACKs")
        assert not subscriber.connected and not subscriber.ready
        # Attempts 1, 2, 4, 8, ... are told (outage.failures), the others at DEBUG.
        assert [r.levelno for r in refusals()][:3] == [logging.ERROR, logging.ERROR,
                                                       logging.DEBUG]
        assert "Not authorized" in refusals()[0].getMessage()
    finally:
        subscriber.stop()
        engine.dispose()
        series.close()
        broker.close()
