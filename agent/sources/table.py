"""A plant's CSV and Parquet files, read through a column mapping into recordings.

The mapping (``source.table``, :class:`agent.sources.config.TableConfig`) says which
column holds the asset (or that there is one fixed asset, or one file per asset), when a row
was sampled (a time column, or the row's index times a period) and which column feeds each
of the model's channels, in which unit. Two of the shipped data sets are instances of it
(:func:`preset`): ``format: cmapss`` and ``format: ai4i`` are shorthands for their mappings.
IMS snapshots do not fit (their time is in the file name and each bearing is a column): they
keep their own reader in ``agent.datasets``.

Bad cells lose nothing else: a value that is not a number, or a code the mapping does not
know, is read as missing (NaN: the quality monitor counts and skips it as it does any NaN)
and a row with the wrong number of fields is skipped; each is counted and logged once per
column and file. A file that does not have the mapped columns is refused at start, naming
them.

Parquet needs pyarrow (the ``parquet`` extra), imported only when a Parquet file is read.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.datasets import AI4I_CHANNELS, AI4I_TYPE_CODES, CMAPSS_CHANNELS, Recording
from agent.errors import SourceError
from agent.sources.config import (
    TIME_UNITS_S,
    CsvConfig,
    TableAssetConfig,
    TableChannelConfig,
    TableConfig,
    TableTimeConfig,
)
from contract.card import ModelCard

__all__ = ["files_of", "parse_time", "preset", "read_table"]

logger = logging.getLogger(__name__)

_PARQUET = (".parquet", ".pq")


def preset(format: str) -> TableConfig | None:
    """The mapping a shipped data-set format stands for, or None when it has none (IMS).

    >>> preset("cmapss").asset.template, preset("ai4i").channels["type_code"].codes
    ('engine-{:03d}', {'L': 0.0, 'M': 1.0, 'H': 2.0})
    """
    if format == "cmapss":
        # Space-separated, no header, two trailing spaces on every line.
        return TableConfig(
            format="csv",
            csv=CsvConfig(delimiter="whitespace", header=False,
                          names=["unit", "cycle", *CMAPSS_CHANNELS], encoding="ascii"),
            asset=TableAssetConfig(column="unit", template="engine-{:03d}"),
            time=TableTimeConfig(column="cycle"),
            channels={c: TableChannelConfig(column=c) for c in CMAPSS_CHANNELS},
        )
    if format == "ai4i":
        columns = {"air_temp_k": "Air temperature [K]",
                   "process_temp_k": "Process temperature [K]",
                   "speed_rpm": "Rotational speed [rpm]", "torque_nm": "Torque [Nm]",
                   "tool_wear_min": "Tool wear [min]"}
        channels = {c: TableChannelConfig(column=columns[c]) for c in AI4I_CHANNELS[:-1]}
        channels["type_code"] = TableChannelConfig(column="Type", codes=dict(AI4I_TYPE_CODES))
        return TableConfig(format="csv", csv=CsvConfig(encoding="utf-8-sig"),
                           asset=TableAssetConfig(name="mill"),
                           time=TableTimeConfig(column="UDI"), channels=channels)
    return None


def files_of(path: Path) -> list[Path]:
    """The files ``path`` names: itself, every file in a directory, or a glob's matches,
    in name order.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for n in ("b.csv", "a.csv", "c.txt"): _ = (d / n).write_text("x")
    >>> [p.name for p in files_of(d / "*.csv")], len(files_of(d))
    (['a.csv', 'b.csv'], 3)
    """
    text = str(path)
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not found:
            raise SourceError(f"no file matches {text}")
        return found
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not found:
            raise SourceError(f"{path} holds no files")
        return found
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    return [path]


class _Once:
    """Counts bad cells per (file, what) and logs each kind once."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, file: Path, what: str, n: int, example: str) -> None:
        if n <= 0:
            return
        key = (str(file), what)
        if key not in self.counts:
            logger.warning("%s: %s (%d so far, e.g. %s); read as missing", file, what, n,
                           example)
        self.counts[key] = self.counts.get(key, 0) + n


