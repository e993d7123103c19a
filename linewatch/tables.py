"""Recorded data as tables: a CSV or Parquet file read through a card's ``input.table``, and
feature rows written as one.

A plant's data rarely come in one of the shipped formats. :func:`read_table` reads one row
per sample (an asset column, a time column, one column per channel, optional label
columns) into the same :class:`agent.datasets.Recording` the shipped readers make, so
everything downstream (windows, features, evaluation) is the agent's own code.
:func:`read_data` picks the reader a card's ``input`` names. :func:`write_table` writes
named columns to CSV or Parquet (by the file's suffix).

CSV needs nothing beyond the standard library; Parquet needs ``pyarrow``.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.datasets import DatasetError, Recording, read_recordings
from contract.card import InputSpec, TableSpec

__all__ = ["read_data", "read_table", "write_table"]


def read_data(input: InputSpec, path: str | Path, *,
              truth: str | Path | None = None) -> list[Recording]:
    """Recordings of ``path`` laid out as ``input`` says (a shipped ``format`` or a
    ``table``), with their channels in the card's order."""
    channels = [c.name for c in input.channels]
    if input.table is not None:
        if truth is not None:
            raise ValueError("--truth is for C-MAPSS test files; a table carries its truth in "
                             "the columns input.table.labels names")
        return read_table(path, input.table, channels)
    if input.format is None:
        raise DatasetError("the card says neither input.format nor input.table: add the "
                           "layout of its data files to read them")
    recs = read_recordings(path, input.format, truth=truth)
    out = []
    for r in recs:
        missing = [c for c in channels if c not in r.channels]
        if missing:
            raise DatasetError(f"{path}: {r.asset} lacks channels {missing}")
        idx = [r.channels.index(c) for c in channels]
        out.append(Recording(r.asset, tuple(channels), r.t, r.values[:, idx], r.labels))
    return out


def read_table(path: str | Path, table: TableSpec, channels: Sequence[str]) -> list[Recording]:
    """One recording per asset of a CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``)
    file, rows in time order.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "line.csv"
    >>> _ = p.write_text("machine,t,temp,RUL\\nm2,1,20.5,9\\nm1,2,21,4\\nm1,1,20,5\\n")
    >>> spec = TableSpec(asset="machine", time="t", columns={"temp_c": "temp"},
    ...                  labels={"rul": "RUL"})
    >>> [(r.asset, r.t.tolist(), r.values[:, 0].tolist(), r.labels["rul"].tolist())
    ...  for r in read_table(p, spec, ["temp_c"])]
    [('m1', [1.0, 2.0], [20.0, 21.0], [5.0, 4.0]), ('m2', [1.0], [20.5], [9.0])]
    """
    path = Path(path)
    columns = _read_columns(path)
    wanted = {"time": table.time, **{f"channel {c}": table.column(c) for c in channels},
}
    if table.asset is not None:
        wanted["asset"] = table.asset
    missing = [f"{col!r} ({what})" for what, col in wanted.items() if col not in columns]
    if missing:
        raise DatasetError(f"{path}: no column {', '.join(missing)}; it has "
                           f"{', '.join(list(columns)[:12])}")
    t = _times(path, table.time, columns[table.time])
    values = np.column_stack([_numbers(path, table.column(c), columns[table.column(c)])
                              for c in channels])
    # A label column may be missing: data from machines still running have no truth yet.
    labels = {k: _numbers(path, col, columns[col], empty=math.nan)
              for k, col in table.labels.items() if col in columns}
    assets = (np.array([str(a) for a in columns[table.asset]]) if table.asset is not None
              else np.full(len(t), path.stem))
    out = []
    for asset in sorted(set(assets.tolist())):
        rows = np.flatnonzero(assets == asset)
        rows = rows[np.argsort(t[rows], kind="stable")]
        out.append(Recording(asset, tuple(channels), t[rows], values[rows],
                             {k: v[rows] for k, v in labels.items()}))
    if not out:
        raise DatasetError(f"{path}: no data rows")
    return out


def _read_columns(path: Path) -> dict[str, list[Any]]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        pq = _pyarrow_parquet("read")
        try:
            return pq.read_table(path).to_pydict()  # type: ignore[no-any-return]
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {path} as Parquet: {exc}") from exc
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} as UTF-8 CSV: {exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise DatasetError(f"{path}: empty file, no header line")
    header = [h.strip() for h in header]
    rows = [r for r in reader if r]
    cols: dict[str, list[Any]] = {h: [] for h in header}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {line}: {len(row)} fields, the header has "
                               f"{len(header)}")
        for h, v in zip(header, row, strict=True):
            cols[h].append(v.strip())
    return cols


def _numbers(path: Path, column: str, values: list[Any], empty: float | None = None
             ) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None or v == "":
            if empty is None:
                raise DatasetError(f"{path}: column {column!r}, row {i + 1}: empty")
            out[i] = empty
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: column {column!r}, row {i + 1}: {v!r} is not a "
                               "number") from None
    return out


def _times(path: Path, column: str, values: list[Any]) -> np.ndarray:
    """Numbers as they are; ISO 8601 times (text or Parquet timestamps) as epoch seconds
    (a time without a zone is taken as UTC)."""
    try:
        return _numbers(path, column, values)
    except DatasetError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            when = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
        except ValueError:
            raise DatasetError(f"{path}: column {column!r}, row {i + 1}: {v!r} is neither a "
                               "number nor an ISO 8601 time") from None
        out[i] = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return out


def write_table(path: str | Path, columns: Mapping[str, np.ndarray]) -> None:
    """Write equal-length columns to ``path``: Parquet for ``.parquet``, else CSV (floats
    written as the shortest text that reads back to the same float32 or float64)."""
    path = Path(path)
    if path.name.lower().endswith(".parquet"):
        pa = _pyarrow_parquet("write")
        import pyarrow

        pa.write_table(pyarrow.table({k: np.asarray(v) for k, v in columns.items()}), path)
        return
    names = list(columns)
    cells = [[_cell(v) for v in np.asarray(columns[k]).tolist()] if
             np.asarray(columns[k]).dtype != np.float32 else
             [np.format_float_positional(v, unique=True, trim="-") for v in columns[k]]
             for k in names]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(zip(*cells, strict=True))


def _cell(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _pyarrow_parquet(what: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"to {what} Parquet, install pyarrow (pip install pyarrow), or use "
                           "a .csv file") from None
    return pq
