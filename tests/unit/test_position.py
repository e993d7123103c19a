"""A restarted agent resumes its replay (issue #9 item 3): the saved position, and windows
after a resume that are exactly the ones an uninterrupted run gives, never with new
timestamps.

The agents here talk to no broker (a closed port): everything they score stays in their
outbox, which is what is compared.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import itertools
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from agent_support import ASSETS, MODEL, TEST_FILE, agent_cfg, as_key
from servers import free_port

from agent import config as agent_config
from agent.outbox import Outbox
from agent.pipeline import Agent
from agent.position import Position, PositionStore, differences
from agent.sources.replay import ReplaySource
from agent.windows import Windower
from contract import wire
from contract.card import ModelCard

Key = tuple[str, int]
# Ticks of the three engines' replay: engine 34 has 203 cycles (31: 196, 1: 31).
TICKS = 203


# --- the store ------------------------------------------------------------------------------

def test_a_position_is_saved_loaded_and_kept_across_connections(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "outbox.db"
    store = PositionStore(path)
    assert store.load() is None
    pos = Position({"path": "/data/f.txt", "assets": ["a", "b"], "tick": 1.0},
                   start_epoch=1_767_225_600.25, loop=2, tick=17, total_ticks=40,
                   plant_time=1_767_236_400.0)
    store.save(pos)
    store.save(Position(pos.fingerprint, pos.start_epoch, loop=2, tick=18, total_ticks=40))
    store.close()

    again = PositionStore(path)
    loaded = again.load()
    again.close()
    assert loaded == Position(pos.fingerprint, pos.start_epoch, loop=2, tick=18, total_ticks=40)
    assert loaded is not None and not loaded.at_end
    assert Position({}, 0.0, tick=40, total_ticks=40).at_end


def test_the_position_shares_the_outbox_file_without_disturbing_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    store = PositionStore(path)
    seq = box.allocate_seq()
    box.put(seq, "id-0", "t", "predictions", b"{}", droppable=True)
    store.save(Position({"path": "f"}, 1.0, tick=3, total_ticks=9))
    box.ack([seq])
    assert box.depth == 0
    (mode,) = store._db.execute("PRAGMA journal_mode").fetchone()
    store.close()
    box.close()
    assert mode == "wal"
    again = Outbox(path)
    assert again.allocate_seq() == seq + 1  # the outbox's own state is untouched
    again.close()


def test_an_unreadable_saved_position_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PositionStore(tmp_path / "outbox.db")
    store.save(Position({"path": "f"}, 1.0, tick=3))
    store._db.execute("UPDATE source_position SET fingerprint = 'not json'")
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
    store.close()
    assert "unreadable" in caplog.text


def test_fingerprints_differ_by_the_keys_that_changed() -> None:
    a = {"path": "/f", "size": 10, "assets": ["x"], "start": None}
    assert differences(a, dict(a)) == []
    assert differences(a, {**a, "size": 11, "assets": ["x", "y"]}) == ["assets", "size"]


# --- the replay source ------------------------------------------------------------------------

def _source(**source: object) -> ReplaySource:
    cfg = agent_config.ReplaySourceConfig.model_validate(
        {"path": str(TEST_FILE), "assets": ASSETS, "speed": 0, "step_s": 600,
         "start": "2026-01-01T00:00:00Z", **source})
    return ReplaySource(cfg, ModelCard.load(MODEL))


def test_the_fingerprint_names_the_file_its_state_and_how_it_is_replayed(tmp_path: Path) -> None:
    fp = _source().fingerprint()
    assert fp["path"] == str(TEST_FILE.resolve())
    assert fp["size"] == TEST_FILE.stat().st_size
    assert fp["sha256"] == hashlib.sha256(TEST_FILE.read_bytes()).hexdigest()
    assert fp["assets"] == ASSETS and fp["format"] == "cmapss"
    assert _source(speed=50, loop=True).fingerprint() == fp  # pacing is not identity
    assert differences(fp, _source(assets=ASSETS[:2]).fingerprint()) == ["assets"]
    assert differences(fp, _source(step_s=60).fingerprint()) == ["step_s"]
    assert differences(fp, _source(start="2026-02-01T00:00:00Z").fingerprint()) == ["start"]
    copy = tmp_path / TEST_FILE.name
    copy.write_bytes(TEST_FILE.read_bytes())
    assert differences(fp, _source(path=str(copy)).fingerprint()) == ["path"]
    os.utime(copy, ns=(1, 1))  # touched: still the same data
    assert differences(fp, _source(path=str(copy)).fingerprint()) == ["path"]
    changed = tmp_path / "changed.txt.gz"
    lines = gzip.decompress(TEST_FILE.read_bytes()).splitlines(keepends=True)
    changed.write_bytes(gzip.compress(b"".join(lines[:-1])))  # engine 100 one cycle shorter
    assert {"sha256", "size"} <= set(differences(fp, _source(path=str(changed)).fingerprint()))


def _stream(source: ReplaySource, limit: int) -> Iterator[list]:
    return itertools.islice(source.ticks(), limit)  # asks for no tick past the limit


@pytest.mark.parametrize(("hop", "stop_at", "loop"), [
    (1, 120, False),
    (7, 120, False),
    (7, TICKS + 5, True),  # resumed early in the second pass: the windows span the two
    (40, TICKS + 100, True),  # hop > size
])
def test_a_windower_refilled_by_warmup_continues_exactly_as_an_uninterrupted_one(
    hop: int, stop_at: int, loop: bool
) -> None:
    """Any hop: the re-fed samples keep the windows' alignment, across passes too."""
    size, end = 30, stop_at + 150

    def windows(source: ReplaySource, windower: Windower, readings_by_tick) -> set[Key]:
        out = set()
        for readings in readings_by_tick:
            for r in readings:
                w = windower.update(r.asset, r.t, r.values)
                if w is not None:
                    out |= {(w.asset, round(e * 1e9)) for e in w.end}
        return out

    whole = _source(loop=loop)
    n = len(whole.channels)
    reference = windows(whole, Windower(size, hop, n), _stream(whole, end))

    first = _source(loop=loop)
    before = windows(first, Windower(size, hop, n), _stream(first, stop_at))
    saved = first.position
    assert saved is not None and (saved.loop, saved.tick) == divmod(stop_at, TICKS)

    resumed = _source(loop=loop)
    resumed.seek(saved)
    refill = Windower(size, hop, n)
    warm = resumed.warmup(2 * size, hop)
    assert {r.asset for r in warm} == set(ASSETS)
    for r in warm:
        assert r.t[-1] <= saved.plant_time  # only samples the first run had handed over
        refill.update(r.asset, r.t, r.values)  # the windows it completes were scored before
    after = windows(resumed, refill, _stream(resumed, end - stop_at))
    assert before | after == reference
    assert not before & after
    assert min(e for _, e in after) > saved.plant_time * 1e9 - 1


