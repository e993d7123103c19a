from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import config as agent_config
from agent.outbox import Outbox
from agent.pipeline import _Batcher
from contract import wire

MODEL = wire.ModelRef(name="m", version="1", sha256="0" * 64, threshold=0.5)


def _batcher(tmp_path: Path, max_items: int) -> tuple[_Batcher, Outbox]:
    cfg = agent_config.parse({
        "agent": {"id": "gw", "site": "s", "line": "l"},
        "model": {"dir": "unused"},
        "source": {"type": "replay", "path": "unused"},
        "publish": {"max_items": max_items},
    })
    box = Outbox(tmp_path / "o.db")
    return _Batcher(cfg, box, MODEL, notify=lambda: None), box


def _predictions(n: int, alert_every: int = 0) -> list[wire.Prediction]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [wire.Prediction(asset=f"a-{i % 7}", window_start=t0 + timedelta(minutes=i),
                            window_end=t0 + timedelta(minutes=i),
                            score=0.9 if alert_every and i % alert_every == 0 else 0.1,
                            alert=bool(alert_every and i % alert_every == 0))
            for i in range(n)]


def _decoded(box: Outbox) -> list[wire.Envelope]:
    return [wire.decode(r.payload) for r in box.pending(-1, 10_000)]


def test_batches_split_at_max_items_and_keep_every_item_in_order(tmp_path: Path) -> None:
    batcher, box = _batcher(tmp_path, max_items=100)
    items = _predictions(250)
    batcher.add("predictions", items)
    batcher.flush()
    envs = _decoded(box)
    assert [len(e.items) for e in envs] == [100, 100, 50]
    assert [i for e in envs for i in e.items] == items
    assert [e.seq for e in envs] == sorted(e.seq for e in envs)


def test_a_batch_over_the_payload_limit_is_halved_not_lost(tmp_path: Path) -> None:
    batcher, box = _batcher(tmp_path, max_items=5000)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = [wire.DriftEvent(at=t0, monitor="score", detector="ADWIN", detail="x" * 2000)
              for _ in range(400)]  # about 0.9 MB as one message
    batcher.add("drift", events)
    batcher.flush()
    envs = _decoded(box)
    assert len(envs) > 1
    assert all(len(wire.encode(e)) <= wire.MAX_PAYLOAD_BYTES for e in envs)
    assert sum(len(e.items) for e in envs) == 400


def test_only_alert_free_predictions_and_health_are_droppable(tmp_path: Path) -> None:
    batcher, box = _batcher(tmp_path, max_items=10)
    batcher.add("predictions", _predictions(10))             # no alert: droppable
    batcher.add("predictions", _predictions(10, alert_every=5))  # alerts: kept
    batcher.flush()
    rows = box._db.execute("SELECT kind, droppable FROM outbox ORDER BY seq").fetchall()
    assert rows == [("predictions", 1), ("predictions", 0)]
