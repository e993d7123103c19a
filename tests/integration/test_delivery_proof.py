"""Delivery you can prove (issue 9): the worst timings, on real parts only.

Real Mosquitto (killed with SIGKILL, so it saves nothing), real InfluxDB, real PostgreSQL,
the real agent and the real aggregator; nothing of ours is replaced.

- the broker dies before its first autosave and comes back with no session for the
  aggregator; the agent flushes its whole backlog into a broker that has no subscriber for
  it (the broker acknowledges every message) before the aggregator is back: every window
  is still stored once and every ticket opened, because the agent keeps each message until
  the aggregator confirms it stored it;
- an outbox too small for an outage drops telemetry; the aggregator shows the agent's
  completeness below 100 % with the exact number of dropped windows;
- two replicas in a ``$share`` group, one SIGKILLed mid-stream: nothing lost, nothing
  doubled.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from agent_support import ROOT, agent_cfg, as_key, free_port, running_aggregator
from aggregator_support import api_token, bearer, drop_schema, wait_until
from test_end_to_end import expected_ticket_assets, stored_scores

from agent.config import MqttConfig
from agent.delivery import Confirmation
from agent.outbox import Outbox
from agent.pipeline import Agent, RunReport
from agent.publisher import Publisher
from contract import wire

pytestmark = pytest.mark.integration


def _run_in_background(agent: Agent, drain_timeout_s: float) -> tuple[threading.Thread,
                                                                        list[RunReport]]:
    reports: list[RunReport] = []
    runner = threading.Thread(target=lambda: reports.append(agent.run(
        drain_timeout_s=drain_timeout_s)), daemon=True)
    runner.start()
    return runner, reports


def test_a_broker_killed_before_its_autosave_loses_nothing(
    tmp_path: Path, mosquitto, influxdb
) -> None:
    agent = Agent(agent_cfg(tmp_path, mosquitto.url, agent_id="gw-kill", speed=20000),
                  record=True)
    with running_aggregator(tmp_path, mosquitto.url, influxdb) as api:
        runner, reports = _run_in_background(agent, drain_timeout_s=180)
        wait_until(lambda: len(stored_scores(influxdb, "gw-kill")) > 50, 60,
                   what="the first windows stored")
        mosquitto.kill()  # before any autosave: its sessions and queues are gone
        assert api.get("/healthz").status_code == 200
    # The aggregator is down while the broker comes back empty. The agent reconnects and
    # hands its whole backlog to a broker with no subscriber for it; the broker
    # acknowledges every message, and they go nowhere.
    wait_until(lambda: agent.progress.ticks == agent.progress.total_ticks, 60,
               what="the replay to end")
    mosquitto.start()
    wait_until(lambda: agent.publisher.connected and agent.outbox.unsent == 0, 60,
               what="the agent to hand every message to the broker")
    assert agent.outbox.depth > 0, "messages the broker acknowledged are still kept"
    assert not reports

    with running_aggregator(tmp_path, mosquitto.url, influxdb) as api:
        runner.join(120)
        assert reports and reports[0].drained, "every message confirmed by the aggregator"
        scored = reports[0].scored
        wait_until(lambda: len(stored_scores(influxdb, "gw-kill")) >= len(scored), 30,
                   what="every window stored")
        stored = stored_scores(influxdb, "gw-kill")
        assert sorted(stored) == sorted(as_key(s) for s in scored)
        count = influxdb.server.query(
            "SELECT COUNT(score) FROM prediction WHERE agent = 'gw-kill'", influxdb.database)
        assert count[0]["count"] == len(scored)

        want = expected_ticket_assets(scored, agent.threshold, k=3, n=5)
        assert want, "the replay holds failing engines"
        tickets = api.get("/tickets", params={"kind": "maintenance"}).json()
        assert sorted(t["asset"] for t in tickets) == sorted(want)
        delivery = {a["agent"]: a for a in api.get("/agents").json()}["gw-kill"]["delivery"]
        assert delivery["outstanding_messages"] == 0
        assert delivery["completeness_24h"] == pytest.approx(100.0)
        # Brought back by the restarted aggregator's request, not by the agent's timeout.
        assert delivery["resend_requests"] >= 1
        assert agent.publisher.resent > 0


# -- a gap and a reorder, filled by the agent itself -------------------------------------------
SITE, LINE = "plant1", "line1"


def _put(box: Outbox, agent: str, n: int) -> list[str]:
    """``n`` one-prediction messages as the agent writes them; their msg_ids."""
    ids = []
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(n):
        seq = box.allocate_seq()
        env = wire.Envelope.build(agent, seq, MODEL_REF, [wire.Prediction(
            asset="pump-1", window_start=t0, window_end=t0 + timedelta(minutes=seq),
            score=0.1, alert=False)])
        box.put(seq, str(env.msg_id), wire.topic(SITE, LINE, agent, "predictions"),
                "predictions", wire.encode(env), droppable=True, windows=1, ts=env.ts)
        ids.append(str(env.msg_id))
    return ids


MODEL_REF = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)


def test_a_gap_and_a_reorder_are_counted_and_the_gap_is_refilled_by_the_agent(
    tmp_path: Path, mosquitto
) -> None:
    """Seqs 1-6 were handed to a broker that lost them (marked sent, never received): the
    aggregator sees 0, then 7 (a gap), asks for 1-6 once its grace has passed, and the
    agent's own outbox sends them again, each arriving below the highest seq seen (a
    reorder). Nothing is timed out: the agent's confirmation timeout is an hour."""
    agent = "gw-gap"
    box = Outbox(tmp_path / "outbox.db")
    _put(box, agent, 10)
    box.mark_sent(range(1, 7), at=time.monotonic() - 60)
    publisher = Publisher(
        MqttConfig(url=mosquitto.url), box, client_id=f"linewatch-agent-{agent}",
        status_topic=wire.topic(SITE, LINE, agent, "status"),
        status=lambda state, ts: wire.encode(wire.Status.build(agent, state)),
        confirmation=Confirmation(site=SITE, line=LINE, agent=agent, timeout_s=3600))
    with running_aggregator(tmp_path, mosquitto.url, delivery_gap_grace_s=0.5) as api:
        publisher.start()
        try:
            assert publisher.flush(60), "every message confirmed"
            assert publisher.resent == 6
            delivery = {a["agent"]: a for a in api.get("/agents").json()}[agent]["delivery"]
            assert delivery["stored_through"] == 9
            assert delivery["gaps_opened"] == 1
            assert delivery["reorders"] == 6
            assert delivery["outstanding_messages"] == 0
            assert delivery["messages_received"] == 10
            health = api.get("/healthz").json()
            assert health["counts"]["duplicates"] == 0
        finally:
            publisher.close()
            box.close()


