"""``wire.decode`` validates predictions without a Python call per item (a schema with
constraints only, then the UTC / window-order / alert checks over the batch in one loop):
it must answer exactly what the models' own validation answers, values and errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from contract import wire

REF = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)
T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)


def _payload(*items: dict[str, Any], threshold: float = 0.5) -> bytes:
    env = wire.Envelope.build("gw-1", 3, REF.model_copy(update={"threshold": threshold}), [
        wire.Prediction(asset="a", window_start=T0, window_end=T0, score=0.1, alert=False)])
    data = json.loads(wire.encode(env))
    data["items"] = list(items)
    return json.dumps(data).encode()


def _item(start: str = "2026-03-01T08:00:00Z", end: str = "2026-03-01T08:01:00Z",
          score: float = 0.25, alert: bool = False) -> dict[str, Any]:
    return {"kind": "prediction", "asset": "pump-1", "window_start": start,
            "window_end": end, "score": score, "alert": alert}


def _full(raw: bytes) -> wire.Envelope:
    """What the models' own validators make of it (no fast path)."""
    return wire.Envelope.model_validate_json(raw)


GOOD = [
    pytest.param(_payload(_item()), id="utc"),
    pytest.param(_payload(*[_item(score=s / 10, alert=s >= 5) for s in range(10)]),
                 id="alerts-at-threshold"),
    pytest.param(_payload(_item(start="2026-03-01T09:00:00+01:00",
                                end="2026-03-01T10:01:00+02:00")), id="other-zones"),
    pytest.param(_payload(_item(start="2026-03-01T08:00:00+00:00",
                                end="2026-03-01T08:00:00.000001Z")), id="equal-ish"),
    pytest.param(_payload(_item(), {"kind": "drift", "at": "2026-03-01T08:00:00+05:00",
                                    "monitor": "score", "detector": "step"}), id="mixed-kinds"),
]


@pytest.mark.parametrize("raw", GOOD)
def test_a_valid_envelope_decodes_to_what_the_models_make_of_it(raw: bytes) -> None:
    fast, full = wire.decode(raw), _full(raw)
    assert fast == full
    for ours, theirs in zip(fast.items, full.items, strict=True):
        assert type(ours) is type(theirs)
        for field in ("window_start", "window_end", "at"):
            if hasattr(ours, field):
                assert getattr(ours, field).utcoffset() == timedelta(0)
                assert getattr(ours, field) == getattr(theirs, field)


BAD = [
    pytest.param(_payload(_item(start="2026-03-01T08:00:00")), id="naive-start"),
    pytest.param(_payload(_item(end="2026-03-01T08:01:00")), id="naive-end"),
    pytest.param(_payload(_item(start="2026-03-01T08:02:00Z")), id="window-reversed"),
    pytest.param(_payload(_item(start="2026-03-01T09:02:00+01:00")), id="reversed-in-zones"),
    pytest.param(_payload(_item(), _item(score=0.75, alert=False)), id="alert-missing"),
    pytest.param(_payload(_item(score=0.25, alert=True)), id="alert-below-threshold"),
    pytest.param(_payload(_item(score=1.5, alert=True)), id="score-above-one"),
    pytest.param(_payload({**_item(), "extra": 1}), id="extra-field"),
    pytest.param(_payload({**_item(), "asset": "p\\1"}), id="backslash"),
]


@pytest.mark.parametrize("raw", BAD)
def test_bad_input_gets_the_models_own_error(raw: bytes) -> None:
    with pytest.raises(ValidationError) as full:
        _full(raw)
    first = full.value.errors()[0]
    expected = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    with pytest.raises(wire.WireError) as fast:
        wire.decode(raw)
    assert (fast.value.reason, fast.value.message) == ("invalid", expected)


def test_the_fast_schema_keeps_every_constraint_but_the_per_item_checks() -> None:
    # It refuses what pydantic-core refuses on its own, and lets the three checks through
    # to the loop (which then hands the envelope to the full validation).
    reversed_window = _payload(_item(start="2026-03-01T08:02:00Z"))
    assert wire._FAST_ENVELOPE.validate_json(reversed_window).items[0].window_start == (
        T0 + timedelta(minutes=2))
    assert wire._fast_envelope(reversed_window) is None
    with pytest.raises(ValidationError):
        wire._FAST_ENVELOPE.validate_json(_payload(_item(score=float("inf"))).replace(
            b"Infinity", b"1e999"))