def test_a_finished_replay_that_does_not_loop_has_nothing_left() -> None:
    source = _source()
    source.seek(Position(source.fingerprint(), source.start_position().start_epoch,
                         tick=TICKS, total_ticks=TICKS))
    assert list(source.ticks()) == [] and source.warmup(100) == []
    looping = _source(loop=True)
    looping.seek(Position(looping.fingerprint(), 0.0, loop=0, tick=TICKS, total_ticks=TICKS))
    assert looping.start_position().loop == 1 and looping.start_position().tick == 0
    first = next(looping.ticks())
    assert looping.position is not None and (looping.position.loop, looping.position.tick) == (1, 1)
    assert min(r.t[0] for r in first) == pytest.approx(TICKS * 600.0)  # pass 2's plant time


# --- the agent ------------------------------------------------------------------------------

def _cfg(tmp_path: Path, agent_id: str, **source: object) -> agent_config.AgentConfig:
    # Nothing listens on the port: everything stays in the outbox.
    cfg = agent_cfg(tmp_path, f"mqtt://127.0.0.1:{free_port()}", agent_id=agent_id, **source)
    return agent_config.parse({**cfg.model_dump(mode="json"),
                               "publish": {"max_items": 100, "flush_interval_s": 1000}})


def _stop_after(agent: Agent, ticks: int) -> None:
    """Make ``agent.run()`` stop (as on SIGTERM) after ``ticks`` ticks."""
    inner = agent.source.ticks

    def ticks_then_stop() -> Iterator[list]:
        for i, readings in enumerate(inner(), 1):
            if i == ticks:
                agent.stop()
            yield readings

    agent.source.ticks = ticks_then_stop  # type: ignore[method-assign]


