"""The MQTT input's mapping, without a broker: topic patterns to assets and channels, JSON
paths, one channel per topic assembled into samples, blocks of high-rate samples handed
over as arrays, and every kind of garbage counted, reported once and ended by good input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.sources.config import MqttSourceConfig
from agent.sources.mqtt import MqttSource
from contract.card import ModelCard

ROOT = Path(__file__).resolve().parents[2]
AI4I = ModelCard.load(ROOT / "models" / "ai4i2020")
IMS = ModelCard.load(ROOT / "models" / "ims_bearing")


def _source(card: ModelCard, **config) -> MqttSource:
    cfg = MqttSourceConfig.model_validate({"type": "mqtt"} | config)
    return MqttSource(cfg, card, client_id="unit")


def _msg(topic: str, payload, at: float = 1000.0) -> tuple[str, bytes, float]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return topic, raw, at


def test_one_channel_per_topic_is_assembled_into_samples() -> None:
    src = _source(AI4I, align_s=0.5, topics=[
        {"pattern": "plant/+line/+station/+channel", "asset": "{line}-{station}"}])
    values = dict(zip(AI4I.channel_names, [298.0, 308.0, 1500.0, 40.0, 5.0, 1.0],
                      strict=True))
    batch = [_msg(f"plant/l1/s{k}/{c}", {"value": v + k}, 10.0 + 0.01 * j)
             for k in (1, 2) for j, (c, v) in enumerate(values.items())]
    batch.append(_msg("plant/l1/s1/not_a_model_channel", 3.0, 10.1))  # ignored
    readings = {r.asset: r for r in src.readings(batch)}
    assert sorted(readings) == ["l1-s1", "l1-s2"]
    np.testing.assert_array_equal(readings["l1-s2"].values[0],
                                  [v + 2 for v in values.values()])
    assert readings["l1-s1"].t.tolist() == [10.0]
    # A channel that stays silent: the next sample comes with it missing (NaN).
    out = src.readings([_msg("plant/l1/s1/air_temp_k", 299.0, 20.0),
                        _msg("plant/l1/s1/air_temp_k", 300.0, 21.0)])
    (r,) = out
    assert r.values[0, 0] == 299.0 and np.isnan(r.values[0, 1:]).all()
    assert src.missing_values == {"missing_channel": 1}


def test_a_block_of_high_rate_samples_is_one_array() -> None:
    src = _source(IMS, topics=[{"pattern": "vib/+asset", "channels": {"accel": "x"},
                                "time": {"field": "t0", "format": "epoch_s"}}])
    x = np.sin(np.arange(4096) / 7.0)
    (r,) = src.readings([_msg("vib/bearing-1", {"t0": 50.0, "x": x.tolist()})])
    assert r.values.shape == (4096, 1)
    np.testing.assert_array_equal(r.values[:, 0], x)
    np.testing.assert_allclose(r.t, 50.0 + np.arange(4096) / IMS.input.rate_hz)


@pytest.mark.parametrize(("payload", "kind"), [
    (b"{not json", "not_json"),
    (b"\xff\xfe", "not_json"),
    ({"t": "2026-01-01T00:00:00Z", "v": 1, "pad": "x" * 400}, "oversized"),
    ({"t": "2026-01-01T00:00:00Z"}, "missing_field"),
    ({"v": 1}, "missing_field"),
    ({"t": "soon", "v": 1}, "bad_time"),
    ([1, 2], "bad_payload"),
])
def test_garbage_is_dropped_counted_reported_once_and_ended(payload, kind: str) -> None:
    src = _source(IMS, max_payload=300, topics=[{
        "pattern": "vib/+asset", "channels": {"accel": "v"},
        "time": {"field": "t", "format": "iso"}}])
    good = {"t": "2026-01-01T00:00:01Z", "v": 0.5}
    out = src.readings([_msg("vib/b1", payload), _msg("vib/b1", payload),
                        _msg("vib/b2", good)])
    assert [r.asset for r in out] == ["b2"]  # the other asset keeps flowing
    assert src.rejected == 2 and src.dropped == {kind: 2}
    assert [(e.asset, e.detector, e.state) for e in src.events()] == [
        ("b1", kind, "start")]
    src.readings([_msg("vib/b1", good)])
    assert [(e.asset, e.detector, e.state) for e in src.events()] == [("b1", kind, "end")]


def test_nan_null_and_wrong_types_are_missing_values_not_dropped_messages() -> None:
    src = _source(AI4I, topics=[{"pattern": "m/+asset", "channels": {
        c: f"d.{c}" for c in AI4I.channel_names}}])
    payload = {"d": {c: 1.0 for c in AI4I.channel_names}}
    payload["d"]["speed_rpm"] = None
    payload["d"]["torque_nm"] = "high"
    raw = json.dumps(payload).replace('"air_temp_k": 1.0', '"air_temp_k": NaN').encode()
    del payload["d"]["type_code"]
    (r,) = src.readings([("m/a", raw, 5.0), _msg("m/a", payload, 6.0)])
    assert src.rejected == 0
    assert math.isnan(r.values[0, 0]) and np.isnan(r.values[:, 2:4]).all()
    assert math.isnan(r.values[1, 5]) and r.values[1, 4] == 1.0
    assert src.missing_values == {"null": 2, "wrong_type": 2, "missing_field": 1}


def test_assets_outside_the_list_are_counted() -> None:
    src = _source(IMS, assets=["b1"], topics=[{"pattern": "vib/+asset",
                                                "channels": {"accel": "v"}}])
    out = src.readings([_msg("vib/b1", {"v": 1.0}), _msg("vib/b9", {"v": 1.0})])
    assert [r.asset for r in out] == ["b1"] and src.dropped == {"unknown_asset": 1}
