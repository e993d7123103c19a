"""The monitors and the triage, end to end, on scenarios built from NASA C-MAPSS FD001.

Each test builds a data file from the FD001 *test* set (engines the model never saw,
truncated some cycles before failure; truth in RUL_FD001.txt) with
``linewatch.scenarios``, then runs ``linewatch demo --data FILE --truth RUL --json``: the
real agents (windows, features, ONNX model, monitors, outbox, MQTT) and the real aggregator
(ingest, conditions, triage, tickets) on the embedded broker and stores. The scenarios:

- **in distribution**: the FD001 test set as recorded;
- **another operating regime**: the three settings moved to 10 kft / Mach 0.25 and every
  sensor moved by a fixed fraction of its level, up for one run and down for another;
- **sensor faults**: a +3 sigma offset on sensor_11 (Ps30) from mid-record on ten engines,
  and sensor_11 stuck at its mid-record value on ten others;
- **a fault mode the training lacks**: on ten engines near failure, three sensors that fall
  as FD001 engines degrade (sensor_7, sensor_12, sensor_20) rise by 6 sigma over their last
  100 cycles, so the model reads them as healthy.

Detection delays are printed (``pytest -s`` shows them) and bounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.datasets import read_recordings
from contract.card import ModelCard
from linewatch import scenarios
from linewatch.cli import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "models" / "data" / "cmapss_fd001"
TEST, TRUTH, TRAIN = (DATA / "test_FD001.txt.gz", DATA / "RUL_FD001.txt",
                      DATA / "train_FD001.txt.gz")
CARD = ModelCard.load(ROOT / "models" / "cmapss_fd001")
STEP_S = 600  # one cycle is ten minutes of plant time, as in configs/demo.yaml
OFFSET = [f"engine-{i:03d}" for i in range(1, 101, 10)]
STUCK = [f"engine-{i:03d}" for i in range(5, 101, 10)]


def run(tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        data: Path) -> dict[str, Any]:
    monkeypatch.chdir(ROOT)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo.update(state_dir=str(tmp / "state"), speed=0, step_s=STEP_S)
    config = tmp / "demo.yaml"
    config.write_text(yaml.safe_dump(demo))
    capsys.readouterr()
    code = main(["demo", "-c", str(config), "--data", str(data), "--truth", str(TRUTH),
                 "--json"])
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["windows"]["scored"] == summary["windows"]["stored"] > 0
    return summary


def live(summary: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [t for t in summary["tickets"] if t["kind"] == kind and t["outcome"] != "superseded"]


def cycle(iso: str) -> float:
    """Plant time back to the record's cycle (the replay starts cycle 1 at 2026-01-01)."""
    start = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    return 1 + (datetime.fromisoformat(iso) - start).total_seconds() / STEP_S


def write(tmp: Path, scenario: scenarios.Scenario) -> Path:
    # "test_" keeps the C-MAPSS reader treating it as records truncated before failure.
    return scenarios.write_cmapss(scenario.recordings, tmp / f"test_{scenario.name}.txt")