def _run(agent: Agent) -> None:
    report = agent.run(drain_timeout_s=0)
    assert not report.drained  # no broker: all of it is still in the outbox


def _outbox(cfg: agent_config.AgentConfig) -> list[wire.Prediction]:
    box = Outbox(cfg.outbox_path)
    try:
        rows = box.pending(after_seq=-1, limit=1_000_000)
    finally:
        box.close()
    return [p for r in rows if r.kind == "predictions"
            for p in wire.decode(r.payload).items if isinstance(p, wire.Prediction)]


def _key(p: wire.Prediction) -> Key:
    return p.asset, round(p.window_end.timestamp() * 1e9)


def _uninterrupted(tmp_path: Path, start_epoch: float, **source: object) -> dict[Key, float]:
    """What one run without a restart scores, with the given plant start."""
    start = datetime.fromtimestamp(start_epoch, UTC).isoformat()
    agent = Agent(_cfg(tmp_path, "gw-whole", start=start, **source), record=True)
    if source.get("loop"):
        _stop_after(agent, 2 * TICKS + 40)
    report = agent.run(drain_timeout_s=0)
    scored = {as_key(s): s.score for s in report.scored}
    assert len(scored) == len(report.scored) > 300
    return scored


def _saved(cfg: agent_config.AgentConfig) -> Position:
    store = PositionStore(cfg.outbox_path)
    try:
        saved = store.load()
    finally:
        store.close()
    assert saved is not None
    return saved


def test_a_resumed_replay_scores_exactly_the_windows_an_uninterrupted_one_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped at tick 120 and started again, with ``start`` defaulting to now: the two
    runs together score every window once, under the first run's timestamps."""
    cfg = _cfg(tmp_path, "gw-resume", start=None)
    first = Agent(cfg)
    _stop_after(first, 120)
    _run(first)
    saved = _saved(cfg)
    assert (saved.loop, saved.tick, saved.total_ticks) == (0, 120, TICKS)

    with caplog.at_level(logging.INFO, logger="agent.pipeline"):
        second = Agent(cfg)
        _run(second)
    plant = datetime.fromtimestamp(saved.plant_time or 0, UTC).isoformat()
    assert (f"resuming replay of {TEST_FILE} at tick 120 of {TICKS} (plant time {plant})"
            in caplog.text)
    assert second.progress.ticks == TICKS

    stored = collections.Counter(_key(p) for p in _outbox(cfg))
    assert max(stored.values()) == 1  # nothing scored twice
    whole = _uninterrupted(tmp_path, saved.start_epoch)
    assert set(stored) == set(whole)
    scores = {_key(p): p.score for p in _outbox(cfg)}
    assert all(scores[k] == pytest.approx(s, abs=1e-12) for k, s in whole.items())
    assert second.progress.windows_scored == sum(e > saved.plant_time * 1e9 for _, e in whole)


