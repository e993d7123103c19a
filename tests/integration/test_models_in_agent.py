"""Every shipped classifier runs in the agent on its own data, through a real broker into
the aggregator: 1 Hz process values (C-MAPSS), per-product rows (AI4I) and 20 kHz
vibration snapshots (IMS, 2048-sample windows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_support import ROOT, WITH_AGGREGATOR, running_aggregator
from aggregator_support import wait_until

from agent import config as agent_config
from agent.pipeline import Agent

pytestmark = pytest.mark.integration

CASES = [
    # model, data, plant seconds per time unit of the file, windows expected
    ("cmapss_fd001", "cmapss_fd001/test_FD001.txt.gz", 600.0, 13096 - 100 * 29),
    ("ai4i2020", "ai4i2020/ai4i2020.csv", 60.0, 10000),
    # 13 snapshots x 4 bearings x 20,480 samples: 10 windows of 2048 per snapshot.
    ("ims_bearing", "ims_bearing_test2/2nd_test", 1.0, 13 * 4 * 10),
]


@pytest.mark.parametrize(("model", "data", "step_s", "windows"), CASES,
                         ids=[c[0] for c in CASES])
def test_model_runs_in_the_agent_and_everything_is_stored(
    tmp_path: Path, mosquitto, model: str, data: str, step_s: float, windows: int
) -> None:
    cfg = agent_config.parse({
        "agent": {"id": f"gw-{model}".replace("_", "-"), "site": "plant1", "line": "line1"},
        "model": {"dir": str(ROOT / "models" / model)},
        "source": {"type": "replay", "path": str(ROOT / "models" / "data" / data),
                   "speed": 0, "step_s": step_s, "start": "2026-01-01T00:00:00Z"},
        "mqtt": {"url": mosquitto.url},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "publish": {"confirm": WITH_AGGREGATOR},
    })
    with running_aggregator(tmp_path, mosquitto.url) as api:
        report = Agent(cfg).run(drain_timeout_s=60)
        assert report.drained
        assert report.progress.windows_scored == windows
        wait_until(lambda: api.get("/healthz").json()["counts"]["predictions_stored"]
                   == windows, 60, what=f"{windows} stored predictions")
