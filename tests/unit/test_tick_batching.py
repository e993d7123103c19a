"""The batched paths give what the one-asset-at-a-time paths give: the same windows, the
same quality events and kept samples, and predictions encoded to the same bytes as the
wire models."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from agent.encode import predictions_payload
from agent.monitors.quality import ChannelLimits, QualityMonitor
from agent.windows import Windower
from contract import wire

REF = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)


@pytest.mark.parametrize(("size", "hop"), [(1, 1), (4, 1), (5, 2), (3, 5)])
def test_a_tick_of_many_assets_makes_the_windows_of_one_asset_at_a_time(size: int,
                                                                       hop: int) -> None:
    rng = np.random.default_rng(size * 10 + hop)
    one, many = Windower(size, hop, 2), Windower(size, hop, 2)
    rows = {f"a{i}": many.row(f"a{i}") for i in range(6)}
    for k in range(60):
        sending = [a for a in rows if rng.random() < 0.8]
        v = rng.normal(size=(len(sending), 2))
        want = [(a, w) for a, x in zip(sending, v, strict=True)
                if (w := one.update(a, np.array([float(k)]), x[None])) is not None]
        # Now and then one asset's sample comes through the per-asset path instead.
        block = sending[0] if sending and k % 7 == 0 else None
        got0 = None if block is None else many.update(block, np.array([float(k)]), v[:1])
        sel = [i for i, a in enumerate(sending) if a != block]
        got = many.update_tick(np.array([rows[sending[i]] for i in sel], dtype=np.int64),
                               np.full(len(sel), float(k)), v[sel])
        assert (got0 is not None) == any(a == block for a, _ in want)
        expect = [(a, w) for a, w in want if a != block]
        assert got.assets == [a for a, _ in expect]
        for j, (_, w) in enumerate(expect):
            np.testing.assert_array_equal(got.values[j], w.values[0])
            assert (got.start[j], got.end[j]) == (w.start[0], w.end[0])


def _events(q: QualityMonitor) -> list[tuple]:
    return [(e.asset, e.at_s, e.monitor, e.detector, e.state, e.since_s, e.value)
            for e in q.events()]


def test_a_tick_of_many_assets_is_checked_as_one_asset_at_a_time() -> None:
    limits = {"a": ChannelLimits(0.0, 10.0, noise=0.5, stuck_samples=6, step_threshold=4.0,
                                 step_rearm=1.0),
              "b": ChannelLimits(-5.0, 5.0, noise=1.0, stuck_samples=8, step_threshold=5.0,
                                 step_rearm=1.0),
              "c": ChannelLimits(0.0, 1.0)}
    one, many = (QualityMonitor(["a", "b", "c", "d"], limits, step_window=4) for _ in "12")
    assets = [f"m{i}" for i in range(8)]
    rows = np.array([many.row(a) for a in assets])
    rng = np.random.default_rng(7)
    t = np.zeros(8)
    last = rng.normal(size=(8, 4)) + [5, 0, 0.5, 0]
    seen = set()
    for k in range(300):
        t += np.where(rng.random(8) < 0.02, 9.0, 1.0)  # now and then a gap
        v = rng.normal(scale=[0.5, 1.0, 0.1, 1.0], size=(8, 4)) + [5, 0, 0.5, 0]
        v[:, 0] += np.where(np.arange(8) == k // 40, 3.0, 0.0)  # a step on one asset
        v = np.where(rng.random((8, 4)) < 0.3, last, v)  # repeats, some long enough
        v[rng.random(8) < 0.02, 1] = np.nan
        v[rng.random(8) < 0.02, 2] = 40.0  # impossible
        last = v
        kept = [len(one.clean(a, t[i:i + 1], v[i:i + 1])[0]) > 0 for i, a in enumerate(assets)]
        assert many.clean_tick(assets, rows, t.copy(), v).tolist() == kept
        events = _events(many)
        assert events == _events(one)
        seen |= {e[3] for e in events}
    assert seen == {"nan", "impossible", "stuck", "step", "gap"}
    assert many.rejected_readings == one.rejected_readings > 0


def test_predictions_are_encoded_to_the_bytes_of_the_wire_models() -> None:
    rng = np.random.default_rng(3)
    n = 300
    assets = [f"engine-{i % 7:03d},é\"" for i in range(n)]
    start = 1.767e9 + np.array([round(x, d) for x, d in zip(rng.uniform(0, 1e5, n).tolist(),
                                                             rng.integers(0, 7, n).tolist(),
                                                             strict=True)])
    end = start + rng.choice([0.0, 0.5, 600.0, 1e-3], n)
    score = np.concatenate([[0.0, 1.0, 1e-5, 3.2e-7, 5e-324, 0.5, 0.1],
                            rng.uniform(0, 1, n - 7) ** 3])
    alert = score >= REF.threshold
    msg_id, ts, payload = predictions_payload("gw", 12, REF, assets, start, end, score, alert)
    items = [wire.Prediction(asset=a, window_start=datetime.fromtimestamp(s0, UTC),
                             window_end=datetime.fromtimestamp(s1, UTC), score=s, alert=al)
             for a, s0, s1, s, al in zip(assets, start.tolist(), end.tolist(), score.tolist(),
                                         alert.tolist(), strict=True)]
    env = wire.Envelope(schema_=1, msg_id=msg_id, agent="gw", ts=ts, seq=12, model=REF,
                        items=items)
    assert payload == wire.encode(env)


def test_a_prediction_the_wire_refuses_is_refused_as_before() -> None:
    one = np.array([1.767e9])
    with pytest.raises(ValueError, match="less than or equal to 1"):
        predictions_payload("gw", 0, REF, ["a"], one, one, np.array([1.5]), np.array([True]))
    with pytest.raises(ValueError, match="window_start is after window_end"):
        predictions_payload("gw", 0, REF, ["a"], one + 1, one, np.array([0.1]),
                            np.array([False]))
