"""The whole loop on real parts: agent -> real Mosquitto -> aggregator -> real InfluxDB.

No component of ours is replaced: the agent replays C-MAPSS FD001 test engines through the
shipped ONNX model, publishes through its outbox, and the aggregator stores and tickets.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

import pytest
from agent_support import WITH_AGGREGATOR, agent_cfg, as_key, running_aggregator
from aggregator_support import wait_until

from agent.pipeline import Agent, Scored

pytestmark = pytest.mark.integration


def expected_ticket_assets(scored: list[Scored], threshold: float, k: int, n: int) -> set[str]:
    """The k-of-n rule computed independently from what the agent scored."""
    out = set()
    recent: dict[str, deque[bool]] = {}
    for s in sorted(scored, key=lambda s: (s.asset, s.window_end)):
        q = recent.setdefault(s.asset, deque(maxlen=n))
        q.append(s.score >= threshold)
        if sum(q) >= k:
            out.add(s.asset)
    return out


@pytest.fixture
def aggregator(tmp_path: Path, mosquitto, influxdb):
    with running_aggregator(tmp_path, mosquitto.url, influxdb) as api:
        yield api


def stored_scores(influxdb, agent_id: str) -> dict[tuple[str, int], float]:
    rows = influxdb.server.query(
        f"SELECT score, asset FROM prediction WHERE agent = '{agent_id}'",
        influxdb.database, epoch="ns",
    )
    return {(r["asset"], int(r["time"])): float(r["score"]) for r in rows}


def test_every_scored_window_is_stored_once_and_the_failing_engines_get_tickets(
    tmp_path: Path, mosquitto, influxdb, aggregator
) -> None:
    agent = Agent(agent_cfg(tmp_path, mosquitto.url, confirm=WITH_AGGREGATOR), record=True)
    threshold = agent.threshold
    report = agent.run(drain_timeout_s=30)
    assert report.drained
    scored = report.scored
    # Window 30, hop 1: engine 1 has 31 cycles, 31 has 196, 34 has 203.
    assert len(scored) == len({as_key(s) for s in scored}) > 300

    wait_until(lambda: len(stored_scores(influxdb, "gw-e2e")) >= len(scored), 30,
               what="all predictions in InfluxDB")
    stored = stored_scores(influxdb, "gw-e2e")
    assert len(stored) == len(scored)
    for s in scored:
        assert stored[as_key(s)] == pytest.approx(s.score, abs=1e-12)
    count = influxdb.server.query(
        "SELECT COUNT(score) FROM prediction WHERE agent = 'gw-e2e'", influxdb.database)
    assert count[0]["count"] == len(scored)

    want = expected_ticket_assets(scored, threshold, k=3, n=5)
    assert {"engine-031", "engine-034"} <= want and "engine-001" not in want
    tickets = aggregator.get("/tickets", params={"status": "open"}).json()
    assert sorted(t["asset"] for t in tickets if t["kind"] == "maintenance") == sorted(want)

    health = aggregator.get("/healthz").json()
    assert health["counts"]["duplicates"] == 0
    assert health["counts"]["predictions_stored"] == len(scored)
    agents = {a["agent"]: a for a in aggregator.get("/agents").json()}
    assert agents["gw-e2e"]["predictions_count"] == len(scored)

    # Health and drift are kept too. The agent's last health report (forced at the end of
    # the replay) counts every scored window; it may land after the last prediction.
    def last_health() -> dict | None:
        agents = {a["agent"]: a for a in aggregator.get("/agents").json()}
        return agents["gw-e2e"]["health"]

    wait_until(lambda: (last_health() or {}).get("windows_scored") == len(scored), 30,
               what="the agent's last health report")
    reported = agent.progress.drift_events + agent.progress.quality_events

    def drift() -> list[dict]:
        return aggregator.get("/drift", params={"agent": "gw-e2e", "limit": 10_000}).json()

    wait_until(lambda: len(drift()) >= reported, 30, what=f"{reported} drift events")
    events = drift()
    assert len(events) == reported
    assert {e["model_name"] for e in events} <= {agent.model_ref.name}
    counted = influxdb.server.query(
        "SELECT COUNT(seq) FROM drift WHERE agent = 'gw-e2e'", influxdb.database)
    assert (counted[0]["count"] if counted else 0) == reported
    assert aggregator.get("/healthz").json()["counts"]["drift_events_stored"] == reported


def test_broker_outage_during_replay_loses_nothing_and_doubles_nothing(
    tmp_path: Path, mosquitto, influxdb, aggregator
) -> None:
    """The broker is down when the agent starts and comes back mid-replay."""
    mosquitto.stop()
    cfg = agent_cfg(tmp_path, mosquitto.url, agent_id="gw-outage", confirm=WITH_AGGREGATOR,
                    speed=30000)
    agent = Agent(cfg, record=True)

    runner = threading.Thread(target=lambda: setattr(agent, "report", agent.run(
        drain_timeout_s=60)))
    runner.start()
    wait_until(lambda: agent.progress.windows_scored > 100, 30, what="the agent scoring offline")
    assert agent.progress.published == 0 and agent.outbox.depth > 0
    mosquitto.start()
    runner.join(timeout=90)
    assert not runner.is_alive()
    report = agent.report
    assert report.drained

    wait_until(lambda: len(stored_scores(influxdb, "gw-outage")) >= len(report.scored), 30,
               what="all predictions stored after the outage")
    stored = stored_scores(influxdb, "gw-outage")
    assert len(stored) == len(report.scored)
    for s in report.scored:
        assert stored[as_key(s)] == pytest.approx(s.score, abs=1e-12)
    assert aggregator.get("/healthz").json()["counts"]["duplicates"] == 0