# -- an outbox too small for the outage --------------------------------------------------------
def test_an_overflowing_outbox_shows_as_completeness_with_the_exact_dropped_count(
    tmp_path: Path, mosquitto
) -> None:
    mosquitto.stop()
    cfg = agent_cfg(tmp_path, mosquitto.url, agent_id="gw-small").model_copy(deep=True)
    cfg.outbox.max_rows = 100
    cfg.publish.max_items = 2  # about 220 prediction messages: more than the outbox holds
    agent = Agent(cfg, record=True)
    with running_aggregator(tmp_path, mosquitto.url) as api:
        runner, reports = _run_in_background(agent, drain_timeout_s=120)
        wait_until(lambda: agent.progress.ticks == agent.progress.total_ticks, 60,
                   what="the replay to end with the broker down")
        dropped = agent.outbox.dropped
        assert dropped > 0
        mosquitto.start()
        runner.join(150)
        assert reports and reports[0].drained
        scored = reports[0].scored

        def delivery() -> dict:
            return {a["agent"]: a for a in api.get("/agents").json()}["gw-small"]["delivery"]

        wait_until(lambda: delivery()["dropped_messages"] == dropped, 30,
                   what="the agent's report of what it dropped")
        stored = api.get("/healthz").json()["counts"]["predictions_stored"]
        d = delivery()
        assert 0 < stored < len(scored)
        # Every window scored is either stored or reported dropped, none both, none neither.
        assert d["dropped_windows"] == len(scored) - stored
        assert d["windows_received"] == stored
        assert d["outstanding_messages"] == 0
        assert d["completeness_24h"] == pytest.approx(100 * stored / len(scored), abs=0.01)
        hours = api.get("/agents/gw-small/completeness").json()
        assert hours["windows_undeliverable"] == len(scored) - stored
        assert hours["windows_received"] == stored
        assert sum(h["windows_received"] for h in hours["hours"]) == stored


