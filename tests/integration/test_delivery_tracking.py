"""Delivery tracking end to end: the real aggregator on the fixture's Mosquitto, a raw paho
client publishing hand-built envelopes, and another one reading the retained Delivery on
the agent's command topic; then two ingestors sharing PostgreSQL on one agent at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from agent_support import running_aggregator
from aggregator_support import (
    MODEL,
    Publisher,
    data_topic,
    drop_schema,
    payload,
    predictions,
    store_settings,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer
from sqlalchemy import func, select

from aggregator.db import AgentDelivery, AgentRecord, DeliveryHour, open_engine, open_sessions
from aggregator.ingest import Ingestor, RawMessage
from aggregator.series.sqlite import SqliteSeriesStore
from contract.wire import Delivery, Envelope, Span, command_topic, decode_delivery, encode

pytestmark = pytest.mark.integration

AGENT = "gw-d"
GRACE_S = 0.5


class Watcher:
    """Subscribes to one agent's delivery command (again after every reconnect) and keeps
    every Delivery it reads, retained ones included."""

    def __init__(self, broker: MosquittoServer, agent: str = AGENT) -> None:
        self.topic = command_topic("plant1", "line3", agent, "delivery")
        self.received: list[Delivery] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{agent}")
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append(decode_delivery(message.payload))

    def all(self) -> list[Delivery]:
        with self._lock:
            return list(self.received)

    def latest(self) -> Delivery | None:
        found = self.all()
        return found[-1] if found else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watcher(mosquitto: MosquittoServer) -> Iterator[Watcher]:
    w = Watcher(mosquitto)
    yield w
    w.close()


@pytest.fixture
def service(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[httpx.Client]:
    with running_aggregator(tmp_path, mosquitto.url, delivery_gap_grace_s=GRACE_S) as api:
        yield api


def publish(broker: MosquittoServer, seqs: list[int], agent: str = AGENT) -> None:
    with Publisher(broker.host, broker.port, data_topic(agent)) as pub:
        for seq in seqs:
            pub.publish(payload(agent, seq, predictions("pump-1", [0.1, 0.2], start=2 * seq)))


def says(watcher: Watcher, stored_through: int, missing: list[Span]) -> bool:
    latest = watcher.latest()
    return (latest is not None and latest.stored_through == stored_through
            and latest.missing == missing)


def delivery_of(api: httpx.Client, agent: str = AGENT) -> dict[str, Any]:
    (found,) = [a["delivery"] for a in api.get("/agents").json() if a["agent"] == agent]
    assert found is not None
    return found  # type: ignore[no-any-return]


def test_stored_messages_are_confirmed_on_the_agents_command_topic(
    mosquitto: MosquittoServer, service: httpx.Client, watcher: Watcher
) -> None:
    publish(mosquitto, list(range(5)))
    wait_until(lambda: says(watcher, 4, []), 15, what="a delivery through seq 4")
    latest = watcher.latest()
    assert latest is not None and (latest.agent, latest.resend) == (AGENT, None)
    assert delivery_of(service)["stored_through"] == 4

    # Retained: a client that subscribes later reads the latest state at once.
    late = Watcher(mosquitto)
    try:
        wait_until(lambda: says(late, 4, []), 10, what="the retained delivery")
    finally:
        late.close()


def test_a_gap_is_asked_for_once_its_grace_has_passed_and_released_when_filled(
    mosquitto: MosquittoServer, service: httpx.Client, watcher: Watcher
) -> None:
    publish(mosquitto, [0, 1, 5])
    wait_until(lambda: says(watcher, 1, [Span(first=2, last=4)]), 15, what="the gap asked for")
    delivery = delivery_of(service)
    (gap,) = delivery["open_gaps"]
    assert (gap["first"], gap["last"], delivery["outstanding_messages"]) == (2, 4, 3)
    since = datetime.fromisoformat(gap["since"])
    asked = [d for d in watcher.all() if d.missing]
    assert asked and all(d.ts - since >= timedelta(seconds=GRACE_S) for d in asked)

    publish(mosquitto, [3, 2, 4])
    wait_until(lambda: says(watcher, 5, []), 15, what="the gap filled")
    delivery = delivery_of(service)
    assert (delivery["gaps_opened"], delivery["reorders"], delivery["open_gaps"]) == (1, 3, [])
    health = service.get("/healthz").json()
    assert (health["delivery"]["gaps_opened"], health["delivery"]["reorders"]) == (1, 3)
    assert health["confirmations"]["published"] >= 2


def test_a_broker_that_lost_our_session_makes_every_agent_resend(
    mosquitto: MosquittoServer, service: httpx.Client, watcher: Watcher
) -> None:
    publish(mosquitto, [0, 1, 2])
    wait_until(lambda: says(watcher, 2, []), 15, what="a delivery through seq 2")
    assert watcher.latest().resend is None  # type: ignore[union-attr]

    mosquitto.stop()
    (mosquitto.tmpdir / "mosquitto.db").unlink(missing_ok=True)  # restarted without its data
    mosquitto.start()

    def resend() -> str | None:
        latest = watcher.latest()
        return None if latest is None else latest.resend

    resend_id = wait_until(resend, 30, what="a resend request")
    assert watcher.latest().stored_through == 2  # type: ignore[union-attr]
    health = service.get("/healthz").json()
    assert health["confirmations"]["resend_rounds"] == 1
    assert health["delivery"]["resend_requests"] == 1
    assert delivery_of(service)["resend_requests"] == 1

    # Later deliveries repeat the id: an agent away at the time still sees it.
    publish(mosquitto, [3])
    wait_until(lambda: says(watcher, 3, []), 15, what="a delivery through seq 3")
    assert resend() == resend_id


def test_fleet_figures_in_healthz_survive_a_restart(
    tmp_path: Path, mosquitto: MosquittoServer, watcher: Watcher
) -> None:
    with running_aggregator(tmp_path, mosquitto.url, delivery_gap_grace_s=GRACE_S) as api:
        publish(mosquitto, [0, 2])
        wait_until(lambda: says(watcher, 0, [Span(first=1, last=1)]), 15, what="the gap")
        before = api.get("/healthz").json()
    assert (before["delivery"]["gaps_opened"], before["delivery"]["outstanding_messages"],
            before["delivery"]["messages_received"], before["counts"]["accepted"]) == (1, 1, 2, 2)

    with running_aggregator(tmp_path, mosquitto.url, delivery_gap_grace_s=GRACE_S) as api:
        after = api.get("/healthz").json()
    assert after["delivery"] == before["delivery"]
    assert (after["counts"]["accepted"], after["confirmations"]["resend_rounds"]) == (0, 0)


def test_two_ingestors_on_one_agent_at_once_keep_exact_counts(
    postgres_url: str, tmp_path: Path
) -> None:
    """Replicas in a $share group: each gets part of one agent's messages, at once."""
    drop_schema(postgres_url)
    count, agent = 120, "gw-pg"
    start = datetime.now(UTC) - timedelta(minutes=30)
    raw = [
        RawMessage(data_topic(agent), encode(Envelope(
            schema=1, msg_id=uuid.uuid4(), agent=agent, ts=start + timedelta(seconds=seq),
            seq=seq, model=MODEL, items=predictions("pump-1", [0.1, 0.2], start=2 * seq))))
        for seq in range(count)
    ]
    engines = [open_engine(postgres_url) for _ in range(2)]
    stores = [SqliteSeriesStore(tmp_path / f"series-{i}.db") for i in range(2)]
    settings = store_settings(tmp_path, db_url=postgres_url)
    ingestors = [Ingestor(store, open_sessions(engine), settings)
                 for store, engine in zip(stores, engines, strict=True)]
    ready = threading.Barrier(2)
    errors: list[BaseException] = []

    def replica(ingestor: Ingestor, share: list[RawMessage]) -> None:
        try:
            ready.wait(10)
            for i in range(0, len(share), 3):
                ingestor.handle_batch(share[i:i + 3])
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(ingestors[i], raw[i::2]))
               for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == [] and not any(t.is_alive() for t in threads)
        with open_sessions(engines[0])() as session:
            row = session.get(AgentDelivery, agent)
            assert row is not None
            assert (row.messages, row.windows, row.duplicates, row.resets) == (
                count, 2 * count, 0, 0)
            assert (row.stored_through, row.highest_seq, row.outstanding) == (
                count - 1, count - 1, 0)
            assert row.ranges == {"received": [], "gaps": []}
            # Every gap a replica saw open was closed by the other one's message.
            assert row.reorders >= row.gaps_opened
            assert session.scalar(select(func.sum(DeliveryHour.windows_received))) == 2 * count
            assert session.scalar(select(AgentRecord.predictions_count)) == 2 * count
    finally:
        for store in stores:
            store.close()
        for engine in engines:
            engine.dispose()
        drop_schema(postgres_url)