def read_table(path: Path, table: TableConfig, card: ModelCard) -> list[Recording]:
    """Every asset's samples in ``path`` (a file, a directory or a glob), with the card's
    channels in its order, each asset's rows sorted by time (stably: a file's order is kept
    at equal times). Assets come in the order they first appear (files in name order).

    Examples
    --------
    >>> import tempfile
    >>> from contract.card import ModelCard
    >>> card = ModelCard.model_construct(input=type("I", (), {"channels": [
    ...     type("C", (), {"name": "temp", "unit": "degC"})()]})())
    >>> p = Path(tempfile.mkdtemp()) / "line.csv"
    >>> _ = p.write_text("machine,when,T\\nm2,2026-01-01T00:00:10Z,21.5\\n"
    ...                  "m1,2026-01-01T00:00:00Z,20\\nm2,2026-01-01T00:00:00Z,oops\\n")
    >>> t = TableConfig(asset={"column": "machine"}, time={"column": "when"},
    ...                 channels={"temp": {"column": "T"}})
    >>> [(r.asset, r.t - r.t[0], r.values.ravel().tolist()) for r in read_table(p, t, card)]
    [('m2', array([ 0., 10.]), [nan, 21.5]), ('m1', array([0.]), [20.0])]
    """
    channels = [c.name for c in card.input.channels]
    units = {c.name: c.unit for c in card.input.channels}
    missing = [c for c in channels if c not in table.channels]
    if missing:
        raise SourceError(f"source.table.channels: no column mapped for the model's "
                          f"channels {missing}")
    for name, ch in table.channels.items():
        if name not in units:
            raise SourceError(f"source.table.channels.{name}: the model has no channel "
                              f"{name!r} (it reads {channels})")
        want = units[name]
        if (ch.unit is not None and want and ch.unit != want and ch.scale == 1.0
                and ch.offset == 0.0):
            raise SourceError(f"source.table.channels.{name}.unit: {ch.unit!r}, but the model "
                              f"reads {name} in {want!r}; convert it with scale and offset "
                              "(value * scale + offset)")
    once = _Once()
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for file in files_of(path):
        for asset, t, values in _read_file(file, table, channels, once):
            parts.setdefault(asset, []).append((t, values))
    out = []
    for asset, chunks in parts.items():
        t = np.concatenate([c[0] for c in chunks])
        values = np.concatenate([c[1] for c in chunks])
        order = np.argsort(t, kind="stable")
        out.append(Recording(asset=asset, channels=tuple(channels), t=t[order],
                             values=np.ascontiguousarray(values[order])))
    if not out:
        raise SourceError(f"{path}: no data rows")
    return out


def _read_file(file: Path, table: TableConfig, channels: Sequence[str],
               once: _Once) -> list[tuple[str, np.ndarray, np.ndarray]]:
    fmt = table.format or ("parquet" if _suffix(file) in _PARQUET else "csv")
    needed = [table.channels[c].column for c in channels]
    if table.asset.column is not None:
        needed.append(table.asset.column)
    if table.time.column is not None:
        needed.append(table.time.column)
    columns = (_parquet_columns(file, needed) if fmt == "parquet"
               else _csv_columns(file, table.csv, needed, once))
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        return []
    values = np.empty((n, len(channels)), dtype=np.float64)
    for j, c in enumerate(channels):
        values[:, j] = _channel(file, columns[table.channels[c].column], table.channels[c],
                                table.missing, once)
    if table.asset.column is not None:
        raw = columns[table.asset.column]
        names = np.array([_asset(table.asset, v) for v in _as_list(raw)], dtype=object)
    else:
        name = (table.asset.name if table.asset.name is not None
                else table.asset.template.format(_stem(file)))
        names = np.full(n, name, dtype=object)
    out = []
    # Parsed once for the file: per asset it was a pass over every row for each asset.
    times = (None if table.time.column is None
             else _times(file, columns[table.time.column], table.time, once))
    assets = list(dict.fromkeys(names.tolist()))  # first appearance
    for asset in assets:
        rows = np.flatnonzero(names == asset)
        if times is not None:
            t = times[rows]
        else:
            t = np.arange(len(rows), dtype=np.float64) * float(table.time.period_s or 1.0)
        keep = np.isfinite(t)
        if not keep.all():
            once.add(file, f"{int((~keep).sum())} rows of {asset} without a readable time are "
                     "skipped", int((~keep).sum()), "an empty cell")
        out.append((str(asset), t[keep], values[rows][keep]))
    return out