# -- two replicas in a shared group, one SIGKILLed -----------------------------------------------
def _replica(tmp_path: Path, name: str, mosquitto, influxdb, postgres_url: str
             ) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = tmp_path / f"{name}.env"
    env.write_text(
        f"LINEWATCH_MQTT_URL={mosquitto.url}\n"
        "LINEWATCH_MQTT_PROTOCOL=5\n"
        "LINEWATCH_MQTT_SHARED_GROUP=aggregators\n"
        f"LINEWATCH_MQTT_CLIENT_ID={name}\n"
        f"LINEWATCH_DB_URL={postgres_url}\n"
        f"LINEWATCH_INFLUX_URL={influxdb.url}\n"
        f"LINEWATCH_INFLUX_DATABASE={influxdb.database}\n"
        f"LINEWATCH_HTTP_PORT={port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", "serve", "-c", str(env)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            text=True)
    return proc, port


def _subscribed(port: int) -> bool:
    try:
        return bool(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200)
    except httpx.TransportError:
        return False


def test_two_replicas_one_sigkilled_mid_stream_lose_nothing_and_double_nothing(
    tmp_path: Path, mosquitto, influxdb, postgres_url: str
) -> None:
    """The killed replica's session keeps what the broker had handed it; the agent, never
    told those were stored, sends them again after its confirmation timeout, and the
    survivor stores them once."""
    drop_schema(postgres_url)
    procs = [_replica(tmp_path, f"agg-{i}", mosquitto, influxdb, postgres_url)
             for i in range(2)]
    try:
        for _, port in procs:
            wait_until(lambda port=port: _subscribed(port), 60, what="a replica subscribed")
        cfg = agent_cfg(tmp_path, mosquitto.url, agent_id="gw-pair", speed=40000)
        cfg.publish.confirm_timeout_s = 2
        agent = Agent(cfg, record=True)
        runner, reports = _run_in_background(agent, drain_timeout_s=120)
        wait_until(lambda: len(stored_scores(influxdb, "gw-pair")) > 50, 60,
                   what="the first windows stored")
        procs[0][0].kill()  # SIGKILL: no goodbye, no ack of what it holds
        procs[0][0].wait()
        runner.join(150)
        assert reports and reports[0].drained, "every message confirmed by the survivor"
        scored = reports[0].scored
        wait_until(lambda: len(stored_scores(influxdb, "gw-pair")) >= len(scored), 30,
                   what="every window stored")
        assert sorted(stored_scores(influxdb, "gw-pair")) == sorted(as_key(s) for s in scored)
        count = influxdb.server.query(
            "SELECT COUNT(score) FROM prediction WHERE agent = 'gw-pair'", influxdb.database)
        assert count[0]["count"] == len(scored)
        token = api_token(postgres_url, "read")
        with httpx.Client(base_url=f"http://127.0.0.1:{procs[1][1]}", headers=bearer(token),
                          timeout=10) as api:
            want = expected_ticket_assets(scored, agent.threshold, k=3, n=5)
            tickets = api.get("/tickets", params={"kind": "maintenance"}).json()
            assert sorted(t["asset"] for t in tickets) == sorted(want)
            d = {a["agent"]: a for a in api.get("/agents").json()}["gw-pair"]["delivery"]
            assert d["outstanding_messages"] == 0 and d["dropped_messages"] == 0
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
