"""The sizing table's arithmetic (``python -m bench sizing``), against a small consumers
JSON: every expected figure is derived here from the fixture's own numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import sizing

FIXTURE: dict[str, Any] = {
    "medians": {
        "linewatch": {
            "items_per_message_10": {"points_per_cpu_s": 24_000, "lost": 0},
            "items_per_message_1": {"points_per_cpu_s": 5_000, "lost": 0},
        },
        "bare_python": {"items_per_message_1": {"points_per_cpu_s": 9_000}},
    },
    "runs": {
        "linewatch": {
            "1": [{"stored": 1000, "wall_s": 0.5}, {"stored": 1000, "wall_s": 0.25}],
            "10": [{"stored": 3000, "wall_s": 1.5}, {"stored": 3000, "wall_s": 2.0},
                   {"stored": 3000, "wall_s": 0.0}],
        },
    },
}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "bench-20260101T000000.json"
    # As `python -m bench consumers` writes it: the figures under results.consumers.
    path.write_text(json.dumps({"created": "2026-01-01", "results": {"consumers": FIXTURE}}))
    return path


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


@pytest.mark.parametrize("headroom", [0.5, 0.25, 0.0])
def test_rows_follow_from_the_measured_rates(source: Path, headroom: float) -> None:
    table = sizing.rows(sizing.load(source), headroom)

    expected = []
    for per_message in sorted(int(k.rsplit("_", 1)[1]) for k in FIXTURE["medians"]["linewatch"]):
        runs = FIXTURE["runs"]["linewatch"][str(per_message)]
        core = FIXTURE["medians"]["linewatch"][f"items_per_message_{per_message}"][
            "points_per_cpu_s"]
        replica = _median([r["stored"] / r["wall_s"] for r in runs if r["wall_s"]])
        for unit, rate in (("core", core), ("replica", replica)):
            usable = rate * (1 - headroom)
            assets = (int(usable * 60), int(usable * 10), int(usable * 1))
            expected.append((per_message, unit, rate, usable, assets,
                             tuple((a // 20, a // 100) for a in assets)))
    assert [(r.items_per_message, r.unit, r.points_per_s, r.usable_points_per_s, r.assets,
             r.agents) for r in table] == expected


def test_a_core_takes_more_assets_than_its_replica_when_the_replica_waited(source: Path) -> None:
    by = {(r.items_per_message, r.unit): r for r in sizing.rows(sizing.load(source))}
    # 10 items a message: 24,000 points per CPU-s, but only 2,000 per second of the run.
    assert by[10, "core"].assets[0] > by[10, "replica"].assets[0]
    # Faster windows, fewer assets: exactly the ratio of the rates.
    core = by[1, "core"]
    assert core.assets[0] // 6 == pytest.approx(core.assets[1], abs=1)


def test_markdown_lists_every_row_with_its_figures(source: Path) -> None:
    table = sizing.rows(sizing.load(source))
    text = sizing.markdown(table)
    lines = text.splitlines()
    assert len(lines) == 2 + len(table)
    for row, line in zip(table, lines[2:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [str(row.items_per_message), row.unit]
        assert cells[4] == f"{row.assets[0]:,} ({row.agents[0][0]:,} / {row.agents[0][1]:,})"


def test_the_command_prints_the_table(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    assert main(["sizing", "--from", str(source), "--headroom", "0.25"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == sizing.markdown(sizing.rows(sizing.load(source), 0.25), 0.25)


def test_a_file_without_the_aggregators_figures_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"results": {"wire_decode": {}}}))
    with pytest.raises(ValueError, match="no 'bench consumers' figures"):
        sizing.load(path)
    with pytest.raises(ValueError, match="headroom"):
        sizing.rows(FIXTURE, headroom=1.0)


def test_two_runs_make_one_table_by_batch_size(
        source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A slow batch size run on its own (fewer repeats) joins the other run's table; a
    size in both files is the first file's."""
    from bench.__main__ import main

    other = copy.deepcopy(FIXTURE)
    medians, runs = other["medians"]["linewatch"], other["runs"]["linewatch"]
    medians["items_per_message_100"] = {"points_per_cpu_s": 80_000, "lost": 0}
    medians["items_per_message_10"] = {"points_per_cpu_s": 1, "lost": 0}  # not taken
    runs["100"] = [{"stored": 9000, "wall_s": 0.3}]
    later = tmp_path / "bench-20260102T000000.json"
    later.write_text(json.dumps({"results": {"consumers": other}}))

    assert main(["sizing", "--from", str(source), "--from", str(later)]) == 0
    first = sizing.rows(sizing.load(source))
    extra = [r for r in sizing.rows(sizing.load(later)) if r.items_per_message == 100]
    assert capsys.readouterr().out.strip() == sizing.markdown(first + extra)
