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

import threading
from pathlib import Path

import pytest
from agent_support import agent_cfg, as_key, running_aggregator
from aggregator_support import wait_until
from test_end_to_end import expected_ticket_assets, stored_scores

from agent.pipeline import Agent, RunReport

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