def _suffix(file: Path) -> str:
    name = file.name[:-3] if file.name.endswith(".gz") else file.name
    return Path(name).suffix.lower()


def _stem(file: Path) -> str:
    return file.name.split(".")[0] or file.name


def _as_list(column: Any) -> list[Any]:
    return column.tolist() if isinstance(column, np.ndarray) else list(column)


def _asset(config: TableAssetConfig, value: Any) -> str:
    v: Any = value
    if isinstance(v, str):
        s = v.strip()
        try:
            v = int(s)
        except ValueError:
            try:
                f = float(s)
                v = int(f) if f.is_integer() else s
            except ValueError:
                v = s
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    try:
        return config.template.format(v)
    except (ValueError, IndexError, KeyError) as exc:
        raise SourceError(f"source.table.asset.template {config.template!r} cannot write the "
                          f"asset {value!r}: {exc}") from exc


def _channel(file: Path, column: Any, ch: TableChannelConfig, missing: list[str],
             once: _Once) -> np.ndarray:
    if isinstance(column, np.ndarray) and column.dtype.kind in "fiub":
        x = column.astype(np.float64)
    else:
        x = _numbers(file, ch, _as_list(column), missing, once)
    if ch.scale != 1.0 or ch.offset != 0.0:
        x = x * ch.scale + ch.offset
    return x


def _numbers(file: Path, ch: TableChannelConfig, cells: list[Any], missing: list[str],
             once: _Once) -> np.ndarray:
    text = np.array(["" if c is None else str(c).strip() for c in cells], dtype=str)
    absent = np.isin(text, missing)
    if ch.codes is not None:
        codes = ch.codes
        out = np.array([codes.get(c, np.nan) for c in text.tolist()], dtype=np.float64)
        unknown = np.isnan(out) & ~absent
        if unknown.any():
            first = text[np.argmax(unknown)]
            once.add(file, f"column {ch.column!r} has codes the mapping does not know "
                     f"({sorted(codes)})", int(unknown.sum()), repr(first))
        return out
    cleaned = np.where(absent, "nan", text)
    try:
        return cleaned.astype(np.float64)
    except ValueError:
        pass
    out = np.empty(len(cleaned), dtype=np.float64)
    bad = []
    for i, c in enumerate(cleaned.tolist()):  # only for a column that has a bad cell
        try:
            out[i] = float(c)
        except ValueError:
            out[i] = np.nan
            bad.append(i)
    once.add(file, f"column {ch.column!r} has values that are not numbers", len(bad),
             f"row {bad[0] + 1} {cleaned[bad[0]]!r}")
    return out


def _times(file: Path, column: Any, config: TableTimeConfig, once: _Once) -> np.ndarray:
    if isinstance(column, np.ndarray) and column.dtype.kind == "M":
        return column.astype("datetime64[ns]").astype(np.int64) / 1e9
    if isinstance(column, np.ndarray) and column.dtype.kind in "fiu":
        return column.astype(np.float64) * TIME_UNITS_S[config.unit]
    cells = ["" if c is None else str(c).strip() for c in _as_list(column)]
    if config.format is None:
        try:
            return np.array(cells, dtype=str).astype(np.float64) * TIME_UNITS_S[config.unit]
        except ValueError:
            pass
    out = np.empty(len(cells), dtype=np.float64)
    bad: list[int] = []
    for i, c in enumerate(cells):
        try:
            out[i] = parse_time(c, config.format or "iso", config.unit)
        except ValueError:
            out[i] = np.nan
            bad.append(i)
    if bad:
        once.add(file, f"column {config.column!r} has times that do not parse as "
                 f"{config.format or 'numbers or ISO 8601'}", len(bad),
                 f"row {bad[0] + 1} {cells[bad[0]]!r}")
    return out


