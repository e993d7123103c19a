"""The benchmark cases. Each takes a repeat count and returns a dict of medians/ratios."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agent.datasets import read_recordings
from agent.estimate import DRAWS, WINDOW, PerformanceEstimator
from agent.features import FeatureExtractor
from agent.inference import OnnxModel
from agent.monitors.budget import calibrate
from agent.monitors.envelope import EnvelopeMonitor
from agent.monitors.quality import QualityMonitor
from agent.outbox import Outbox
from agent.windows import Windower
from bench.agent_perf import agent_pipeline
from bench.false_alarms import false_alarms
from contract import wire

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cmapss_fd001"
DATA = ROOT / "models" / "data" / "cmapss_fd001" / "test_FD001.txt.gz"


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def agent_compute(repeats: int) -> dict:
    with_monitors = _agent_compute(repeats, monitors=True)
    without = _agent_compute(repeats, monitors=False)
    return {**with_monitors, "without_monitors": without,
            "monitors_share_of_time": round(1 - without["median_s"] / with_monitors["median_s"],
                                            3)}


def _agent_compute(repeats: int, *, monitors: bool) -> dict:
    """Quality checks -> windows -> features -> ONNX -> envelope monitor over all 100 FD001
    test engines, one cycle of every engine per tick (how the replay feeds the pipeline).
    ``monitors`` False leaves the quality and envelope monitors out, for their share."""
    model = OnnxModel(MODEL)
    card = model.card
    recs = read_recordings(DATA, "cmapss")
    cols = [recs[0].channels.index(c) for c in card.channel_names]
    n_rows = sum(len(r.t) for r in recs)
    max_len = max(len(r.t) for r in recs)

    def run() -> int:
        w = Windower(card.window.size, card.window.hop, len(cols))
        fx = FeatureExtractor(card.features, card.channel_names)
        cal = calibrate(card, wire.Budget(alarms=1, per_days=90, windows_per_day=144), 100)
        envelope = EnvelopeMonitor.from_card(card, cal.envelope, cal.allowance)
        quality = QualityMonitor(card.channel_names, cal.limits, step_window=cal.step_window)
        scored = 0
        for i in range(max_len):
            ready = []
            for r in recs:
                if i >= len(r.t):
                    continue
                t, v = r.t[i:i + 1], r.values[i:i + 1, cols]
                if monitors:
                    t, v = quality.clean(r.asset, t, v)
                out = w.update(r.asset, t, v)
                if out is not None:
                    ready.append(out)
            if ready:
                x = fx.transform(np.concatenate([o.values for o in ready]))
                if monitors:
                    envelope.update([o.asset for o in ready for _ in range(len(o))], x,
                                    np.full(len(x), float(i)))
                model.run(x)
                scored += len(x)
        return scored

    scored = run()
    t = _median_s(run, repeats)
    return {"rows": n_rows, "windows": scored, "median_s": round(t, 4),
            "rows_per_s": round(n_rows / t), "windows_per_s": round(scored / t)}


def _envelope(n_items: int) -> wire.Envelope:
    ref = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)
    now = datetime.now(UTC)
    items = [wire.Prediction(asset=f"engine-{i % 100:03d}", window_start=now, window_end=now,
                             score=0.25, alert=False) for i in range(n_items)]
    return wire.Envelope.build("gw", 0, ref, items)


def wire_codec(repeats: int) -> dict:
    """Encode/decode cost per prediction item, by batch size."""
    out = {}
    for n in (1, 10, 100, 500):
        env = _envelope(n)
        raw = wire.encode(env)
        enc = _median_s(lambda env=env: [wire.encode(env) for _ in range(200)], repeats) / 200
        dec = _median_s(lambda raw=raw: [wire.decode(raw) for _ in range(200)], repeats) / 200
        out[f"items_{n}"] = {"bytes": len(raw), "encode_us_per_item": round(enc / n * 1e6, 2),
                             "decode_us_per_item": round(dec / n * 1e6, 2)}
    out["decode_ratio_1_vs_100_per_item"] = round(
        out["items_1"]["decode_us_per_item"] / out["items_100"]["decode_us_per_item"], 1)
    return out


def outbox(repeats: int) -> dict:
    """Outbox put (one message per transaction) and drain (pending + ack in chunks)."""
    payload = wire.encode(_envelope(100))

    def cycle() -> None:
        with tempfile.TemporaryDirectory() as d:
            box = Outbox(Path(d) / "o.db")
            for _ in range(500):
                s = box.allocate_seq()
                box.put(s, str(s), "t", "predictions", payload, droppable=True)
            while box.depth:
                box.ack([r.seq for r in box.pending(-1, 100)])
            box.close()

    t = _median_s(cycle, repeats)
    return {"messages": 500, "payload_bytes": len(payload),
            "us_per_message_put_and_drain": round(t / 500 * 1e6, 1)}


def ingest(repeats: int) -> dict:
    """Aggregator ingest without the network: decode, dedupe, store, rules, tickets, with
    the embedded SQLite stores; messages/s and predictions/s by predictions per message."""
    from aggregator.db import open_engine, open_sessions
    from aggregator.ingest import Ingestor
    from aggregator.series import open_series
    from aggregator.settings import Settings
    from aggregator.validate import RawMessage

    ref = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)
    topic = wire.topic("plant1", "line1", "gw", "predictions")
    out = {}
    for per_msg in (1, 10, 100):
        n_msgs = 2000 // per_msg if per_msg > 1 else 1000

        def payloads(seq0: int, per_msg: int = per_msg, n_msgs: int = n_msgs) -> list:
            t0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp() + seq0 * per_msg * 60
            msgs = []
            for m in range(n_msgs):
                items = []
                for i in range(per_msg):
                    t = datetime.fromtimestamp(t0 + (m * per_msg + i) * 60, UTC)
                    items.append(wire.Prediction(asset=f"engine-{i % 10:03d}", window_start=t,
                                                 window_end=t, score=0.2, alert=False))
                msgs.append((topic, wire.encode(wire.Envelope.build("gw", seq0 + m, ref,
                                                                    items))))
            return msgs

        times = []
        for r in range(repeats):
            with tempfile.TemporaryDirectory() as d:
                settings = Settings(series_path=Path(d) / "s.db",
                                    db_url=f"sqlite:///{Path(d) / 'a.db'}")
                series = open_series(settings)
                ingestor = Ingestor(series, open_sessions(open_engine(settings.db_url)),
                                    settings)
                batch = [RawMessage(t, p) for t, p in payloads(r * n_msgs)]
                t_start = time.perf_counter()
                for lo in range(0, len(batch), 500):
                    ingestor.handle_batch(batch[lo:lo + 500])
                times.append(time.perf_counter() - t_start)
                series.close()
        t = statistics.median(times)
        out[f"predictions_per_message_{per_msg}"] = {
            "messages": n_msgs, "messages_per_s": round(n_msgs / t),
            "predictions_per_s": round(n_msgs * per_msg / t)}
    return out


def estimate(repeats: int) -> dict:
    """The label-free performance estimate (``agent.estimate``), once per health report,
    over the default window of 2000 scored windows and 400 draws: the shipped FD001 model's
    last 2000 test windows in replay order (through its calibration map, whose many exact
    zeros are not drawn), and the worst case, every window's probability strictly between
    0 and 1; plus the cost of feeding it, per window."""
    from contract.card import ModelCard

    card = ModelCard.load(MODEL)
    model = OnnxModel(MODEL)
    recs = read_recordings(DATA, "cmapss")
    cols = [recs[0].channels.index(c) for c in card.channel_names]
    fx = FeatureExtractor(card.features, card.channel_names)
    parts = []
    for r in recs:
        out = Windower(card.window.size, card.window.hop, len(cols)).update(
            r.asset, r.t, r.values[:, cols])
        if out is not None:
            parts.append((out.end, model.run(fx.transform(out.values))))
    ends = np.concatenate([e for e, _ in parts])
    scores = np.concatenate([s for _, s in parts])[np.argsort(ends, kind="stable")]
    worst = np.random.default_rng(0).uniform(0.01, 0.99, WINDOW)
    out = {"window": WINDOW, "draws": DRAWS}
    for name, s in (("fd001_replay", scores), ("worst_case", worst)):
        est = PerformanceEstimator(card, window=WINDOW, draws=DRAWS)
        est.update(s)
        out[f"{name}_ms_per_estimate"] = round(_median_s(est.estimate, repeats) * 1e3, 3)
    feed = PerformanceEstimator(card, window=WINDOW)
    per = _median_s(lambda: [feed.update(scores[i:i + 100])
                             for i in range(0, len(scores), 100)], repeats)
    out["update_us_per_window"] = round(per / len(scores) * 1e6, 3)
    return out


ALL: dict[str, Callable[[int], dict]] = {
    "ingest": ingest,
    "agent_compute": agent_compute,
    "wire_codec": wire_codec,
    "outbox": outbox,
    "false_alarms": false_alarms,
    "estimate": estimate,
    "agent_pipeline": agent_pipeline,
}
