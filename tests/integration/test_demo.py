"""`linewatch demo` is the main job a new user runs: keep it working."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from linewatch.cli import main

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def run_demo(tmp_path: Path, capsys, monkeypatch, **changes) -> tuple[str, int]:
    monkeypatch.chdir(ROOT)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo["state_dir"] = str(tmp_path / "state")
    demo["speed"] = 0
    demo["agents"] = [
        {"id": "gw-a", "line": "line1", "assets": ["engine-001", "engine-031"]},
        {"id": "gw-b", "line": "line2", "assets": ["engine-034", "engine-002"]},
    ]
    demo.update(changes)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(demo))

    assert main(["demo", "-c", str(path)]) == 0

    out = capsys.readouterr().out
    scored, stored = map(int, re.search(
        r"all replays ended: (\d+) windows scored, (\d+) stored", out).groups())
    assert scored == stored > 0
    return out, scored


def test_demo_replays_stores_everything_and_reports_tickets_against_truth(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    out, _ = run_demo(tmp_path, capsys, monkeypatch)
    assert "embedded amqtt" in out and "aggregator API: http://127.0.0.1:" in out
    # An admin token of the demo's own, printed once, next to the address; never logged.
    (token,) = re.findall(r"aggregator API: http://127\.0\.0\.1:\d+ \(token: (lw_\S{43}); send it "
                          r"as 'Authorization: Bearer <token>'", out)
    assert out.count(token) == 1
    assert token not in (tmp_path / "state" / "demo.log").read_text()
    tickets = re.findall(r"^\s+\d+\s+(engine-\d{3})\s+(gw-\w)", out, flags=re.M)
    assert sorted(a for a, _ in tickets) == ["engine-031", "engine-034"]
    assert re.search(r"2 engines were within 30 cycles of failure .* and 2 of them got a ticket "
                     r"\(100%\)\. 2 of 2 tickets were right \(100%\); 0 went to", out)
    assert (tmp_path / "state" / "demo.log").exists()


def test_demo_uses_a_configured_mosquitto_and_influxdb(
    tmp_path: Path, capsys, monkeypatch, mosquitto, influxd
) -> None:
    out, scored = run_demo(tmp_path, capsys, monkeypatch, mqtt_url=mosquitto.url,
                           influx_url=influxd.url)
    assert f"broker: {mosquitto.url} (configured); series: {influxd.url}" in out
    (row,) = influxd.query("SELECT COUNT(score) FROM prediction", "linewatch_demo")
    assert row["count"] == scored
    influxd.drop_database("linewatch_demo")


def test_demo_ends_without_pointing_at_a_stopped_api_and_counts_what_it_lists(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from agent.datasets import read_recordings
    from linewatch import scenarios

    data = ROOT / "models" / "data" / "cmapss_fd001" / "test_FD001.txt.gz"
    recordings = read_recordings(data, "cmapss")[:8]
    faulty = scenarios.stuck(recordings, "sensor_11")  # on all 8: eight conditions
    path = scenarios.write_cmapss(faulty.recordings, tmp_path / "test_stuck.txt")
    monkeypatch.chdir(ROOT)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo.update(state_dir=str(tmp_path / "state"), speed=0)
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo))
    assert main(["demo", "-c", str(tmp_path / "demo.yaml"), "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\nAPI: http" not in out and "The API has stopped with the demo" in out
    said = int(re.search(r"reported by the agents: (\d+)", out).group(1))
    listed = out.split("reported by the agents:")[1].split("\n\n")[0].count("\n  ")
    assert said > 5 and listed == 5 and f"{said} (the newest 5 below)" in out
    assert "Sensor tickets (check the sensor):" in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_serve_shuts_down_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo.update(state_dir=str(tmp_path / "state"), speed=0, agents=[
        {"id": "gw-a", "line": "line1", "assets": ["engine-001"]}])
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo))
    proc = subprocess.Popen(
        [sys.executable, "-m", "linewatch.cli", "demo", "-c", str(tmp_path / "demo.yaml"),
         "--serve"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "serving until" in line:
                break
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert proc.returncode == 0, "".join(lines) + rest
    assert f"{name}: stopping the agents and the aggregator" in rest
    assert "demo stopped" in rest and "Traceback" not in rest
