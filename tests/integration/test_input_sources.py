"""Live inputs against real servers: JSON readings on a real Mosquitto (garbage among them)
and an asyncua OPC UA server that goes away and comes back, each feeding a real agent or
the windows."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from opcua_server import OpcUaTestServer
from paho.mqtt.enums import CallbackAPIVersion

from agent import config as agent_config
from agent.pipeline import Agent
from agent.sources.config import OpcUaSourceConfig
from agent.sources.opcua import OpcUaSource
from agent.windows import Windower
from contract.card import ModelCard

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
AI4I = ROOT / "models" / "ai4i2020"
CARD = ModelCard.load(AI4I)
# A healthy milling run, one sample: the AI4I model's channels, as a PLC bridge names them.
GOOD = {"air": 298.1, "process": 308.6, "rpm": 1551.0, "torque": 42.8, "wear": 10.0,
        "variant": 1.0}
FIELDS = {"air_temp_k": "data.air", "process_temp_k": "data.process", "speed_rpm": "data.rpm",
          "torque_nm": "data.torque", "tool_wear_min": "data.wear", "type_code": "data.variant"}


def _until(what: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_mqtt_input_flows_and_garbage_is_counted_while_other_assets_keep_flowing(
        tmp_path: Path, mosquitto) -> None:
    config = agent_config.parse({
        "agent": {"id": "gw-mqtt", "site": "plant1", "line": "line1"},
        "model": {"dir": str(AI4I)},
        "source": {"type": "mqtt", "url": mosquitto.url, "sample_interval_s": 60,
                   "max_payload": 2000,
                   "topics": [{"pattern": "plant1/+line/+asset/state", "channels": FIELDS,
                               "time": {"field": "ts", "format": "epoch_ms"}}]},
        "mqtt": {"url": mosquitto.url},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "publish": {"confirm": "broker", "flush_interval_s": 0.2, "health_interval_s": 1},
    })
    agent = Agent(config, record=True)
    report = {}
    runner = threading.Thread(target=lambda: report.update(r=agent.run(drain_timeout_s=5)))
    runner.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plc-bridge")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        _until(agent.source.subscribed.is_set)
        t0 = 1_767_225_600_000

        def send(asset: str, payload: bytes | str) -> None:
            pub.publish(f"plant1/line1/{asset}/state",
                        payload if isinstance(payload, bytes) else payload.encode(),
                        qos=1).wait_for_publish(5)

        def good(asset: str, i: int, **data) -> str:
            varied = {"rpm": 1500.0 + 7 * i, "torque": 40.0 + 0.3 * i, "wear": 10.0 + 2 * i}
            return json.dumps({"ts": t0 + i * 60_000, "data": GOOD | varied | data})

        garbage = [
            b"\x00\x01 not json",                                        # not_json
            json.dumps({"ts": t0, "data": GOOD, "pad": "x" * 3000}),     # oversized
            json.dumps({"ts": t0, "other": {}}),                         # missing_field
            json.dumps({"ts": "yesterday", "data": GOOD}),               # bad_time
        ]
        for i in range(12):
            send("press-1", good("press-1", i))
            if i < len(garbage):
                send("press-2", garbage[i])
            elif i == 5:
                # A NaN value (Python's json reads the literal NaN).
                send("press-2", good("press-2", i).replace('"air": 298.1', '"air": NaN'))
            elif i == 6:
                send("press-2", good("press-2", i, torque="high"))            # wrong type
            else:
                send("press-2", good("press-2", i))
        _until(lambda: agent.progress.windows_scored >= 12 + 6
               and agent.progress.rejected_readings >= 6)
        time.sleep(0.5)  # one more tick: nothing else is on its way
    finally:
        agent.stop()
        runner.join(30)
        pub.loop_stop()
        pub.disconnect()
    scored = report["r"].scored
    by_asset = {a: sorted(s.window_end.timestamp() for s in scored if s.asset == a)
                for a in ("press-1", "press-2")}
    assert by_asset["press-1"] == [t0 / 1000 + 60 * i for i in range(12)]
    assert by_asset["press-2"] == [t0 / 1000 + 60 * i for i in (4, 7, 8, 9, 10, 11)]
    source = agent.source
    assert source.dropped == {"not_json": 1, "oversized": 1, "missing_field": 1,
                              "bad_time": 1}
    # 4 dropped messages + 2 samples the quality monitor skipped (NaN, not a number).
    assert agent.progress.rejected_readings == 6
    assert agent.quality.rejected_readings == 2
    assert source.missing_values == {"wrong_type": 1}
    # The input conditions of press-2 started and ended with its next good message.
    assert agent.progress.events_sent >= 2 * 4


def test_opcua_values_flow_into_windows_and_again_after_the_server_restarts() -> None:
    assets = ["mill-1", "mill-2"]
    server = OpcUaTestServer(assets, CARD.channel_names)
    config = OpcUaSourceConfig(
        type="opcua", url=server.url, retry_max_s=1,
        publishing_interval_ms=50, timestamp="source",
        nodes=[{"node": f"ns=2;s={a}.{c}", "asset": a, "channel": c}
               for a in assets for c in CARD.channel_names])
    server.start()
    source = OpcUaSource(config, CARD)
    windower = Windower(3, 1, len(CARD.channel_names))
    windows: dict[str, list[np.ndarray]] = {a: [] for a in assets}
    phase, stamps = "first", {"first": [], "again": []}
    began = time.monotonic()
    try:
        for readings in source.ticks():
            for r in readings:
                w = windower.update(r.asset, r.t, r.values)
                if w is not None:
                    windows[r.asset].extend(w.values)
                    stamps[phase].extend(w.end.tolist())
            if phase == "first" and min(len(v) for v in windows.values()) >= 5:
                server.stop()
                _until(lambda: not source.connected)
                server.start()
                phase = "again"
                counted = {a: len(v) for a, v in windows.items()}
            elif phase == "again" and all(len(windows[a]) >= counted[a] + 5 for a in assets):
                break
            assert time.monotonic() - began < 60, "no values after the restart"
    finally:
        source.close()
        server.close()
    assert source.connects == 2
    for a in assets:
        for w in windows[a]:
            # Every sample holds one write of the server: channel j reads k + j.
            np.testing.assert_array_equal(w - w[:, :1], np.tile(np.arange(6.0), (3, 1)))
    # Source timestamps: the device's time, increasing, and later after the restart.
    assert min(stamps["again"]) > max(stamps["first"])
    assert source.missing_values.get("wrong_type", 0) == 0
    assert not math.isnan(float(np.concatenate(windows["mill-1"]).sum()))
