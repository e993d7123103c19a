"""Readers for the three recorded-data formats: C-MAPSS, AI4I 2020 and IMS bearings.

The agent's replay source, ``linewatch train`` and ``linewatch evaluate`` all read files
through :func:`read_recordings`, so a quirk of a format is handled once, here:

- **C-MAPSS** (``cmapss``): space-separated, no header, every line ends in two trailing
  spaces (split on runs of whitespace); columns unit, cycle, 3 settings, 21 sensors. A file
  whose name starts with ``test_`` stops before failure and carries no truth of its own:
  give its ``RUL_*.txt`` as ``truth`` (one integer per line, with a trailing space; line *i*
  is unit *i*). Any other C-MAPSS file is read as run-to-failure (the train format): its
  last cycle is the failure, so ``rul = last cycle - cycle``.
- **AI4I 2020** (``ai4i``): UTF-8 *with a byte-order mark*, CRLF line ends, one header line.
  The label ``failure`` is the published ``Machine failure`` column as is, which includes 9
  rows with no failure mode set and excludes the 18 rows with ``RNF = 1`` but
  ``Machine failure = 0``; the five mode flags come along as ``twf`` .. ``rnf``.
- **IMS bearings** (``ims``): one file per 1-second snapshot, named by its start time
  ``YYYY.MM.DD.hh.mm.ss``; tab-separated, CRLF, no header, one column per bearing, 20,480
  samples at 20 kHz. ``path`` is one snapshot or a directory of them (ordered by name, which
  is time order). Files from IMS test 2 get a derived label ``degraded`` (see
  :data:`IMS_TEST2_START`).

``.gz`` files are decompressed transparently. Imports: stdlib and numpy only (this runs on
gateways).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "AI4I_CHANNELS",
    "AI4I_TYPE_CODES",
    "CMAPSS_CHANNELS",
    "DatasetError",
    "Format",
    "IMS_RATE_HZ",
    "IMS_TEST2_START",
    "Recording",
    "read_recordings",
]

logger = logging.getLogger(__name__)

Format = Literal["cmapss", "ai4i", "ims"]

CMAPSS_CHANNELS: tuple[str, ...] = (
    *(f"op_setting_{i}" for i in range(1, 4)),
    *(f"sensor_{i}" for i in range(1, 22)),
)
AI4I_CHANNELS: tuple[str, ...] = (
    "air_temp_k",
    "process_temp_k",
    "speed_rpm",
    "torque_nm",
    "tool_wear_min",
    "type_code",
)
AI4I_TYPE_CODES: dict[str, float] = {"L": 0.0, "M": 1.0, "H": 2.0}
# The IMS readme: 20,480 points per 1-second snapshot, "sampled at 20 kHz". We take the
# stated rate; the 2.4 % discrepancy with 20,480 points/s is the data set's, not ours.
IMS_RATE_HZ = 20_000.0
# Test 2 ran from this snapshot until 2004-02-19 06:22:39; bearing 1 failed (outer race).
IMS_TEST2_START = datetime(2004, 2, 12, 10, 32, 39)
IMS_TEST2_END = datetime(2004, 2, 19, 6, 22, 39)
# Hours since the start of test 2 that bound the derived ``degraded`` label: every bearing
# is healthy before 90 h (flat RMS, README), bearing 1 is degraded from 110 h on (RMS 0.10
# and rising). Anything else (bearing 1 in between, bearings 2-4 after 90 h) is unknown.
IMS_HEALTHY_BEFORE_H = 90.0
IMS_DEGRADED_FROM_H = 110.0

_AI4I_COLUMNS = {
    "air_temp_k": "Air temperature [K]",
    "process_temp_k": "Process temperature [K]",
    "speed_rpm": "Rotational speed [rpm]",
    "torque_nm": "Torque [Nm]",
    "tool_wear_min": "Tool wear [min]",
}
_AI4I_LABELS = {
    "failure": "Machine failure",
    "twf": "TWF",
    "hdf": "HDF",
    "pwf": "PWF",
    "osf": "OSF",
    "rnf": "RNF",
}
_IMS_NAME = re.compile(r"^\d{4}\.\d{2}\.\d{2}\.\d{2}\.\d{2}\.\d{2}$")


class DatasetError(ValueError):
    """A file that is not in the format it was read as; the message names file and line."""


@dataclass(frozen=True)
class Recording:
    """Samples of one asset: ``values[i]`` holds the channels at time ``t[i]``.

    ``t`` is in the format's time unit: C-MAPSS cycle number, AI4I UDI, IMS seconds since
    the first snapshot read. ``labels`` maps a label name to one value per sample.
    """

    asset: str
    channels: tuple[str, ...]
    t: np.ndarray
    values: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.t)


def read_recordings(
    path: str | Path, format: Format, *, truth: str | Path | None = None
) -> list[Recording]:
    """Read a recorded-data file (or, for IMS, a directory) into recordings ordered by asset.

    Parameters
    ----------
    path
        The data file; ``.gz`` is decompressed. IMS also takes a directory of snapshots.
    format
        ``"cmapss"``, ``"ai4i"`` or ``"ims"``.
    truth
        C-MAPSS only: the ``RUL_*.txt`` file of a test file, giving each unit's remaining
        useful life after its last cycle.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> row = lambda u, c: f"{u} {c} " + " ".join(["0.5"] * 24) + "  \\n"
    >>> _ = (d / "test_X.txt").write_text(row(2, 1) + row(2, 2) + row(1, 1))
    >>> _ = (d / "RUL_X.txt").write_text("7 \\n10 \\n")
    >>> recs = read_recordings(d / "test_X.txt", "cmapss", truth=d / "RUL_X.txt")
    >>> [(r.asset, r.t.tolist(), r.labels["rul"].tolist()) for r in recs]
    [('engine-001', [1.0], [7.0]), ('engine-002', [1.0, 2.0], [11.0, 10.0])]
    """
    path = Path(path)
    if format == "cmapss":
        return _read_cmapss(path, None if truth is None else Path(truth))
    if truth is not None:
        raise ValueError(f"truth files are only used with format 'cmapss', not {format!r}")
    if format == "ai4i":
        return _read_ai4i(path)
    if format == "ims":
        return _read_ims(path)
    raise ValueError(f"unknown format {format!r}; expected 'cmapss', 'ai4i' or 'ims'")


def _read_text(path: Path, encoding: str = "ascii") -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not {encoding} text: {exc}") from exc


# --- C-MAPSS -----------------------------------------------------------------------------


def _read_cmapss(path: Path, truth: Path | None) -> list[Recording]:
    rows = _parse_cmapss_rows(path)
    units = np.unique(rows[:, 0]).astype(int)
    rul_after_last = _read_cmapss_truth(truth, units) if truth is not None else None
    run_to_failure = truth is None and not _base_name(path).lower().startswith("test_")
    out = []
    for unit in units:
        r = rows[rows[:, 0] == unit]
        r = r[np.argsort(r[:, 1], kind="stable")]
        cycles = r[:, 1].copy()
        if np.any(np.diff(cycles) != 1):
            raise DatasetError(f"{path}: unit {unit} has missing or repeated cycles")
        labels: dict[str, np.ndarray] = {}
        if rul_after_last is not None:
            labels["rul"] = rul_after_last[unit] + cycles[-1] - cycles
        elif run_to_failure:
            labels["rul"] = cycles[-1] - cycles
        out.append(
            Recording(
                asset=f"engine-{unit:03d}",
                channels=CMAPSS_CHANNELS,
                t=cycles,
                values=np.ascontiguousarray(r[:, 2:]),
                labels=labels,
            )
        )
    return out


def _parse_cmapss_rows(path: Path) -> np.ndarray:
    """All rows as (n, 26) float64; the trailing spaces vanish by splitting on whitespace.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "train_X.txt"
    >>> _ = p.write_text("1 1 " + " ".join(["2.5"] * 24) + "  \\n")
    >>> _parse_cmapss_rows(p).shape
    (1, 26)
    """
    lines = [ln for ln in _read_text(path).splitlines() if ln.strip()]
    if not lines:
        raise DatasetError(f"{path}: no data rows")
    n_cols = 2 + len(CMAPSS_CHANNELS)
    try:
        values = np.array([float(v) for ln in lines for v in ln.split()], dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{path}: not numeric C-MAPSS data: {exc}") from exc
    if values.size != n_cols * len(lines):
        bad = next(i for i, ln in enumerate(lines, 1) if len(ln.split()) != n_cols)
        raise DatasetError(f"{path}, line {bad}: expected {n_cols} columns")
    return values.reshape(len(lines), n_cols)


def _read_cmapss_truth(path: Path, units: np.ndarray) -> dict[int, float]:
    tokens = _read_text(path).split()
    try:
        rul = [float(v) for v in tokens]
    except ValueError as exc:
        raise DatasetError(f"{path}: not a RUL file: {exc}") from exc
    if len(rul) < units.max():
        raise DatasetError(f"{path} has {len(rul)} values but the data has unit {units.max()}")
    return {int(u): rul[int(u) - 1] for u in units}


def _base_name(path: Path) -> str:
    return path.name[:-3] if path.suffix == ".gz" else path.name


# --- AI4I 2020 ---------------------------------------------------------------------------


def _read_ai4i(path: Path) -> list[Recording]:
    """One recording, asset ``mill``, in UDI order.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "ai4i.csv"
    >>> head = ("UDI,Product ID,Type,Air temperature [K],Process temperature [K],"
    ...         "Rotational speed [rpm],Torque [Nm],Tool wear [min],Machine failure,"
    ...         "TWF,HDF,PWF,OSF,RNF")
    >>> rows = ["2,L2,L,298.2,308.7,1408,46.3,3,0,0,0,0,0,1",
    ...         "1,M1,M,298.1,308.6,1551,42.8,0,1,0,0,0,0,0"]
    >>> _ = p.write_bytes(("\\ufeff" + "\\r\\n".join([head, *rows]) + "\\r\\n").encode())
    >>> (r,) = read_recordings(p, "ai4i")
    >>> r.t.tolist(), r.values[:, -1].tolist(), r.labels["failure"].tolist()
    ([1.0, 2.0], [1.0, 0.0], [1.0, 0.0])
    """
    text = _read_text(path, encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    needed = ["UDI", "Type", *_AI4I_COLUMNS.values(), *_AI4I_LABELS.values()]
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}")
    udi, values, labels = [], [], []
    for line, row in enumerate(reader, start=2):
        try:
            code = AI4I_TYPE_CODES[row["Type"].strip()]
            udi.append(float(row["UDI"]))
            values.append([float(row[c]) for c in _AI4I_COLUMNS.values()] + [code])
            labels.append([float(row[c]) for c in _AI4I_LABELS.values()])
        except (KeyError, ValueError, AttributeError) as exc:
            raise DatasetError(f"{path}, line {line}: {exc!r}") from exc
    if not udi:
        raise DatasetError(f"{path}: no data rows")
    order = np.argsort(np.array(udi), kind="stable")
    lab = np.array(labels)[order]
    return [
        Recording(
            asset="mill",
            channels=AI4I_CHANNELS,
            t=np.array(udi)[order],
            values=np.array(values)[order],
            labels={k: lab[:, j].copy() for j, k in enumerate(_AI4I_LABELS)},
        )
    ]


# --- IMS bearings ------------------------------------------------------------------------


def _read_ims(path: Path) -> list[Recording]:
    files = _ims_files(path)
    starts = [_ims_start(f) for f in files]
    blocks = [_parse_ims_snapshot(f) for f in files]
    n_bearings = blocks[0].shape[1]
    if any(b.shape[1] != n_bearings for b in blocks):
        raise DatasetError(f"{path}: snapshots differ in their number of channels")
    t0 = starts[0]
    t = np.concatenate([
        (s - t0).total_seconds() + np.arange(len(b)) / IMS_RATE_HZ
        for s, b in zip(starts, blocks, strict=True)
    ])
    values = np.concatenate(blocks)
    hours = np.concatenate(
        [np.full(len(b), (s - IMS_TEST2_START).total_seconds() / 3600.0)
         for s, b in zip(starts, blocks, strict=True)]
    )
    in_test2 = all(IMS_TEST2_START <= s <= IMS_TEST2_END for s in starts)
    out = []
    for k in range(n_bearings):
        labels = {"degraded": _ims_degraded(hours, bearing=k + 1)} if in_test2 else {}
        out.append(
            Recording(
                asset=f"bearing-{k + 1}",
                channels=("accel",),
                t=t,
                values=np.ascontiguousarray(values[:, k : k + 1]),
                labels=labels,
            )
        )
    return out


def _ims_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _IMS_NAME.match(_base_name(p)))
        if not files:
            raise DatasetError(f"{path}: no IMS snapshot files (named YYYY.MM.DD.hh.mm.ss)")
        return files
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    return [path]


def _ims_start(path: Path) -> datetime:
    """The snapshot's start time, from its file name.

    >>> _ims_start(Path("2nd_test/2004.02.12.10.32.39"))
    datetime.datetime(2004, 2, 12, 10, 32, 39)
    """
    name = _base_name(path)
    if not _IMS_NAME.match(name):
        raise DatasetError(f"{path}: an IMS snapshot is named YYYY.MM.DD.hh.mm.ss")
    return datetime.strptime(name, "%Y.%m.%d.%H.%M.%S")


def _parse_ims_snapshot(path: Path) -> np.ndarray:
    """(n_samples, n_bearings) from tab-separated CRLF text.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "2004.02.12.10.32.39"
    >>> _ = p.write_bytes(b"-0.049\\t-0.071\\r\\n0.005\\t0.012\\r\\n")
    >>> _parse_ims_snapshot(p).tolist()
    [[-0.049, -0.071], [0.005, 0.012]]
    """
    lines = [ln for ln in _read_text(path).splitlines() if ln.strip()]
    if not lines:
        raise DatasetError(f"{path}: empty snapshot")
    n_cols = len(lines[0].split("\t"))
    try:
        values = np.array([float(v) for ln in lines for v in ln.split("\t")], dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{path}: not a tab-separated IMS snapshot: {exc}") from exc
    if values.size != n_cols * len(lines):
        raise DatasetError(f"{path}: rows differ in their number of columns")
    return values.reshape(len(lines), n_cols)


def _ims_degraded(hours: np.ndarray, bearing: int) -> np.ndarray:
    """Derived truth for test 2: 0 healthy, 1 degraded, NaN unknown (see module docstring).

    >>> _ims_degraded(np.array([0.0, 100.0, 120.0]), bearing=1).tolist()
    [0.0, nan, 1.0]
    >>> _ims_degraded(np.array([0.0, 120.0]), bearing=2).tolist()
    [0.0, nan]
    """
    out = np.full(len(hours), math.nan)
    out[hours < IMS_HEALTHY_BEFORE_H] = 0.0
    if bearing == 1:
        out[hours >= IMS_DEGRADED_FROM_H] = 1.0
    return out
