"""The commands as a user runs them: separate `linewatch aggregator` and `linewatch agent`
processes on a real Mosquitto, including an agent killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from agent_support import ROOT, TEST_FILE, WITH_AGGREGATOR, free_port
from aggregator_support import wait_until

from agent.outbox import Outbox
from contract.wire import decode

pytestmark = pytest.mark.integration


def linewatch(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "linewatch.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def up(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").json()["mqtt"]["connected"]
    except httpx.TransportError:
        return False


@pytest.fixture
def aggregator_process(tmp_path: Path, mosquitto):
    port = free_port()
    env_file = tmp_path / "aggregator.env"
    env_file.write_text(
        f"LINEWATCH_MQTT_URL={mosquitto.url}\n"
        f"LINEWATCH_DB_URL=sqlite:///{tmp_path / 'agg.db'}\n"
        f"LINEWATCH_SERIES_PATH={tmp_path / 'series.db'}\n"
        f"LINEWATCH_HTTP_PORT={port}\n"
        "LINEWATCH_MQTT_CLIENT_ID=agg-cli-test\n"
    )
    # A token as a user makes one: the command, on the aggregator's settings (before its
    # first start: the command creates the schema).
    made = subprocess.run(
        [sys.executable, "-m", "linewatch.cli", "token", "create", "--scope", "read", "--name",
         "cli-test", "-c", str(env_file)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    proc = linewatch("aggregator", "-c", str(env_file))
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5,
                       headers={"Authorization": f"Bearer {made.stdout.strip()}"})
    try:
        wait_until(lambda: up(api), 30, what="the aggregator to come up")
        yield api
    finally:
        api.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        # uvicorn re-raises SIGTERM after its graceful shutdown, as a service manager expects.
        assert proc.returncode in (0, -signal.SIGTERM), out
        assert "aggregator shutting down" in out and "Application shutdown complete" in out


def agent_yaml(tmp_path: Path, mqtt_url: str, assets: list[str]) -> Path:
    path = tmp_path / f"agent-{'-'.join(assets)}.yaml"
    path.write_text(yaml.safe_dump({
        "agent": {"id": "gw-cli", "site": "plant1", "line": "line1"},
        "model": {"dir": "models/cmapss_fd001"},
        "source": {"type": "replay", "path": str(TEST_FILE), "assets": assets, "speed": 0,
                   "step_s": 600, "start": "2026-01-01T00:00:00Z"},
        "mqtt": {"url": mqtt_url},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "publish": {"confirm": WITH_AGGREGATOR},
    }))
    return path


def stored(api: httpx.Client) -> int:
    return api.get("/healthz").json()["counts"]["predictions_stored"]


def test_agent_and_aggregator_commands_deliver_everything(
    tmp_path: Path, mosquitto, aggregator_process
) -> None:
    proc = linewatch("agent", "-c", str(agent_yaml(tmp_path, mosquitto.url, ["engine-034"])))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    # Engine 34 has 203 cycles: 174 windows of 30.
    assert "scored 174 windows" in out
    wait_until(lambda: stored(aggregator_process) == 174, 30, what="174 stored predictions")
    agents = aggregator_process.get("/agents").json()
    assert [(a["agent"], a["state"]) for a in agents] == [("gw-cli", "offline")]


def test_agent_killed_mid_run_loses_nothing(tmp_path: Path, mosquitto, aggregator_process) -> None:
    """Broker down, agent scores into its outbox, SIGKILL; after a restart (now replaying
    another engine) the killed run's messages are delivered too."""
    mosquitto.stop()
    first = linewatch("agent", "-c", str(agent_yaml(tmp_path, mosquitto.url, ["engine-034"])),
                      env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def buffered() -> int:
        if not (tmp_path / "outbox.db").exists():
            return 0
        box = Outbox(tmp_path / "outbox.db")
        try:
            return box.depth
        finally:
            box.close()

    def buffered_predictions() -> int:
        if not (tmp_path / "outbox.db").exists():
            return 0
        box = Outbox(tmp_path / "outbox.db")
        try:
            rows = box.pending(after_seq=-1, limit=1_000_000)
        finally:
            box.close()
        return sum(len(decode(r.payload).items) for r in rows if r.kind == "predictions")

    # The agent scores engine 34 into its outbox, then waits for the broker: kill it there,
    # however long the scoring took on this machine.
    wait_until(lambda: buffered_predictions() == 174 and first.poll() is None, 60,
               what="engine 34's 174 predictions in the outbox")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    left = buffered()
    assert left >= 1

    mosquitto.start()
    second = linewatch("agent", "-c", str(agent_yaml(tmp_path, mosquitto.url, ["engine-001"])))
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    assert buffered() == 0
    # Engine 1 has 31 cycles: 2 windows; engine 34's 174 came from the killed run's outbox.
    wait_until(lambda: stored(aggregator_process) == 174 + 2, 30, what="176 stored predictions")
