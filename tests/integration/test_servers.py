"""The service fixtures themselves: real broker, real InfluxDB, real PostgreSQL.

If these fail, every integration test built on the fixtures is suspect, so they check the
properties the others rely on: QoS 1 delivery, a persistent session that survives a broker
restart on the same port, and InfluxDB data that survives a stop/start.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from servers import InfluxDatabase, MosquittoServer

pytestmark = pytest.mark.integration

TIMEOUT_S = 5.0
TOPIC = "linewatch/v1/test-site/line-1/agent-1/prediction"


class _Client:
    """A paho VERSION2 client that records CONNACKs and received messages."""

    def __init__(self, server: MosquittoServer, client_id: str = "", clean: bool = True) -> None:
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = lambda _client, _userdata, msg: self.messages.put(msg)
        self.paho.connect(server.host, server.port, keepalive=10)
        self.paho.loop_start()
        assert self._connected.wait(TIMEOUT_S), "no CONNACK"

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: object,
    ) -> None:
        # A refused CONNACK is not "connected" (MQTT 3.1.1 section 3.2.2.3).
        assert not reason.is_failure, reason
        self.session_present = flags.session_present
        self._connected.set()

    def _on_subscribe(self, *_args: object) -> None:
        self._subscribed.set()

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.paho.subscribe(topic, qos=1)
        assert self._subscribed.wait(TIMEOUT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 1 and return only once the broker's PUBACK arrived."""
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), "no PUBACK"

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[_Client]]:
    """Collects the test's clients and closes them, so no paho thread outlives the test."""
    made: list[_Client] = []
    yield made
    for client in made:
        client.close()


def test_mosquitto_delivers_qos1(mosquitto: MosquittoServer, clients: list[_Client]) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    subscriber = _Client(mosquitto)
    publisher = _Client(mosquitto)
    clients += [subscriber, publisher]
    subscriber.subscribe(TOPIC)

    publisher.publish(TOPIC, b"hello")

    msg = subscriber.messages.get(timeout=TIMEOUT_S)
    assert (msg.topic, msg.payload, msg.qos) == (TOPIC, b"hello", 1)


def test_mosquitto_queues_for_persistent_session_across_restart(
    mosquitto: MosquittoServer, clients: list[_Client]
) -> None:
    subscriber = _Client(mosquitto, client_id="lw-persistent", clean=False)
    subscriber.subscribe(TOPIC)
    subscriber.close()  # the session and its subscription stay on the broker

    publisher = _Client(mosquitto)
    publisher.publish(TOPIC, b"queued while away")
    publisher.close()

    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.port == port and mosquitto.running

    subscriber = _Client(mosquitto, client_id="lw-persistent", clean=False)
    clients.append(subscriber)
    assert subscriber.session_present is True
    msg = subscriber.messages.get(timeout=TIMEOUT_S)
    assert (msg.topic, msg.payload) == (TOPIC, b"queued while away")
    assert "mosquitto version" in mosquitto.log_text()


def test_mosquitto_stop_closes_the_port(mosquitto: MosquittoServer) -> None:
    mosquitto.stop()
    mosquitto.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection((mosquitto.host, mosquitto.port), timeout=1).close()
    mosquitto.start()
    socket.create_connection((mosquitto.host, mosquitto.port), timeout=1).close()


def test_influxdb_write_query_and_survive_restart(influxdb: InfluxDatabase) -> None:
    server, db = influxdb.server, influxdb.database
    assert influxdb.url == server.url == f"http://127.0.0.1:{server.port}"
    server.write("vibration,asset=m1 rms=0.5,alarm=true 1700000000000000000", db)
    expected = [
        {
            "_measurement": "vibration",
            "time": 1700000000000000000,
            "alarm": True,
            "asset": "m1",
            "rms": 0.5,
        }
    ]

    assert server.query("SELECT * FROM vibration", db, epoch="ns") == expected
    server.stop()
    assert not server.running
    server.start()
    assert server.query("SELECT * FROM vibration", db, epoch="ns") == expected
    assert server.query("SELECT rms FROM vibration", db)[0]["time"] == "2023-11-14T22:13:20Z"


def test_influxdb_gives_each_test_a_fresh_database(influxdb: InfluxDatabase) -> None:
    server, db = influxdb.server, influxdb.database
    names = {row["name"] for row in server.query("SHOW DATABASES")}
    assert db in names
    assert server.query("SELECT * FROM vibration", db) == []


def test_postgres_url_is_a_fresh_database(postgres_url: str) -> None:
    import sqlalchemy

    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            name = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
            tables = conn.execute(
                sqlalchemy.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert postgres_url.endswith("/" + name)
    assert tables == 0
