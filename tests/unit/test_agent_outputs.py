"""The agent's outputs do not change when its internals get faster: every prediction (score,
alert, window) and every monitor event of a short replay equals the golden file written by
the agent before its compute path was batched across assets (scores within 1e-9).

The replay: 16 FD001 test engines with every kind of trouble the monitors look for (a
sensor offset, a stuck sensor, another operating regime, NaN and impossible readings),
once one cycle per tick and once five cycles per tick (readings of several samples). It
runs the real agent (``Agent.run``) with no broker to reach: every message stays in the
outbox, which is read back and decoded.

``python tests/unit/test_agent_outputs.py --write`` rewrites the golden file (only when an
output is meant to change).
"""

from __future__ import annotations

import gzip
import json
import logging
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import config as agent_config
from agent.datasets import read_recordings
from agent.pipeline import Agent
from contract import wire
from contract.card import ModelCard
from linewatch import scenarios

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "cmapss_fd001"
TEST = ROOT / "models" / "data" / "cmapss_fd001" / "test_FD001.txt.gz"
GOLDEN = Path(__file__).parent / "golden" / "agent_replay.json.gz"
TICKS = (1, 5)


def scenario_file(tmp: Path) -> Path:
    """The 16 longest engines: 2 with sensor_11 offset, 2 with it stuck, 2 in another
    regime, 1 there for 40 cycles, 3 with NaN or impossible readings, 6 as recorded."""
    longest = sorted(read_recordings(TEST, "cmapss"), key=len)[-16:]
    recs = {r.asset: r for r in sorted(longest, key=lambda r: r.asset)}
    card = ModelCard.load(MODEL)
    sd = card.reference.monitoring.channels["sensor_11"].std  # type: ignore[union-attr]
    names = list(recs)
    changed = scenarios.offset(list(recs.values()), "sensor_11", sd, sigmas=3.0,
                               assets=names[1:3]).recordings
    changed = scenarios.stuck(changed, "sensor_11", assets=names[3:5]).recordings
    recs = {r.asset: r for r in changed}
    for r in scenarios.regime([recs[a] for a in names[5:7]]).recordings:
        recs[r.asset] = r
    # Another regime for 40 cycles only: the conditions it raises end.
    r = recs[names[10]]
    away = scenarios.regime([r]).recordings[0]
    v = r.values.copy()
    v[60:100] = away.values[60:100]
    recs[r.asset] = replace(r, values=v)

    def poke(asset: str, channel: str, rows: slice, value: float) -> None:
        r = recs[asset]
        v = r.values.copy()
        v[rows, r.channels.index(channel)] = value
        recs[asset] = replace(r, values=v)

    poke(names[7], "sensor_4", slice(40, 43), np.nan)
    poke(names[8], "sensor_7", slice(50, 51), 0.0)
    poke(names[9], "sensor_2", slice(30, 31), np.nan)
    return scenarios.write_cmapss([recs[a] for a in names], tmp / "test_golden.txt")


def replay(tmp: Path, data: Path, tick: int) -> dict[str, Any]:
    """Predictions and drift items of one replay, in the order the agent wrote them."""
    outbox = tmp / f"tick{tick}" / "outbox.db"
    cfg = agent_config.parse({
        "agent": {"id": "gw-golden", "site": "plant1", "line": "line1"},
        "model": {"dir": str(MODEL)},
        "source": {"type": "replay", "path": str(data), "speed": 0, "step_s": 600,
                   "tick": tick, "start": "2026-01-01T00:00:00Z"},
        # Nothing listens there: every message stays in the outbox.
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "outbox": {"path": str(outbox)},
        "publish": {"max_items": 500},
    })
    log = logging.getLogger("agent")
    level = log.level
    log.setLevel(logging.ERROR)  # the broker it cannot reach, and the conditions it finds
    try:
        Agent(cfg).run(drain_timeout_s=0)
    finally:
        log.setLevel(level)
    db = sqlite3.connect(outbox)
    try:
        payloads = [p for (p,) in db.execute("SELECT payload FROM outbox ORDER BY seq")]
    finally:
        db.close()
    predictions: list[list[Any]] = []
    drift: list[dict[str, Any]] = []
    for raw in payloads:
        env = wire.decode(raw)
        for item in env.items:
            if isinstance(item, wire.Prediction):
                predictions.append([item.asset, item.window_start.timestamp(),
                                    item.window_end.timestamp(), item.score, item.alert])
            elif isinstance(item, wire.DriftEvent):
                drift.append(item.model_dump(mode="json", by_alias=True))
    return {"predictions": predictions, "drift": drift}


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("golden")
    data = scenario_file(tmp)
    return {str(tick): replay(tmp, data, tick) for tick in TICKS}


@pytest.mark.parametrize("tick", TICKS)
def test_the_replay_scores_and_alerts_as_the_golden_file(replays: dict[str, Any],
                                                         tick: int) -> None:
    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))[str(tick)]
    got, want = replays[str(tick)]["predictions"], golden["predictions"]
    assert len(got) == len(want) > 2500
    assert [p[:3] + p[4:] for p in got] == [p[:3] + p[4:] for p in want]
    np.testing.assert_allclose([p[3] for p in got], [p[3] for p in want], rtol=0, atol=1e-9)


@pytest.mark.parametrize("tick", TICKS)
def test_the_replay_raises_the_golden_monitor_events(replays: dict[str, Any],
                                                     tick: int) -> None:
    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))[str(tick)]
    got, want = replays[str(tick)]["drift"], golden["drift"]
    # Every kind of condition is in there, so each monitor's path is compared.
    assert {d["detector"] for d in want} >= {"nan", "impossible", "stuck", "step",
                                             "envelope"}
    assert got == want


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        data = scenario_file(Path(d))
        result = {str(tick): replay(Path(d), data, tick) for tick in TICKS}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_bytes(gzip.compress(json.dumps(result, sort_keys=True).encode(), mtime=0))
    print(f"wrote {GOLDEN}: " + ", ".join(
        f"tick {k}: {len(v['predictions'])} predictions, {len(v['drift'])} events"
        for k, v in result.items()))
