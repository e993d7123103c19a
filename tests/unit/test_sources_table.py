"""The tabular source: a plant's CSV and Parquet files through a column mapping; the shipped
C-MAPSS and AI4I formats are presets of it and read exactly as their own readers do."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from agent import config as agent_config
from agent.datasets import read_recordings
from agent.errors import ConfigError, SourceError
from agent.sources.config import TableConfig
from agent.sources.replay import ReplaySource
from agent.sources.table import preset, read_table
from contract.card import ModelCard

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "models" / "data"
AI4I_CARD = ModelCard.load(ROOT / "models" / "ai4i2020")


@pytest.mark.parametrize(("fmt", "model", "file"), [
    ("cmapss", "cmapss_fd001", "cmapss_fd001/test_FD001.txt.gz"),
    ("ai4i", "ai4i2020", "ai4i2020/ai4i2020.csv"),
])
def test_shipped_formats_are_presets_of_the_mapping(fmt: str, model: str, file: str) -> None:
    card = ModelCard.load(ROOT / "models" / model)
    want = read_recordings(DATA / file, fmt)
    got = read_table(DATA / file, preset(fmt), card)
    assert [r.asset for r in got] == [r.asset for r in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.t, w.t)
        cols = [w.channels.index(c) for c in card.channel_names]
        np.testing.assert_array_equal(g.values, w.values[:, cols])


def _card_with(channels: dict[str, str]):
    """The AI4I card's structure with other channels: only names and units are read."""
    specs = [{"name": n, "unit": u} for n, u in channels.items()]
    return AI4I_CARD.model_copy(update={"input": AI4I_CARD.input.model_copy(
        update={"channels": [type(AI4I_CARD.input.channels[0]).model_validate(s)
                             for s in specs]})})


CARD2 = _card_with({"temp": "degC", "speed": "rpm"})


def _mapping(**over) -> TableConfig:
    base = {"asset": {"column": "machine"},
            "time": {"column": "ts", "format": "%Y-%m-%d %H:%M:%S"},
            "channels": {"temp": {"column": "T [F]", "unit": "degF", "scale": 5 / 9,
                                  "offset": -32 * 5 / 9},
                         "speed": {"column": "rpm"}}}
    return TableConfig.model_validate(base | over)


def test_a_folder_of_csv_files_with_several_assets_and_bad_cells(tmp_path: Path,
                                                                 caplog) -> None:
    (tmp_path / "day1.csv").write_text(
        "ts,machine,T [F],rpm\n"
        "2026-01-01 00:00:10,press-2,212,1500\n"
        "2026-01-01 00:00:00,press-1,32,1400\n"
        "2026-01-01 00:00:00,press-2,50,oops\n"
        "2026-01-01 00:00:10,press-1,NA,1410\n"
        "2026-01-01 00:00:20,press-1,41\n")  # a short row
    (tmp_path / "day2.csv").write_text(
        "ts,machine,T [F],rpm\n2026-01-02 00:00:00,press-1,68,1420\n")
    with caplog.at_level(logging.WARNING, "agent.sources.table"):
        recs = read_table(tmp_path, _mapping(), CARD2)
    by = {r.asset: r for r in recs}
    assert list(by) == ["press-2", "press-1"]  # first appearance
    p1, p2 = by["press-1"], by["press-2"]
    assert (p1.t - p1.t[0]).tolist() == [0.0, 10.0, 86400.0]
    np.testing.assert_allclose(p1.values, [[0.0, 1400], [np.nan, 1410], [20.0, 1420]])
    np.testing.assert_allclose(p2.values, [[10.0, np.nan], [100.0, 1500]])
    assert p1.t[0] == 1767225600.0  # naive times are UTC
    # One line per kind of bad cell: the unparsable number, the short row.
    lines = [r.getMessage() for r in caplog.records]
    assert sum("not numbers" in m for m in lines) == 1
    assert sum("fields are skipped" in m for m in lines) == 1


