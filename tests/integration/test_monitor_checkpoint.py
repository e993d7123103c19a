"""A restart does not reset monitoring: an agent killed with SIGKILL in the middle of a drift
(the envelope's CUSUM accumulating, no alarm yet) and started again raises the alarm at the
same window, with the same onset, as an uninterrupted run; and the quality checks, step
tests and alert-rate CUSUM go on as if nothing happened. A checkpoint made for another
configuration is ignored, with a log line.

Real processes (``python -m agent run``); no broker is reachable, so every message stays in
the outbox, which is what is compared.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_support import MODEL, ROOT, TEST_FILE

from agent import config as agent_config
from agent.datasets import read_recordings
from agent.outbox import Outbox
from agent.pipeline import Agent
from agent.position import PositionStore
from contract import wire
from linewatch import scenarios

pytestmark = pytest.mark.integration

STEP_S = 600
START = 1767225600.0  # 2026-01-01T00:00:00Z, cycle 1


@pytest.fixture(scope="module")
def drifting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six engines; over the longest one's last 150 cycles, sensor_11 reads just far enough
    above its training range that the envelope CUSUM of its mean needs about 40 windows to
    pass its threshold: a drift the monitors call only if they remember its beginning."""
    tmp = tmp_path_factory.mktemp("drifting")
    recs = sorted(read_recordings(TEST_FILE, "cmapss"), key=len)[-6:]
    probe = Agent(_config(tmp, TEST_FILE, "probe", assets=[r.asset for r in recs]))
    probe.outbox.close()
    probe.positions.close()
    env = probe.envelope
    i = env.names.index("sensor_11.mean")
    level = env.high[i] + env.scale[i] * (env.allowance + env.thresholds[i] / 40)
    r = recs[-1]
    j = r.channels.index("sensor_11")
    v = r.values.copy()
    v[-150:, j] = level + (v[-150:, j] - v[-150:, j].mean()) * 0.2
    recs[-1] = replace(r, values=v)
    return scenarios.write_cmapss(sorted(recs, key=lambda x: x.asset), tmp / "test_drift.txt")


def _config(tmp: Path, data: Path, name: str, **source: Any) -> agent_config.AgentConfig:
    return agent_config.parse({
        "agent": {"id": "gw-ckpt", "site": "plant1", "line": "line1"},
        "model": {"dir": str(MODEL)},
        "source": {"type": "replay", "path": str(data), "speed": 0, "step_s": STEP_S,
                   "start": "2026-01-01T00:00:00Z", **source},
        "mqtt": {"url": "mqtt://127.0.0.1:1"},  # nothing listens: all stays in the outbox
        "outbox": {"path": str(tmp / name / "outbox.db")},
        "publish": {"flush_interval_s": 0.1},
    })


def _drift(cfg: agent_config.AgentConfig) -> list[dict[str, Any]]:
    box = Outbox(cfg.outbox_path)
    try:
        rows = box.pending(after_seq=-1, limit=1_000_000)
    finally:
        box.close()
    return [i.model_dump(mode="json", by_alias=True) for r in rows if r.kind == "drift"
            for i in wire.decode(r.payload).items]


def _cycle(iso: str) -> float:
    from datetime import datetime
    return 1 + (datetime.fromisoformat(iso).timestamp() - START) / STEP_S


def _saved_tick(cfg: agent_config.AgentConfig) -> int:
    if not cfg.outbox_path.exists():
        return 0
    store = PositionStore(cfg.outbox_path)
    try:
        saved = store.load()
    finally:
        store.close()
    return 0 if saved is None else saved.tick


def test_an_agent_killed_mid_drift_raises_the_alarm_where_an_uninterrupted_one_does(
    tmp_path: Path, drifting: Path
) -> None:
    whole_cfg = _config(tmp_path, drifting, "whole")
    Agent(whole_cfg).run(drain_timeout_s=0)
    whole = _drift(whole_cfg)
    starts = [e for e in whole if e["detector"] == "envelope" and e["state"] == "start"]
    assert starts, whole
    slow = max(starts, key=lambda e: _cycle(e["at"]) - _cycle(e["since"]))
    onset, alarm = _cycle(slow["since"]), _cycle(slow["at"])
    assert alarm - onset >= 30  # long enough to kill the agent in between
    kill_after = int((onset + alarm) / 2)

    # 10 ms a tick: the position (and checkpoint) is saved every 10 ticks or so.
    cfg = _config(tmp_path, drifting, "killed", speed=STEP_S / 0.01)
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    command = [sys.executable, "-m", "agent", "run", "-c", str(config), "--drain-timeout", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first_run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while _saved_tick(cfg) < kill_after and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        first_run.send_signal(signal.SIGKILL)
        out, _ = first_run.communicate(timeout=10)
    killed_at = _saved_tick(cfg)
    # Killed between the drift's onset and its alarm (cycle = tick + 1).
    assert onset <= killed_at + 1 < alarm, out
    assert slow not in _drift(cfg), out

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert _drift(cfg) == whole
    assert f"windows and monitors continue from their state at tick {killed_at}" in (
        second.stdout + second.stderr)


def test_a_checkpoint_for_another_configuration_is_ignored_with_a_log_line(
    tmp_path: Path, drifting: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path, drifting, "other")
    agent = Agent(cfg)
    ticks = agent.source.ticks()
    for _ in range(40):
        ready = agent._window(next(ticks))
        if len(ready):
            agent._score(ready)
        agent._events()
    agent._save_position()
    agent.outbox.close()
    agent.positions.close()
    stricter = cfg.model_copy(update={"monitors": cfg.monitors.model_copy(update={
        "budget": agent_config.BudgetConfig(alarms=1, per_days=365)})})
    with caplog.at_level(logging.INFO, logger="agent.pipeline"):
        again = Agent(stricter)
    again.outbox.close()
    again.positions.close()
    assert "the saved monitor state is for another model, configuration or replay: it is " \
           "ignored and the monitors start afresh" in caplog.text
    assert not again._restored
