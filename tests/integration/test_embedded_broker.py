"""The embedded amqtt broker carries QoS 1 between real paho clients, and stops cleanly."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from aggregator_support import wait_until
from paho.mqtt.enums import CallbackAPIVersion
from servers import free_port

from aggregator.broker import EmbeddedBroker
from aggregator.errors import BrokerError

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker("127.0.0.1", free_port())
    embedded.start()
    yield embedded
    embedded.stop()


def client(name: str, port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_qos1_from_publisher_to_subscriber(broker: EmbeddedBroker) -> None:
    received: list[tuple[str, bytes, int]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sub")
    sub.on_message = lambda _c, _u, m: received.append((m.topic, m.payload, m.qos))
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    sub.subscribe("linewatch/v1/#", qos=1)
    assert subscribed.wait(5)

    pub = client("pub", broker.port)
    try:
        infos = [pub.publish(f"linewatch/v1/p/l/gw/{i}", b"%d" % i, qos=1) for i in range(200)]
        assert all(info.rc == mqtt.MQTT_ERR_SUCCESS for info in infos)
        for info in infos:
            info.wait_for_publish(5)  # PUBACK from the broker
        wait_until(lambda: len(received) == 200, 10, what="200 messages")
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
    assert sorted(received) == sorted(
        (f"linewatch/v1/p/l/gw/{i}", b"%d" % i, 1) for i in range(200)
    )


def test_stop_frees_the_port_and_start_again_works() -> None:
    port = free_port()
    first = EmbeddedBroker("127.0.0.1", port)
    first.start()
    assert first.running
    first.stop()
    assert not first.running
    first.stop()  # idempotent
    second = EmbeddedBroker("127.0.0.1", port)
    second.start()
    try:
        c = client("probe", port)
        wait_until(c.is_connected, 5, what="a connection")
        c.disconnect()
        c.loop_stop()
    finally:
        second.stop()


def test_busy_port_is_a_broker_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="did not start"):
        EmbeddedBroker("127.0.0.1", broker.port, start_timeout_s=5).start()


def test_refuses_a_bad_port() -> None:
    with pytest.raises(ValueError, match="port"):
        EmbeddedBroker("127.0.0.1", 0)


def test_stop_closes_a_connection_that_never_sent_connect() -> None:
    """A client cut off before its CONNECT (a probe, a half-open link) must not leave its
    socket to the garbage collector after the broker's loop is gone: that warning surfaces
    in whatever runs next."""
    embedded = EmbeddedBroker("127.0.0.1", free_port())
    embedded.start()
    probe = socket.create_connection(("127.0.0.1", embedded.port))
    try:
        wait_until(lambda: len(embedded._writers) == 1, what="the connection accepted")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            embedded.stop()
            gc.collect()
        assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
        assert probe.recv(1) == b""  # the broker closed its end
    finally:
        probe.close()


def test_clients_connecting_while_others_subscribe_are_all_served(
        broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture) -> None:
    """The demo's start: agents connect while others subscribe. Each connect walks the
    broker's subscriptions to send retained messages, awaiting as it goes; a subscription
    added meanwhile must neither drop the connecting client nor lose a routed message."""
    caplog.set_level(logging.WARNING)
    publisher = client("retains", broker.port)
    holder = client("holder", broker.port)
    try:
        for i in range(50):
            publisher.publish(f"r/{i}", b"x" * 1000, qos=1, retain=True).wait_for_publish(5)
        for i in range(50):  # 50 filters, each with a retained message to send at a connect
            holder.subscribe(f"r/{i}", qos=1)
        wait_until(lambda: len(broker._broker._subscriptions) >= 50, what="50 subscriptions")

        stop = threading.Event()
        drops: list[str] = []

        def churn() -> None:
            c = client("churn", broker.port)
            k = 0
            while not stop.is_set():
                c.subscribe(f"s/{k}", qos=1)
                k += 1
                time.sleep(0.0005)
            c.disconnect()
            c.loop_stop()

        churner = threading.Thread(target=churn)
        churner.start()
        joined = []
        try:
            for k in range(30):
                c = client(f"agent-{k}", broker.port)
                c.on_disconnect = lambda cl, *_: drops.append(cl._client_id.decode())
                joined.append(c)
            time.sleep(1.5)
        finally:
            stop.set()
            churner.join(10)
            for c in joined:
                c.on_disconnect = None
                c.disconnect()
                c.loop_stop()
        assert drops == []
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        for c in (publisher, holder):
            c.disconnect()
            c.loop_stop()
