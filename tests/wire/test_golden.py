"""Golden payloads: what other tools on the plant floor (Node-RED, Telegraf) will parse.

A change that breaks one of these files is a change of the wire contract and needs a new
schema version, not an edit of the file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest

from contract import wire

HERE = Path(__file__).parent
DATA_FILES = sorted(p for p in HERE.glob("v1_*.json") if p.name != "v1_status.json")


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.stem)
def test_golden_envelope_round_trips(path: Path) -> None:
    raw = path.read_bytes()
    env = wire.decode(raw)
    assert env.schema_ == wire.SCHEMA
    assert json.loads(wire.encode(env)) == json.loads(raw)


def test_golden_status_round_trips() -> None:
    raw = (HERE / "v1_status.json").read_bytes()
    status = wire.decode_status(raw)
    assert status.state == "offline"
    assert json.loads(wire.encode(status)) == json.loads(raw)


def test_built_envelope_matches_golden_prediction_file() -> None:
    model = wire.ModelRef(
        name="cmapss_fd001", version="1.0.0",
        sha256="9f2c1a7e4b3d5c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f",
        threshold=0.5,
    )
    t0, t1 = datetime(2026, 1, 1, 5, tzinfo=UTC), datetime(2026, 1, 1, 10, tzinfo=UTC)
    env = wire.Envelope(
        schema=1, msg_id=UUID("0b6f3c1e-5d2a-4c8e-9f10-2a3b4c5d6e7f"), agent="gw-line1",
        ts=datetime(2026, 1, 1, 10, 0, 1, 250000, tzinfo=UTC), seq=41, model=model,
        items=[
            wire.Prediction(asset="engine-031", window_start=t0, window_end=t1, score=0.8125,
                            alert=True),
            wire.Prediction(asset="engine-034", window_start=t0, window_end=t1, score=0.03125,
                            alert=False),
        ],
    )
    assert json.loads(wire.encode(env)) == json.loads((HERE / "v1_predictions.json").read_bytes())


def _golden() -> dict:
    return json.loads((HERE / "v1_predictions.json").read_bytes())


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(schema=2), "unknown_schema"),
        (lambda d: d.pop("schema"), "unknown_schema"),
        (lambda d: d.update(extra_field=1), "invalid"),
        (lambda d: d["items"][0].update(score=1.5), "invalid"),
        (lambda d: d["items"][0].update(window_end="2026-01-01T10:00:00"), "invalid"),
        (lambda d: d["items"][0].update(kind="mystery"), "invalid"),
        (lambda d: d.update(items=[]), "invalid"),
        (lambda d: d["model"].update(sha256="xyz"), "invalid"),
        (lambda d: d.update(msg_id="not-a-uuid"), "invalid"),
        (lambda d: d["items"][0].update(alert=False), "invalid"),  # 0.8125 >= threshold 0.5
        (lambda d: d["items"][0].update(window_start="2026-01-01T11:00:00Z"), "invalid"),
        (lambda d: d["items"][0].update(asset="pump\\3"), "invalid"),
        (lambda d: d["items"][0].update(asset="x" * 129), "invalid"),
        (lambda d: d.update(seq=2**63), "invalid"),
    ],
)
def test_decode_rejects_with_reason(mutate, reason: str) -> None:
    data = _golden()
    mutate(data)
    with pytest.raises(wire.WireError) as err:
        wire.decode(json.dumps(data).encode())
    assert err.value.reason == reason


def test_decode_rejects_nan_token() -> None:
    raw = (HERE / "v1_predictions.json").read_bytes().replace(b"0.8125", b"NaN")
    with pytest.raises(wire.WireError) as err:
        wire.decode(raw)
    assert err.value.reason == "invalid"


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b""])
def test_decode_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(wire.WireError) as err:
        wire.decode(raw)
    assert err.value.reason == "malformed"


def test_decode_rejects_oversized_before_parsing() -> None:
    raw = b'{"schema": 1, "pad": "' + b"x" * wire.MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(wire.WireError) as err:
        wire.decode(raw)
    assert err.value.reason == "too_large"


def test_encode_refuses_oversized_envelope() -> None:
    env = wire.decode((HERE / "v1_predictions.json").read_bytes())
    many = env.items * (wire.MAX_ITEMS // 2)
    big = env.model_copy(update={"items": many})
    with pytest.raises(wire.WireError) as err:
        wire.encode(big)
    assert err.value.reason == "too_large"


@pytest.mark.parametrize(
    "bad", ["", "a/b", "a+b", "a#", "x\x00"],
)
def test_topic_refuses_wildcards_and_separators(bad: str) -> None:
    with pytest.raises(wire.WireError):
        wire.topic("plant", bad, "gw", "predictions")


def test_envelope_may_only_travel_on_its_own_agent_and_kind() -> None:
    env = wire.decode((HERE / "v1_predictions.json").read_bytes())
    env.check_topic(wire.parse_topic("linewatch/v1/plant1/line1/gw-line1/predictions"))
    for other in ["linewatch/v1/plant1/line1/gw-other/predictions",
                  "linewatch/v1/plant1/line1/gw-line1/health"]:
        with pytest.raises(wire.WireError) as err:
            env.check_topic(wire.parse_topic(other))
        assert err.value.reason == "invalid"


def test_topic_round_trip() -> None:
    t = wire.topic("plant1", "line3", "gw-7", "health")
    parts = wire.parse_topic(t)
    assert (parts.site, parts.line, parts.agent, parts.kind) == ("plant1", "line3", "gw-7",
                                                                 "health")
    for bad in ["linewatch/v2/a/b/c/health", "linewatch/v1/a/b/health", "linewatch/v1/a/b/c/x"]:
        with pytest.raises(wire.WireError):
            wire.parse_topic(bad)


def test_golden_andon_state_and_event_round_trip() -> None:
    raw = (HERE / "andon_v1_state.json").read_bytes()
    state = wire.decode_andon_state(raw)
    assert (state.level, state.open, [t.id for t in state.tickets]) == ("alarm", 2, [42, 40])
    assert json.loads(wire.encode(state)) == json.loads(raw)
    raw = (HERE / "andon_v1_event.json").read_bytes()
    event = wire.decode_andon_event(raw)
    assert (event.incident, event.event, event.level) == ("linewatch:plant1:ticket-42",
                                                          "opened", "alarm")
    assert json.loads(wire.encode(event)) == json.loads(raw)
    assert wire.andon_topic("plant1", "line3", "state") == "linewatch/andon/v1/plant1/line3/state"