@pytest.fixture(scope="module")
def in_distribution(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The FD001 test set as recorded; shared by the tests that compare against it."""
    tmp = tmp_path_factory.mktemp("in_distribution")
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo.update(state_dir=str(tmp / "state"), speed=0, step_s=STEP_S)
    (tmp / "demo.yaml").write_text(yaml.safe_dump(demo))
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(ROOT)
        assert main(["demo", "-c", str(tmp / "demo.yaml"), "--data", str(TEST), "--truth",
                     str(TRUTH), "--json"]) == 0
    summary: dict[str, Any] = json.loads(out.getvalue())
    return summary


def test_in_distribution_data_raises_only_maintenance_tickets_as_good_as_before(
    in_distribution: dict[str, Any],
) -> None:
    s = in_distribution
    assert {k: s["counts"][k] for k in ("sensor", "inspect", "retraining")} == {
        "sensor": 0, "inspect": 0, "retraining": 0}
    truth = s["truth"]
    assert truth["engines_near_failure"] == 25
    assert truth["maintenance_tickets_right"] >= 23 and truth["maintenance_tickets_wrong"] <= 1
    # The budget: at most 1 false drift alarm per agent per 90 days. The replay covers each
    # agent's longest record in plant time; four agents expect about 0.1 false alarms, so
    # two or more would happen by chance with probability under 0.5 %.
    longest_days = max(len(r) for r in read_recordings(TEST, "cmapss")) * STEP_S / 86_400
    expected = s["agents"] * longest_days * s["monitoring"]["budget"]["alarms"] / (
        s["monitoring"]["budget"]["per_days"])
    conditions = s["conditions"]["drift"] + s["conditions"]["quality"]
    print(f"\nin distribution: {conditions} drift/quality conditions; the budget expects "
          f"{expected:.2f} over {longest_days:.1f} plant days per agent")
    assert expected < 0.2 and conditions <= 1


@pytest.mark.parametrize("direction", [1, -1], ids=["sensors_up", "sensors_down"])
def test_another_operating_regime_is_one_retraining_ticket_not_a_maintenance_flood(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    direction: int,
) -> None:
    recordings = read_recordings(TEST, "cmapss")[:40]
    s = run(tmp_path, capsys, monkeypatch, write(tmp_path, scenarios.regime(recordings,
                                                                           direction)))
    assert (len(live(s, "maintenance")), len(live(s, "inspect")), len(live(s, "sensor"))) == (
        0, 0, 0)
    (ticket,) = live(s, "retraining")
    ev = ticket["evidence"]
    assert ticket["model"] == f"model:{CARD.name}@{CARD.version}"
    assert len(ticket["assets"]) == ev["assets_moved"] == 40
    assert ev["p_value"] < 1e-6 and ev["blind"]["assets"] == 40
    moved = {x["signal"].split(".")[0] for x in ev["signals"]}
    assert len(moved) >= 5  # many sensors, not one
    delay = cycle(ev["from"]) - CARD.window.size
    print(f"\nregime {direction:+d}: retraining ticket from cycle {cycle(ev['from']):.0f} (the "
          f"first full window is cycle {CARD.window.size}); {s['windows']['alerting']} of "
          f"{s['windows']['scored']} windows alerted, none became a maintenance ticket")
    assert delay <= 1


def test_sensor_faults_open_sensor_tickets_and_no_extra_maintenance_tickets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    in_distribution: dict[str, Any],
) -> None:
    recordings = read_recordings(TEST, "cmapss")
    sd = CARD.reference.monitoring.channels["sensor_11"].std  # type: ignore[union-attr]
    offset = scenarios.offset(recordings, "sensor_11", sd, sigmas=3.0, assets=OFFSET)
    both = scenarios.stuck(offset.recordings, "sensor_11", assets=STUCK)
    s = run(tmp_path, capsys, monkeypatch, write(tmp_path, both))
    sensor = live(s, "sensor")
    assert sorted(t["asset"] for t in sensor) == sorted(OFFSET + STUCK)
    assert all(t["evidence"]["channels"] == ["sensor_11"] for t in sensor)
    assert (len(live(s, "inspect")), len(live(s, "retraining"))) == (0, 0)
    before = {t["asset"] for t in live(in_distribution, "maintenance")}
    after = {t["asset"] for t in live(s, "maintenance")}
    assert after <= before, f"maintenance tickets the sensor faults caused: {after - before}"
    assert before - after <= set(OFFSET + STUCK)  # held back only where a sensor failed
    onsets = {**offset.onsets, **both.onsets}
    delays = {}
    for t in sensor:
        detected = min(cycle(c["detected_at"]) for c in t["evidence"]["conditions"])
        delays[t["asset"]] = detected - onsets[t["asset"]]
    for name, group in (("offset", OFFSET), ("stuck", STUCK)):
        d = [delays[a] for a in group]
        print(f"\n{name} on sensor_11: detected {statistics.median(d):.0f} cycles after onset "
              f"(median; {min(d):.0f}-{max(d):.0f})")
        assert all(0 <= x <= 15 for x in d)


def test_a_fault_mode_the_model_never_saw_opens_inspect_tickets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    recordings = read_recordings(TEST, "cmapss", truth=TRUTH)[:40]
    failing = [r.asset for r in recordings if r.labels["rul"][-1] <= 30][:6]
    trend = scenarios.degradation_trend(read_recordings(TRAIN, "cmapss"),
                                        ["sensor_7", "sensor_12", "sensor_20"])
    fault = scenarios.fault(recordings, trend, assets=failing, cycles=100, sigmas=6.0)
    for r in fault.recordings:
        r.labels.clear()
    s = run(tmp_path, capsys, monkeypatch, write(tmp_path, fault))
    inspect = live(s, "inspect")
    assert sorted(t["asset"] for t in inspect) == sorted(failing)
    for t in inspect:
        assert set(t["evidence"]["channels"]) >= {"sensor_7", "sensor_12", "sensor_20"}
    delays = [min(cycle(c["detected_at"]) for c in t["evidence"]["conditions"])
              - fault.onsets[t["asset"]] for t in inspect]
    print(f"\nfault mode: inspect tickets for {len(inspect)} of {len(failing)} failing engines, "
          f"detected a median {statistics.median(delays):.0f} cycles into the drift")
    assert {t["asset"] for t in live(s, "maintenance")}.isdisjoint(failing)
