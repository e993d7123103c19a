"""The agent facing bad readings and sudden death, on a real broker and aggregator."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from agent_support import ROOT, TEST_FILE, WITH_AGGREGATOR, agent_cfg, running_aggregator
from aggregator_support import wait_until

from agent import config as agent_config
from agent.pipeline import Agent

pytestmark = pytest.mark.integration


@pytest.fixture
def aggregator(tmp_path: Path, mosquitto):
    with running_aggregator(tmp_path, mosquitto.url) as api:
        yield api


def test_nan_readings_are_skipped_counted_reported_and_the_rest_is_scored(
    tmp_path: Path, mosquitto, aggregator, caplog
) -> None:
    lines = gzip.decompress(TEST_FILE.read_bytes()).decode().splitlines()
    # Engine 34, cycles 100-104: sensor_11 (column 16) unreadable.
    bad = {i for i, ln in enumerate(lines)
           if ln.split()[0] == "34" and 100 <= int(ln.split()[1]) <= 104}
    for i in bad:
        cols = lines[i].split()
        cols[15] = "nan"
        lines[i] = " ".join(cols)
    path = tmp_path / "test_with_nan.txt"
    path.write_text("\n".join(lines) + "\n")

    cfg = agent_cfg(tmp_path, mosquitto.url, agent_id="gw-nan", confirm=WITH_AGGREGATOR)
    cfg = agent_config.parse({**cfg.model_dump(mode="json"),
                              "source": {**cfg.source.model_dump(mode="json"),
                                         "path": str(path), "assets": ["engine-034"]}})
    agent = Agent(cfg, record=True)
    report = agent.run(drain_timeout_s=30)

    assert report.drained
    assert report.progress.rejected_readings == len(bad) == 5
    # One event for the stretch of bad samples, logged once, not once per sample.
    assert report.progress.quality_events == 1
    assert len([r for r in caplog.records if "sensor_11" in r.getMessage()]) == 1
    # 203 cycles minus 5 skipped: 198 samples, 169 windows of 30.
    assert len(report.scored) == 169
    wait_until(lambda: aggregator.get("/healthz").json()["counts"]["predictions_stored"] == 169,
               30, what="169 stored predictions")


def test_agent_killed_while_connected_is_reported_offline_by_its_last_will(
    tmp_path: Path, mosquitto, aggregator
) -> None:
    cfg = agent_cfg(tmp_path, mosquitto.url, agent_id="gw-will", confirm=WITH_AGGREGATOR,
                    speed=60)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-m", "linewatch.cli", "agent", "-c", str(path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def state() -> str | None:
            agents = {a["agent"]: a for a in aggregator.get("/agents").json()}
            return agents.get("gw-will", {}).get("state")

        wait_until(lambda: state() == "online", 30, what="the agent online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # No DISCONNECT was sent, so the broker publishes the agent's will.
        wait_until(lambda: state() == "offline", 15, what="the last will")
    finally:
        if proc.poll() is None:
            proc.kill()
