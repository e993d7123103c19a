"""Issue #9 item 3: an agent killed with SIGKILL mid-replay and started again resumes the
replay instead of scoring it again under new timestamps; every window is stored exactly
once in InfluxDB. Real processes (`python -m agent run`), Mosquitto, aggregator, InfluxDB.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from agent_support import ROOT, TEST_FILE, agent_cfg, as_key, running_aggregator
from aggregator_support import wait_until

from agent import config as agent_config
from agent.pipeline import Agent
from agent.position import Position, PositionStore

pytestmark = pytest.mark.integration

TICKS = 203  # engine 34's 203 cycles are the longest of the three engines replayed


def _agent(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _saved(outbox: Path) -> Position | None:
    if not outbox.exists():
        return None
    store = PositionStore(outbox)
    try:
        return store.load()
    finally:
        store.close()


def _stored(influxdb, agent_id: str) -> collections.Counter[tuple[str, int]]:
    rows = influxdb.server.query(
        f"SELECT score, asset FROM prediction WHERE agent = '{agent_id}'",
        influxdb.database, epoch="ns")
    return collections.Counter((r["asset"], int(r["time"])) for r in rows)


def _scores(influxdb, agent_id: str) -> dict[tuple[str, int], float]:
    rows = influxdb.server.query(
        f"SELECT score, asset FROM prediction WHERE agent = '{agent_id}'",
        influxdb.database, epoch="ns")
    return {(r["asset"], int(r["time"])): float(r["score"]) for r in rows}


def test_an_agent_killed_mid_replay_resumes_and_every_window_is_stored_once(
    tmp_path: Path, mosquitto, influxdb
) -> None:
    # `start` left to default to "now", as in the incident: only the saved position can
    # give the second run the first run's timestamps. 25 ms a tick: about 5 s of replay.
    cfg = agent_cfg(tmp_path, mosquitto.url, agent_id="gw-resume", start=None,
                    speed=600 / 0.025)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    outbox = cfg.outbox_path

    with running_aggregator(tmp_path, mosquitto.url, influxdb):
        first = _agent(config)
        try:
            wait_until(lambda: (_saved(outbox) or Position({}, 0)).tick >= 60, 60,
                       what="the first run past tick 60")
            assert sum(_stored(influxdb, "gw-resume").values()) > 0
        finally:
            first.send_signal(signal.SIGKILL)
            out, _ = first.communicate(timeout=10)
        killed_at = _saved(outbox)
        assert killed_at is not None and 60 <= killed_at.tick < TICKS, out
        assert "starting replay of" in out

        second = _agent(config)
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 0, out
        resumed_at = _saved(outbox)
        assert resumed_at is not None
        # The second run may have started a little after the last saved position.
        plant = datetime.fromtimestamp(killed_at.plant_time or 0, UTC).isoformat()
        assert (f"resuming replay of {TEST_FILE} at tick {killed_at.tick} of {TICKS} "
                f"(plant time {plant})") in out
        assert (resumed_at.tick, resumed_at.start_epoch) == (TICKS, killed_at.start_epoch)
        scored_again = int(re.search(r"scored (\d+) windows", out)[1])  # type: ignore[index]

        # What one uninterrupted run gives, with the plant start the first run chose.
        start = datetime.fromtimestamp(killed_at.start_epoch, UTC).isoformat()
        whole = Agent(agent_cfg(tmp_path, mosquitto.url, agent_id="gw-whole", start=start),
                      record=True).run(drain_timeout_s=30)
        assert whole.drained
        expected = {as_key(s): s.score for s in whole.scored}
        assert len(expected) == len(whole.scored) > 300
        # The second run scored only the windows after the position it resumed from.
        assert scored_again == sum(e > killed_at.plant_time * 1e9 for _, e in expected)

        wait_until(lambda: sum(_stored(influxdb, "gw-resume").values()) >= len(expected), 30,
                   what=f"{len(expected)} predictions of gw-resume in InfluxDB")
        time.sleep(1.0)  # anything extra would arrive now
        stored = _stored(influxdb, "gw-resume")
        assert set(stored) == set(expected)
        assert max(stored.values()) == 1
        count = influxdb.server.query(
            "SELECT COUNT(score) FROM prediction WHERE agent = 'gw-resume'", influxdb.database)
        assert count[0]["count"] == len(expected)
        scores = _scores(influxdb, "gw-resume")
        assert all(scores[k] == pytest.approx(v, abs=1e-12) for k, v in expected.items())

        # Started once more, the finished replay is not scored again.
        third = _agent(config)
        out, _ = third.communicate(timeout=60)
        assert third.returncode == 0, out
        assert f"replay already complete at tick {TICKS}; nothing to do" in out
        assert "scored 0 windows" in out
    assert agent_config.load(config).source.resume  # the default the runs relied on
