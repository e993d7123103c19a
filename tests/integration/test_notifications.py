"""Notifications end to end (issue #13): a real aggregator (uvicorn, lifespan, subscriber)
on a real Mosquitto, agents' messages in, webhooks out to a real HTTP receiver on a
loopback port, the andon read back from the broker, ``/metrics`` scraped.

- A receiver that answers the first attempt 500 and does not answer the second in time
  gets exactly one announcement of the incident; the delivery log shows the retries; the
  escalation and the resolution are updates of the same incident (Slack: in its thread);
  the line's andon goes alarm -> warning -> ok (retained) with one event per change.
- After an outage, a backlog of old alerts opens every ticket, records every notification
  as a past incident and sends none; ``/metrics`` counts exactly what was sent.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from aggregator_support import (
    MODEL,
    Publisher,
    api_token,
    bearer,
    broker_settings,
    data_topic,
    payload,
    start_service,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from servers import HOST, MosquittoServer, free_port

from aggregator.notify.targets import TargetConfig
from aggregator.server import ServerThread
from contract.wire import Prediction, decode_andon_event, decode_andon_state

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5
SLACK_TS = "1764763200.000100"


class Receiver:
    """A webhook receiver on a free loopback port. Each path answers from its script
    (``500``, ``hang``: answer late, after the sender's timeout; anything else: 200), then
    200 once the script is used up; every request is kept."""

    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = scripts
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    script = receiver.scripts.get(self.path, [])
                    step = script.pop(0) if script else "ok"
                    receiver.requests.append({"path": self.path, "body": body, "step": step,
                                              "headers": dict(self.headers)})
                if step == "hang":
                    time.sleep(TIMEOUT_S * 3)
                status = 500 if step == "500" else 503 if step == "hang" else 200
                answer = (json.dumps({"ok": True, "ts": SLACK_TS}).encode()
                          if self.path == "/slack" else b"ok")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json"
                                     if self.path == "/slack" else "text/plain")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up waiting: that is the point of "hang"

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, free_port()), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path and r["step"] == "ok"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver({"/json": ["500", "hang"]})
    yield r
    r.close()


def windows(asset: str, end: datetime, scores: list[float]) -> list[Prediction]:
    """One-minute windows, the last ending at ``end``."""
    n = len(scores)
    return [Prediction(asset=asset, window_start=end - timedelta(minutes=n - i),
                       window_end=end - timedelta(minutes=n - i - 1), score=s,
                       alert=s >= MODEL.threshold) for i, s in enumerate(scores)]


class Andon:
    """A tower's view: everything published under linewatch/andon/v1/#."""

    def __init__(self, broker: MosquittoServer) -> None:
        self.states: list[Any] = []
        self.events: list[Any] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="andon-tower")
        self.client.on_message = self._on_message
        self.client.connect(HOST, broker.port)
        self.client.subscribe("linewatch/andon/v1/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/state"):
            self.states.append(decode_andon_state(msg.payload))
        else:
            self.events.append(decode_andon_event(msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def log_of(server: ServerThread, token: str, ticket: int) -> list[tuple[str, int, str, Any]]:
    answer = httpx.get(f"{server.url}/notifications", params={"ticket": ticket},
                       headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return sorted((e["target"], e["attempt"], e["status"], e["error"]) for e in answer.json())


def test_one_incident_one_notification_retried_and_its_updates_threaded(
    tmp_path: Path, mosquitto: MosquittoServer, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_HOOK_TOKEN", "Bearer hook-secret")
    targets = [
        TargetConfig(name="ops", kind="json", url=f"{receiver.url}/json",
                     secret_header="Authorization", secret_env="TEST_HOOK_TOKEN"),
        TargetConfig(name="slack", kind="slack", url=f"{receiver.url}/slack",
                     slack_channel="C42"),
        TargetConfig(name="teams", kind="teams", url=f"{receiver.url}/teams"),
        TargetConfig(name="elsewhere", kind="json", url=f"{receiver.url}/other",
                     sites=["plant9"]),
    ]
    settings = broker_settings(
        tmp_path, mosquitto, notify_targets=targets, notify_timeout_s=TIMEOUT_S,
        notify_retry_min_s=0.2, notify_retry_max_s=0.4, notify_escalation_interval_s=0)
    andon = Andon(mosquitto)
    server = start_service(settings)
    try:
        read = api_token(server, "read")
        write = api_token(server, "write")
        now = datetime.now(UTC)
        with Publisher(HOST, mosquitto.port, data_topic("gw-1")) as pub:
            pub.publish(payload("gw-1", 0, windows("pump-1", now, [0.9, 0.9, 0.9])))
            wait_until(lambda: receiver.accepted("/json"), 15, what="the announcement")
            # Each update is sent once the previous one is in, so a receiver sees them in order.
            pub.publish(payload("gw-1", 1, windows("pump-1", now + timedelta(minutes=1),
                                                   [0.95])))
            wait_until(lambda: len(receiver.accepted("/json")) == 2, 10, what="the escalation")
        [ticket] = httpx.get(f"{server.url}/tickets", headers=bearer(read)).json()
        answer = httpx.post(f"{server.url}/tickets/{ticket['id']}/ack", headers=bearer(write))
        assert answer.status_code == 200
        answer = httpx.post(f"{server.url}/tickets/{ticket['id']}/resolve",
                            json={"outcome": "preventive_action"}, headers=bearer(write))
        assert answer.status_code == 200, answer.text
        wait_until(lambda: len(receiver.accepted("/json")) == 3, 10, what="the resolution")
        wait_until(lambda: len(receiver.accepted("/slack")) == 3
                   and len(receiver.accepted("/teams")) == 3, 10, what="slack and teams")
        wait_until(lambda: len(andon.events) == 3, 10, what="the andon events")

        # JSON: one announcement after a 500 and a timeout; two updates of the same incident.
        attempts = [r for r in receiver.requests if r["path"] == "/json"]
        assert [r["step"] for r in attempts] == ["500", "hang", "ok", "ok", "ok"]
        first = {r["headers"]["Idempotency-Key"] for r in attempts[:3]}
        assert len(first) == 1  # the same notification, attempted three times
        assert all(r["headers"]["Authorization"] == "Bearer hook-secret" for r in attempts)
        bodies = [r["body"] for r in receiver.accepted("/json")]
        assert [(b["event"], b["update"]) for b in bodies] == [
            ("opened", False), ("escalated", True), ("resolved", True)]
        assert {b["incident"] for b in bodies} == {f"linewatch:plant1:ticket-{ticket['id']}"}
        assert bodies[2]["ticket"]["outcome"] == "preventive_action"
        # Slack: the updates are replies in the announcement's thread; Teams: cards.
        slack = [r["body"] for r in receiver.accepted("/slack")]
        assert "thread_ts" not in slack[0] and slack[0]["channel"] == "C42"
        assert [s.get("thread_ts") for s in slack[1:]] == [SLACK_TS, SLACK_TS]
        teams = [r["body"]["attachments"][0]["content"] for r in receiver.accepted("/teams")]
        assert [c["body"][0]["text"].startswith("update:") for c in teams] == [
            False, True, True]
        assert not [r for r in receiver.requests if r["path"] == "/other"]

        # The delivery log: every attempt, in our words, without the secret or the URL.
        log = log_of(server, read, ticket["id"])
        ops = [e for e in log if e[0] == "ops"]
        assert ops == [("ops", 1, "error", "HTTP 500"),
                       ("ops", 1, "sent", None), ("ops", 1, "sent", None),
                       ("ops", 2, "error", f"no answer within {TIMEOUT_S:g} s"),
                       ("ops", 3, "sent", None)]
        assert "hook-secret" not in str(log) and receiver.url not in str(log)

        # The andon: the current state retained, one event per change of state.
        assert [(e.event, e.level) for e in andon.events] == [
            ("opened", "alarm"), ("acknowledged", "warning"), ("resolved", "ok")]
        assert andon.states[-1].level == "ok" and andon.states[-1].open == 0
        assert any(s.level == "alarm" and [t.asset for t in s.tickets] == ["pump-1"]
                   for s in andon.states)
    finally:
        server.stop()
        andon.close()
    late = Andon(mosquitto)  # a tower that connects now gets the state at once
    try:
        wait_until(lambda: late.states, 5, what="the retained state")
        assert late.states[0].level == "ok" and late.events == []
    finally:
        late.close()


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def test_a_backlog_after_an_outage_notifies_nothing_and_metrics_count_it(
    tmp_path: Path, mosquitto: MosquittoServer, receiver: Receiver,
) -> None:
    settings = broker_settings(
        tmp_path, mosquitto, notify_timeout_s=TIMEOUT_S, notify_past_after_s=3600,
        notify_targets=[TargetConfig(name="ops", kind="json", url=f"{receiver.url}/ok")])
    server = start_service(settings)
    assets = [f"pump-{i}" for i in range(12)]
    outage_end = datetime.now(UTC) - timedelta(hours=6)  # the newest alert: 6 h ago
    try:
        read = api_token(server, "read")
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        sent = [payload("gw-1", seq, windows(asset, outage_end, [0.2, 0.9, 0.9, 0.9]))
                for seq, asset in enumerate(assets)]
        with Publisher(HOST, mosquitto.port, data_topic("gw-1")) as pub:
            for raw in sent:
                pub.publish(raw)
            pub.publish(sent[0])  # a duplicate
            pub.publish(b"{not json")  # rejected, quarantined
            wait_until(lambda: server.app.state.ingestor.counts.accepted == len(assets)
                       and server.app.state.ingestor.counts.rejected, 15, what="the backlog")
        found = httpx.get(f"{server.url}/tickets", headers=bearer(read)).json()
        assert sorted(t["asset"] for t in found) == sorted(assets)
        # Recorded in the transaction that opened the tickets: nothing is left to send.
        log = httpx.get(f"{server.url}/notifications", params={"target": "ops"},
                        headers=bearer(read)).json()
        assert len(log) == len(assets)
        assert {(e["target"], e["status"], e["attempt"]) for e in log} == {
            ("ops", "suppressed: past incident", 0)}
        history = httpx.get(f"{server.url}/tickets/{found[0]['id']}/history",
                            headers=bearer(read)).json()
        assert [h["action"] for h in history] == ["not_notified"]
        assert history[0]["detail"]["reason"] == "past incident"

        # The andon still shows the open tickets (state), with no event for any of them.
        wait_until(lambda: server.app.state.notifier.outcomes.get(("andon", "sent")) == 12,
                   10, what="the andon states")
        text = httpx.get(f"{server.url}/metrics", headers=bearer(read)).text
        assert metric(text, "linewatch_ingest_messages_total", status="accepted") == 12
        assert metric(text, "linewatch_ingest_messages_total", status="duplicate") == 1
        assert metric(text, "linewatch_ingest_rejected_total", reason="malformed") == 1
        assert metric(text, "linewatch_ingest_items_total", kind="prediction") == 48
        assert metric(text, "linewatch_tickets", kind="maintenance", status="open") == 12
        assert metric(text, "linewatch_notifications", target="ops",
                      status="suppressed") == 12
        assert metric(text, "linewatch_notifications", target="andon", status="sent") == 12
        assert metric(text, "linewatch_notification_attempts_total", target="andon",
                      status="sent") == 12
        assert metric(text, "linewatch_series_write_seconds_count") >= 1
        assert metric(text, "linewatch_delivery_gaps_opened_total") == 0
        assert metric(text, "linewatch_ingest_queue_depth") == 0
        assert metric(text, "linewatch_sql_up") == 1
        assert receiver.requests == []
    finally:
        server.stop()