def test_a_run_killed_between_flush_and_save_rescores_only_the_boundary_ticks(
    tmp_path: Path,
) -> None:
    """The crash the design allows: outputs in the outbox, position not yet saved. The
    ticks in between are scored again with the same window_end (stored once downstream)."""
    cfg = _cfg(tmp_path, "gw-crash", start=None)
    first = Agent(cfg)
    saves = 0
    flushed_through = 0
    inner_flush, inner_ticks = first.batcher.flush, first.source.ticks

    def ticks() -> Iterator[list]:
        nonlocal flushed_through
        for i, readings in enumerate(inner_ticks(), 1):
            yield readings
            if i % 25 == 0:  # a full flush after every 25th tick
                inner_flush()
                flushed_through = i
                first._save_position()

    def save_then_die(position: Position, state: tuple[str, bytes] | None = None) -> None:
        nonlocal saves
        saves += 1
        if saves == 4:  # the 4th flush's position (tick 100) never makes it to disk
            raise KeyboardInterrupt
        PositionStore.save(first.positions, position, state)

    first.source.ticks = ticks  # type: ignore[method-assign]
    first.positions.save = save_then_die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.run(drain_timeout_s=0)
    assert flushed_through == 100 and _saved(cfg).tick == 75

    second = Agent(cfg)
    _run(second)
    saved = _saved(cfg)
    assert saved.tick == TICKS
    whole = _uninterrupted(tmp_path, saved.start_epoch)
    counts = collections.Counter(_key(p) for p in _outbox(cfg))
    assert set(counts) == set(whole)
    twice = {k for k, n in counts.items() if n > 1}
    assert max(counts.values()) == 2
    # Exactly the windows that end in ticks 76-100: in the outbox, but past the position.
    tick_s = 600.0
    boundary = {k for k in whole if 75 * tick_s <= k[1] / 1e9 - saved.start_epoch < 100 * tick_s}
    assert twice == boundary and boundary


def test_a_replay_that_loops_resumes_in_the_pass_it_was_in(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "gw-loop", start=None, loop=True)
    first = Agent(cfg)
    _stop_after(first, TICKS + 10)
    _run(first)
    saved = _saved(cfg)
    assert (saved.loop, saved.tick) == (1, 10)
    second = Agent(cfg)
    _stop_after(second, TICKS + 30)  # 2 * TICKS + 40 in all
    _run(second)
    counts = collections.Counter(_key(p) for p in _outbox(cfg))
    assert max(counts.values()) == 1
    assert set(counts) == set(_uninterrupted(tmp_path, saved.start_epoch, loop=True))


def test_a_finished_replay_started_again_scores_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path, "gw-done", start=None)
    _run(Agent(cfg))
    done = len(_outbox(cfg))
    with caplog.at_level(logging.INFO, logger="agent.pipeline"):
        again = Agent(cfg)
        _run(again)
    assert f"replay already complete at tick {TICKS}; nothing to do" in caplog.text
    assert again.progress.windows_scored == 0 and len(_outbox(cfg)) == done

    # source.resume: false (what --from-start sets) replays it from the beginning.
    caplog.clear()
    fresh = agent_config.parse({**cfg.model_dump(mode="json"),
                                "source": {**cfg.source.model_dump(mode="json"),
                                           "resume": False}})
    with caplog.at_level(logging.INFO, logger="agent.pipeline"):
        over = Agent(fresh)
        _run(over)
    assert "the saved position (tick 203) is discarded" in caplog.text
    assert f"starting replay of {TEST_FILE}" in caplog.text
    assert over.progress.windows_scored == done


def test_a_saved_position_of_another_source_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path, "gw-other", start=None)
    first = Agent(cfg)
    _stop_after(first, 50)
    _run(first)
    other = agent_config.parse({**cfg.model_dump(mode="json"),
                                "source": {**cfg.source.model_dump(mode="json"),
                                           "assets": ["engine-034"]}})
    with caplog.at_level(logging.INFO, logger="agent.pipeline"):
        agent = Agent(other)
    agent.positions.close()
    agent.outbox.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.pipeline"]
    assert "the saved position is for another replay (assets differ): it is discarded" in lines
    assert any(m.startswith(f"starting replay of {TEST_FILE}") for m in lines)
    saved = _saved(other)
    assert (saved.tick, saved.fingerprint["assets"]) == (0, ["engine-034"])


def test_the_start_is_saved_before_the_first_tick(tmp_path: Path) -> None:
    """A run killed before its first flush still resumes with the same plant times."""
    cfg = _cfg(tmp_path, "gw-early", start=None)
    first = Agent(cfg)
    first.positions.close()
    first.outbox.close()
    saved = _saved(cfg)
    assert saved.tick == 0
    second = Agent(cfg)
    second.positions.close()
    second.outbox.close()
    assert second.source.start_position().start_epoch == saved.start_epoch  # type: ignore[attr-defined]
    assert np.isclose(saved.start_epoch, datetime.now(UTC).timestamp(), atol=120)