def parse_time(value: Any, format: str, unit: str = "s") -> float:
    """Epoch seconds of a time written as ``format``: 'iso', 'epoch_s' .. 'epoch_ns', a
    strptime format, or numbers in ``unit``. A time without a zone is UTC.

    >>> parse_time("2026-01-01T00:00:01Z", "iso"), parse_time(1500, "epoch_ms")
    (1767225601.0, 1.5)
    >>> parse_time("01.01.2026 00:01", "%d.%m.%Y %H:%M")
    1767225660.0
    """
    if format.startswith("epoch_"):
        return float(value) * TIME_UNITS_S[format[6:]]
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        if format != "iso":
            raise ValueError(f"a number is not a time in {format!r}")
        return float(value) * TIME_UNITS_S[unit]
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    if format == "iso":
        dt = datetime.fromisoformat(value)
    else:
        dt = datetime.strptime(value, format)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _csv_columns(file: Path, config: CsvConfig, needed: Sequence[str],
                 once: _Once) -> dict[str, np.ndarray]:
    try:
        raw = file.read_bytes()
        if file.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        text = raw.decode(config.encoding)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SourceError(f"cannot read {file}: {exc}") from exc
    except (UnicodeDecodeError, LookupError) as exc:
        raise SourceError(f"{file} is not {config.encoding} text ({exc}); set "
                          "source.table.csv.encoding") from exc
    if config.delimiter == "whitespace":
        rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    else:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""),
                                      delimiter=config.delimiter) if r]
    if config.header:
        if not rows:
            raise SourceError(f"{file}: empty (no header line)")
        names, rows = [h.strip() for h in rows[0]], rows[1:]
    elif config.names is not None:
        names = list(config.names)
    else:
        names = [str(i) for i in range(max((len(r) for r in rows), default=0))]
    absent = [c for c in needed if c not in names]
    if absent:
        raise SourceError(f"{file}: no columns {absent} (it has {_short(names)}); check "
                          "source.table")
    width = len(names)
    good = [r for r in rows if len(r) == width]
    if len(good) < len(rows):
        bad = next(i for i, r in enumerate(rows) if len(r) != width)
        once.add(file, f"rows without {width} fields are skipped", len(rows) - len(good),
                 f"line {bad + 1 + config.header}")
    if not good:
        return {c: np.zeros(0, dtype=str) for c in needed}
    arr = np.array(good, dtype=str)
    return {c: arr[:, names.index(c)] for c in dict.fromkeys(needed)}


def _short(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:12])
    return shown + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def _parquet_columns(file: Path, needed: Sequence[str]) -> dict[str, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SourceError(f"{file}: reading Parquet needs pyarrow: pip install "
                          "'linewatch[parquet]'") from exc
    try:
        schema = pq.read_schema(file)
        absent = [c for c in needed if c not in schema.names]
        if absent:
            raise SourceError(f"{file}: no columns {absent} (it has {_short(schema.names)}); "
                              "check source.table")
        data = pq.read_table(file, columns=list(dict.fromkeys(needed)))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"cannot read {file} as Parquet: {exc}") from exc
    out: dict[str, Any] = {}
    for name in dict.fromkeys(needed):
        col = data.column(name)
        kind = str(col.type)
        if pa.types.is_timestamp(col.type):
            ns = col.cast(pa.timestamp("ns", tz=col.type.tz))
            out[name] = np.asarray(ns.to_numpy(), dtype="datetime64[ns]")
        elif re.match(r"^(u?int|float|double|halffloat|bool)", kind):
            out[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            out[name] = col.to_pylist()
    return out