def test_parquet_with_a_fixed_asset_and_a_period(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "line.parquet"
    pq.write_table(pa.table({"temp": [20.0, None, 22.0], "speed": [1, 2, 3]}), path)
    t = TableConfig.model_validate({"asset": {"name": "oven"}, "time": {"period_s": 0.5},
                                    "channels": {"temp": {"column": "temp"},
                                                 "speed": {"column": "speed"}}})
    (rec,) = read_table(path, t, CARD2)
    assert rec.asset == "oven" and rec.t.tolist() == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(rec.values, [[20, 1], [np.nan, 2], [22, 3]])


def test_parquet_timestamps_and_one_file_per_asset(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, base in (("mill-a", 0), ("mill-b", 100)):
        pq.write_table(pa.table({
            "at": pa.array(np.array([base, base + 60], dtype="datetime64[s]")),
            "temp": [1.0, 2.0], "speed": [3.0, 4.0]}), tmp_path / f"{name}.parquet")
    t = TableConfig.model_validate({"asset": {"file": True}, "time": {"column": "at"},
                                    "channels": {"temp": {"column": "temp"},
                                                 "speed": {"column": "speed"}}})
    recs = read_table(tmp_path / "*.parquet", t, CARD2)
    assert [(r.asset, r.t.tolist()) for r in recs] == [("mill-a", [0.0, 60.0]),
                                                        ("mill-b", [100.0, 160.0])]


@pytest.mark.parametrize(("table", "message"), [
    ({"channels": {"temp": {"column": "T [F]"}}}, "no column mapped for the model's channels"),
    ({"channels": {"temp": {"column": "nope"}, "speed": {"column": "rpm"}}},
     r"no columns \['nope'\]"),
    ({"channels": {"temp": {"column": "T [F]", "unit": "degF"}, "speed": {"column": "rpm"}}},
     "source.table.channels.temp.unit"),
])
def test_a_mapping_that_does_not_fit_is_refused_naming_it(tmp_path: Path, table,
                                                          message: str) -> None:
    (tmp_path / "a.csv").write_text("ts,machine,T [F],rpm\n2026-01-01 00:00:00,p,1,2\n")
    with pytest.raises(SourceError, match=message):
        read_table(tmp_path / "a.csv", _mapping(**table), CARD2)


def _agent(source: dict) -> dict:
    return {"agent": {"id": "a", "site": "s", "line": "l"}, "model": {"dir": "m"},
            "source": source}


@pytest.mark.parametrize(("source", "key"), [
    ({"type": "table", "path": "x.csv", "table": {
        "asset": {"colum": "m"}, "time": {"period_s": 1}, "channels": {"a": {"column": "a"}}}},
     "source.table.asset.colum"),
    ({"type": "table", "path": "x.csv", "table": {
        "asset": {"column": "m", "name": "n"}, "time": {"period_s": 1},
        "channels": {"a": {"column": "a"}}}}, "source.table.asset"),
    ({"type": "mqtt", "topics": [{"pattern": "p/+asset/+channel", "qos": 2}]},
     "source.topics.0.qos"),
    ({"type": "mqtt", "topics": [{"pattern": "p/+/x"}]}, "source.topics.0"),
    ({"type": "opcua", "url": "opc.tcp://h:4840", "nodes": [{"node": "ns=2;i=1",
                                                             "asset": "a"}]},
     "source.nodes.0.channel"),
    ({"type": "kafka"}, "source"),
    ({"path": "x", "speed": -1}, "source.speed"),
])
def test_bad_source_config_names_the_key(source: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        agent_config.parse(_agent(source))
    assert key in [k for k, _, _ in err.value.errors]


def test_a_table_replay_resumes_and_knows_its_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("ts,machine,T [F],rpm\n" + "".join(
        f"2026-01-01 00:00:{s:02d},p,{s},1\n" for s in range(6)))
    cfg = agent_config.parse(_agent({
        "type": "table", "path": str(tmp_path / "*.csv"), "speed": 0,
        "start": "2026-03-01T00:00:00Z", "table": _mapping().model_dump()})).source
    src = ReplaySource(cfg, CARD2)
    assert src.total_ticks == 6 and src.sample_interval_s == 1.0
    first = [r.t.tolist() for tick in src.ticks() for r in tick]
    again = ReplaySource(cfg, CARD2)
    assert again.fingerprint() == src.fingerprint()
    position = src.position
    again.seek(type(position)(position.fingerprint, position.start_epoch, 0, 3, 6))
    assert [r.t.tolist() for tick in again.ticks() for r in tick] == first[3:]
    (tmp_path / "b.csv").write_text("ts,machine,T [F],rpm\n2026-01-01 00:01:00,q,1,1\n")
    assert ReplaySource(cfg, CARD2).fingerprint() != src.fingerprint()


def test_the_example_configs_load_and_the_table_example_is_the_ai4i_preset(
        monkeypatch) -> None:
    from agent.sources import open_source

    monkeypatch.chdir(ROOT)  # the examples' paths are relative to the checkout

    configs = {k: agent_config.load(ROOT / "configs" / f"agent.{k}.example.yaml")
               for k in ("table", "mqtt", "opcua")}
    assert {k: c.source.type for k, c in configs.items()} == {
        "table": "table", "mqtt": "mqtt", "opcua": "opcua"}
    for c in configs.values():
        source = open_source(c.source, AI4I_CARD, agent_id=c.agent.id)
        assert list(source.channels) == AI4I_CARD.channel_names
    table = configs["table"].source.table
    want = read_table(DATA / "ai4i2020" / "ai4i2020.csv", preset("ai4i"), AI4I_CARD)
    got = read_table(ROOT / configs["table"].source.path, table, AI4I_CARD)
    assert [r.asset for r in got] == [r.asset for r in want] == ["mill"]
    np.testing.assert_array_equal(got[0].values, want[0].values)
    np.testing.assert_array_equal(got[0].t, want[0].t)
