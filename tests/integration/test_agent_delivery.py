"""The agent's end-to-end acknowledgement on a real Mosquitto (issue #9): a row leaves the
outbox when the aggregator confirms it, not on the broker's PUBACK.

A component test of the agent: ``Confirmer`` below plays the aggregator's part with plain
paho (it reads the agent's messages and publishes retained ``Delivery`` commands), so what
is tested is only what the agent does with them. The publisher gets a clock of the test's
own where timeouts must not interfere, so no resend comes unasked.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from agent_support import agent_cfg
from aggregator_support import wait_until
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer, free_port

from agent import config as agent_config
from agent.config import MqttConfig
from agent.delivery import PING_PONG_S, Confirmation
from agent.outbox import Outbox
from agent.pipeline import Agent, RunReport
from agent.publisher import Publisher
from aggregator.broker import EmbeddedBroker
from contract import wire

pytestmark = pytest.mark.integration

SITE, LINE, AGENT = "plant1", "line1", "gw-d"
MODEL = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """The publisher's clock, moved by the test only."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Confirmer:
    """The aggregator's role, reduced to what the agent sees of it: every data message of
    one agent, in the order they arrive, and retained Delivery commands back."""

    def __init__(self, broker: MosquittoServer, agent: str = AGENT) -> None:
        self.agent = agent
        self.received: list[wire.Envelope] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"confirmer-{agent}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the confirmer's subscription"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(wire.subscription(SITE, LINE, self.agent), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if wire.parse_topic(msg.topic).kind in wire.ITEM_KINDS:
            with self._lock:
                self.received.append(wire.decode(msg.payload))

    def seqs(self) -> list[int]:
        with self._lock:
            return [e.seq for e in self.received]

    def envelopes(self) -> list[wire.Envelope]:
        with self._lock:
            return list(self.received)

    def send(self, raw: bytes, topic: str | None = None) -> None:
        topic = topic or wire.command_topic(SITE, LINE, self.agent, "delivery")
        info = self.client.publish(topic, raw, qos=1, retain=True)
        info.wait_for_publish(5)

    def deliver(self, stored_through: int, missing: tuple[tuple[int, int], ...] = (),
                resend: str | None = None, agent: str | None = None) -> None:
        self.send(wire.encode(wire.Delivery(
            schema_=wire.SCHEMA, agent=agent or self.agent, ts=datetime.now(UTC),
            stored_through=stored_through, resend=resend,
            missing=[wire.Span(first=a, last=b) for a, b in missing])))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Confirmer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def confirmer(mosquitto: MosquittoServer) -> Iterator[Confirmer]:
    c = Confirmer(mosquitto)
    try:
        yield c
    finally:
        c.close()


def put(box: Outbox, n: int) -> list[int]:
    """``n`` prediction messages as the agent writes them."""
    seqs = []
    for _ in range(n):
        seq = box.allocate_seq()
        env = wire.Envelope.build(AGENT, seq, MODEL, [wire.Prediction(
            asset="a", window_start=T0, window_end=T0 + timedelta(minutes=seq), score=0.1,
            alert=False)])
        box.put(seq, str(env.msg_id), wire.topic(SITE, LINE, AGENT, "predictions"),
                "predictions", wire.encode(env), droppable=True, windows=1, ts=env.ts)
        seqs.append(seq)
    return seqs


@pytest.fixture
def publisher_for(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[Any]:
    started: list[Publisher] = []

    def make(*, confirm: bool = True, timeout_s: float = 60.0,
             clock: Clock | None = None) -> Publisher:
        confirmation = (Confirmation(site=SITE, line=LINE, agent=AGENT, timeout_s=timeout_s)
                        if confirm else None)
        extra = {} if clock is None else {"clock": clock}
        p = Publisher(MqttConfig(url=mosquitto.url), Outbox(tmp_path / "outbox.db"),
                      client_id=f"linewatch-agent-{AGENT}",
                      status_topic=wire.topic(SITE, LINE, AGENT, "status"),
                      status=lambda state, ts: wire.encode(wire.Status.build(AGENT, state)),
                      confirmation=confirmation, **extra)
        started.append(p)
        return p

    yield make
    for p in started:
        p.close()
        p.outbox.close()


def msg_ids(envelopes: list[wire.Envelope]) -> dict[int, set[str]]:
    ids: dict[int, set[str]] = {}
    for e in envelopes:
        ids.setdefault(e.seq, set()).add(str(e.msg_id))
    return ids


def all_sent(publisher: Publisher, confirmer: Confirmer, n: int) -> None:
    wait_until(lambda: publisher.published == n and len(set(confirmer.seqs())) == n, 15,
               what=f"{n} messages acknowledged by the broker and received")


def test_rows_stay_in_the_outbox_after_the_puback_until_the_aggregator_confirms_them(
    publisher_for: Any, confirmer: Confirmer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.publisher")
    publisher = publisher_for(clock=Clock())
    seqs = put(publisher.outbox, 8)
    publisher.start()
    all_sent(publisher, confirmer, 8)
    assert publisher.outbox.depth == publisher.outbox.unconfirmed == 8
    assert publisher.confirmed == 0 and not publisher.flush(0)

    confirmer.deliver(stored_through=4)
    wait_until(lambda: publisher.outbox.depth == 3, 10, what="seqs 0-4 released")
    assert [r.seq for r in publisher.outbox.rows(seqs)] == [5, 6, 7]
    assert publisher.confirmed == 5 and publisher.published == 8
    confirmer.deliver(stored_through=7)
    assert publisher.flush(10)
    assert publisher.confirmed == 8
    assert confirmer.seqs() == seqs  # each once: nothing was asked for again
    told = [r.getMessage() for r in caplog.records if "confirms delivery" in r.getMessage()]
    assert told == ["the aggregator confirms delivery: messages stored through seq 4"]


def test_a_missing_span_brings_exactly_those_messages_again(
    publisher_for: Any, confirmer: Confirmer
) -> None:
    clock = Clock()
    publisher = publisher_for(clock=clock)
    put(publisher.outbox, 10)
    publisher.start()
    all_sent(publisher, confirmer, 10)
    first = msg_ids(confirmer.envelopes())

    clock.now += PING_PONG_S  # the broker acknowledged them a while ago
    confirmer.deliver(stored_through=2, missing=((4, 5), (8, 8)))
    wait_until(lambda: publisher.outbox.confirmed_through == 2, 10, what="the delivery read")
    # Anything the delivery made the agent send again is handed to paho before a row
    # written after it was read: that row's arrival closes the list.
    (marker,) = put(publisher.outbox, 1)
    publisher.notify()
    wait_until(lambda: marker in confirmer.seqs(), 10, what="the marker")
    assert confirmer.seqs()[10:] == [4, 5, 8, marker]
    again = msg_ids(confirmer.envelopes())
    assert all(again[s] == first[s] for s in first)  # the same msg_ids: deduped downstream


def test_each_new_resend_id_brings_everything_above_stored_through_again_once(
    publisher_for: Any, confirmer: Confirmer
) -> None:
    publisher = publisher_for(clock=Clock())
    put(publisher.outbox, 6)
    publisher.start()
    all_sent(publisher, confirmer, 6)

    confirmer.deliver(stored_through=1, resend="r1")
    wait_until(lambda: len(confirmer.seqs()) == 10, 10, what="seqs 2-5 again")
    assert confirmer.seqs()[6:] == [2, 3, 4, 5]
    # The same id again (here with stored_through moved on): carried out already. Anything
    # it made the agent send would come before a row written once it was read.
    confirmer.deliver(stored_through=3, resend="r1")
    wait_until(lambda: publisher.outbox.confirmed_through == 3, 10, what="the delivery read")
    (marker,) = put(publisher.outbox, 1)
    publisher.notify()
    wait_until(lambda: marker in confirmer.seqs(), 10, what="the marker")
    assert confirmer.seqs()[10:] == [marker]
    confirmer.deliver(stored_through=3, resend="r2")
    wait_until(lambda: len(confirmer.seqs()) == 14, 10, what="seqs 4-6 again")
    assert confirmer.seqs()[11:] == [4, 5, marker]
    ids = msg_ids(confirmer.envelopes())
    assert all(len(ids[s]) == 1 for s in ids)  # the same message each time


def test_unconfirmed_messages_go_again_after_the_timeout_which_backs_off(
    publisher_for: Any, confirmer: Confirmer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.publisher")
    publisher = publisher_for(timeout_s=0.3)
    put(publisher.outbox, 4)
    publisher.start()
    wait_until(lambda: all(confirmer.seqs().count(s) >= 3 for s in range(4)), 30,
               what="every message sent three times")
    assert len(msg_ids(confirmer.envelopes())[0]) == 1  # the same message each time
    assert publisher.tracker is not None and publisher.tracker.timeout_s >= 1.2
    told = [r for r in caplog.records if "not confirmed by the aggregator" in r.getMessage()]
    assert told[0].levelno == logging.WARNING
    assert re.fullmatch(rf"[1-4] messages handed to broker {publisher.link.broker} but not "
                        r"confirmed by the aggregator for 0\.3 s; resending",
                        told[0].getMessage())
    assert {r.levelno for r in told[1:]} == {logging.DEBUG}

    confirmer.deliver(stored_through=3)
    assert publisher.flush(10)
    assert publisher.tracker.timeout_s == 0.3
    back = [r for r in caplog.records if "confirms messages again" in r.getMessage()]
    assert [r.levelno for r in back] == [logging.INFO]


def test_with_confirm_broker_a_row_leaves_on_its_puback(
    publisher_for: Any, confirmer: Confirmer
) -> None:
    # Acknowledged by the broker under confirm: aggregator, never confirmed ...
    first = publisher_for(clock=Clock())
    put(first.outbox, 3)
    first.start()
    all_sent(first, confirmer, 3)
    first.close()
    assert first.outbox.depth == 3
    first.outbox.close()
    # ... then released by a publisher that needs only the broker, with its own rows.
    second = publisher_for(confirm=False)
    assert second.outbox.depth == 3
    put(second.outbox, 2)
    second.start()
    assert second.outbox.depth <= 2  # released at start, not sent again
    assert second.flush(10)
    assert second.published == 2 and second.confirmed == 0
    assert confirmer.seqs() == [0, 1, 2, 3, 4]


def test_bad_commands_are_counted_logged_once_and_ignored(
    publisher_for: Any, confirmer: Confirmer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.publisher")
    publisher = publisher_for(clock=Clock())
    put(publisher.outbox, 2)
    publisher.start()
    all_sent(publisher, confirmer, 2)
    for raw in (b"{not json", b"{also not json"):
        confirmer.send(raw)
    confirmer.deliver(stored_through=1, agent="gw-other")
    confirmer.send(b"{}", topic=f"linewatch/v1/{SITE}/{LINE}/{AGENT}/cmd/reboot")
    wait_until(lambda: publisher.bad_commands == 4, 10, what="four bad commands")
    assert publisher.outbox.depth == 2
    lines = [r for r in caplog.records if r.getMessage().startswith("ignored")]
    loud = [r.getMessage() for r in lines if r.levelno >= logging.WARNING]
    # Once per reason: malformed (the second at DEBUG), another agent's, an unknown command.
    assert len(lines) == 4 and len(loud) == 3, loud
    assert loud[0].startswith("ignored an unreadable delivery command (malformed: ")
    assert loud[1] == (f"ignored a delivery command for agent 'gw-other' on "
                       f"{wire.command_topic(SITE, LINE, AGENT, 'delivery')}")
    assert loud[2] == f"ignored an unknown command on linewatch/v1/{SITE}/{LINE}/{AGENT}/cmd/reboot"
    confirmer.deliver(stored_through=1)
    assert publisher.flush(10)


def test_an_overflowing_outbox_reports_exactly_what_it_dropped(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The broker is down for the whole replay and the outbox holds 100 rows: the last
    health report names every message dropped, with the windows they held."""
    cfg = agent_cfg(tmp_path, mosquitto.url, AGENT).model_dump(mode="json")
    cfg["outbox"]["max_rows"] = 100
    cfg["publish"].update(max_items=1, confirm="aggregator")
    agent = Agent(agent_config.parse(cfg))
    draining = threading.Event()
    flush = agent.publisher.flush

    def flag_then_flush(timeout_s: float) -> bool:
        draining.set()
        return flush(timeout_s)

    agent.publisher.flush = flag_then_flush  # type: ignore[method-assign]
    mosquitto.stop()
    began = datetime.now(UTC)
    reports: list[RunReport] = []
    runner = threading.Thread(target=lambda: reports.append(agent.run(drain_timeout_s=120)))
    runner.start()
    try:
        assert draining.wait(60), "the replay's end"
        ended = datetime.now(UTC)
        last = agent.outbox.last_seq
        assert agent.outbox.dropped > 0
        mosquitto.start()
        with Confirmer(mosquitto) as confirmer:
            # The agent may have reconnected first: what it sent then went to nobody.
            confirmer.deliver(stored_through=-1, resend="subscribed")

            def reported() -> list[wire.Undeliverable] | None:
                healths = [e for e in confirmer.envelopes() if e.items[0].kind == "health"]
                if not healths:
                    return None
                final = max(healths, key=lambda e: e.seq).items[-1]
                assert isinstance(final, wire.Health)
                spans = final.undeliverable or []
                told = {s for u in spans for s in range(u.first, u.last + 1)}
                return spans if told | set(confirmer.seqs()) == set(range(last + 1)) else None

            spans = wait_until(reported, 30, what="every seq received or reported dropped")
            confirmer.deliver(stored_through=last)
            runner.join(60)
    finally:
        agent.stop()
        runner.join(30)
    dropped = [s for u in spans for s in range(u.first, u.last + 1)]
    assert len(dropped) == agent.outbox.dropped  # exactly: none twice, none received
    assert not set(dropped) & set(confirmer.seqs())
    assert {u.reason for u in spans} == {"dropped"}
    received = {e.seq: e for e in confirmer.envelopes()}
    delivered = sum(len(e.items) for e in received.values() if e.items[0].kind == "prediction")
    assert sum(u.windows for u in spans) + delivered == reports[0].progress.windows_scored
    for u in spans:
        assert u.first_at is not None and u.last_at is not None
        assert began <= u.first_at <= u.last_at <= ended
    assert reports[0].drained and reports[0].progress.confirmed == len(received)


def test_what_the_broker_sends_beyond_the_subscription_is_not_a_bad_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """amqtt, the embedded broker of the demo, hands a connecting client the retained
    messages matching anybody's subscription: the agent's own retained status reached it as
    an "unknown command", with a warning at every start. Real amqtt and a real listener
    subscribed to everything, as the aggregator is."""
    broker = EmbeddedBroker("127.0.0.1", free_port())
    broker.start()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="everything")
    subscribed = threading.Event()
    listener.on_subscribe = lambda *_a: subscribed.set()
    listener.connect("127.0.0.1", broker.port)
    listener.loop_start()
    publisher = None
    try:
        listener.subscribe("linewatch/v1/#", qos=1)
        assert subscribed.wait(5)
        status = wire.topic(SITE, LINE, AGENT, "status")
        listener.publish(status, b'{"retained": "status"}', qos=1, retain=True).wait_for_publish(5)
        caplog.set_level(logging.DEBUG, logger="agent.publisher")
        publisher = Publisher(
            MqttConfig(url=broker.url), Outbox(tmp_path / "outbox.db"),
            client_id=f"linewatch-agent-{AGENT}", status_topic=status,
            status=lambda state, ts: wire.encode(wire.Status.build(AGENT, state)),
            confirmation=Confirmation(site=SITE, line=LINE, agent=AGENT, timeout_s=60))
        publisher.start()
        wait_until(lambda: any(r.getMessage() == f"ignored a message on {status}, which this "
                               "agent did not subscribe to" for r in caplog.records), 10,
                   what="the stray retained status")
        assert publisher.bad_commands == 0
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        if publisher is not None:
            publisher.close()
            publisher.outbox.close()
        listener.loop_stop()
        listener.disconnect()
        broker.stop()
