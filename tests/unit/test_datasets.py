"""agent.datasets on the real files in models/data, quirks included."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.datasets import (
    AI4I_CHANNELS,
    CMAPSS_CHANNELS,
    DatasetError,
    read_recordings,
)

DATA = Path(__file__).resolve().parents[2] / "models" / "data"
FD001 = DATA / "cmapss_fd001"
AI4I = DATA / "ai4i2020" / "ai4i2020.csv"
IMS = DATA / "ims_bearing_test2" / "2nd_test"


@pytest.fixture(scope="module")
def fd001_train() -> list:
    return read_recordings(FD001 / "train_FD001.txt.gz", "cmapss")


def test_cmapss_train_is_run_to_failure(fd001_train: list) -> None:
    recs = fd001_train
    assert [r.asset for r in recs] == [f"engine-{u:03d}" for u in range(1, 101)]
    assert sum(len(r) for r in recs) == 20_631
    first = recs[0]
    assert first.channels == CMAPSS_CHANNELS and len(first.channels) == 24
    # The two trailing spaces of every line add no columns.
    assert first.values.shape == (192, 24)
    assert first.values[0, :6].tolist() == [-0.0007, -0.0004, 100.0, 518.67, 641.82, 1589.70]
    assert first.t.tolist() == list(range(1, 193))
    for r in recs:
        assert r.labels["rul"][-1] == 0 and np.all(np.diff(r.labels["rul"]) == -1)
    assert min(len(r) for r in recs) == 128 and max(len(r) for r in recs) == 362


def test_cmapss_test_file_takes_its_truth() -> None:
    recs = read_recordings(FD001 / "test_FD001.txt.gz", "cmapss", truth=FD001 / "RUL_FD001.txt")
    assert len(recs) == 100 and sum(len(r) for r in recs) == 13_096
    truth = [int(v) for v in (FD001 / "RUL_FD001.txt").read_text().split()]
    assert [int(r.labels["rul"][-1]) for r in recs] == truth
    assert min(len(r) for r in recs) == 31
    assert recs[0].labels["rul"][-1] == 112 and recs[0].labels["rul"][0] == 112 + 30


def test_cmapss_test_file_without_truth_has_no_labels() -> None:
    recs = read_recordings(FD001 / "test_FD001.txt.gz", "cmapss")
    assert all(r.labels == {} for r in recs)


def test_gz_and_plain_read_the_same(tmp_path: Path, fd001_train: list) -> None:
    plain = tmp_path / "train_FD001.txt"
    with gzip.open(FD001 / "train_FD001.txt.gz", "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    again = read_recordings(plain, "cmapss")
    pairs = zip(again, fd001_train, strict=True)
    assert all(np.array_equal(a.values, b.values) for a, b in pairs)


def test_cmapss_bad_row_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "train_X.txt"
    bad.write_text("1 1 " + " ".join(["0.5"] * 24) + "  \n1 2 0.5\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_recordings(bad, "cmapss")


def test_ai4i_bom_crlf_and_labels() -> None:
    assert AI4I.read_bytes()[:3] == b"\xef\xbb\xbf" and b"\r\n" in AI4I.read_bytes()[:200]
    (rec,) = read_recordings(AI4I, "ai4i")
    assert rec.asset == "mill" and rec.channels == AI4I_CHANNELS
    assert rec.values.shape == (10_000, 6)
    assert rec.t.tolist() == list(range(1, 10_001))
    assert rec.values[0].tolist() == [298.1, 308.6, 1551.0, 42.8, 0.0, 1.0]  # M14860
    codes, counts = np.unique(rec.values[:, 5], return_counts=True)
    by_code = dict(zip(codes.tolist(), counts.tolist(), strict=True))
    assert by_code == {0.0: 6000, 1.0: 2997, 2.0: 1003}
    lab = rec.labels
    assert lab["failure"].sum() == 339
    assert [int(lab[m].sum()) for m in ("twf", "hdf", "pwf", "osf", "rnf")] == [46, 115, 95, 98, 19]
    modes = sum(lab[m] for m in ("twf", "hdf", "pwf", "osf", "rnf"))
    assert int(np.sum((lab["failure"] == 1) & (modes == 0))) == 9
    assert int(np.sum((lab["rnf"] == 1) & (lab["failure"] == 0))) == 18


def test_ims_directory_gives_one_recording_per_bearing() -> None:
    recs = read_recordings(IMS, "ims")
    assert [r.asset for r in recs] == ["bearing-1", "bearing-2", "bearing-3", "bearing-4"]
    r = recs[0]
    assert r.channels == ("accel",) and r.values.shape == (13 * 20_480, 1)
    # 20 kHz inside a snapshot; snapshot starts from the file names (10 minutes apart).
    assert r.t[1] - r.t[0] == pytest.approx(1 / 20_000)
    assert r.t[20_480] == pytest.approx(600.0)
    assert np.all(np.diff(r.t) > 0)
    rms0 = float(np.sqrt(np.mean(r.values[:20_480, 0] ** 2)))
    assert rms0 == pytest.approx(0.074, abs=5e-4)  # README table, bearing 1, index 0
    d = r.labels["degraded"]
    assert np.nansum(d) == 7 * 20_480 and np.isnan(d).sum() == 20_480
    assert np.all(recs[1].labels["degraded"][~np.isnan(recs[1].labels["degraded"])] == 0)


def test_ims_single_snapshot(tmp_path: Path) -> None:
    one = IMS / "2004.02.12.10.32.39"
    recs = read_recordings(one, "ims")
    assert len(recs) == 4 and recs[2].values.shape == (20_480, 1) and recs[0].t[0] == 0.0
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(DatasetError, match="YYYY"):
        read_recordings(other, "ims")


def test_truth_only_for_cmapss() -> None:
    with pytest.raises(ValueError, match="cmapss"):
        read_recordings(AI4I, "ai4i", truth=FD001 / "RUL_FD001.txt")
    with pytest.raises(ValueError, match="unknown format"):
        read_recordings(AI4I, "csv")  # type: ignore[arg-type]
