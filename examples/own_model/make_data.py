"""Stand-in for a plant's own data: a few C-MAPSS FD001 engines as CSV files with the
plant's column names (engine, cycle, T24, ...) and, for the engines that ran to failure,
the remaining life at every row (RUL).

    python make_data.py DATA_DIR OUT_DIR
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from agent.datasets import read_recordings

COLUMNS = {"sensor_2": "T24", "sensor_3": "T30", "sensor_4": "T50", "sensor_7": "P30",
           "sensor_11": "Ps30", "sensor_12": "phi", "sensor_15": "BPR", "sensor_20": "W31"}


def write(path: Path, recordings: list, life: bool) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["engine", "cycle", *COLUMNS.values(), *(["RUL"] if life else [])])
        for r in recordings:
            cols = [r.channels.index(c) for c in COLUMNS]
            for i in range(len(r.t)):
                row = [r.asset, int(r.t[i]), *(repr(float(v)) for v in r.values[i, cols])]
                w.writerow(row + ([int(r.labels["rul"][i])] if life else []))


def main(data: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    train = read_recordings(data / "train_FD001.txt.gz", "cmapss")
    test = read_recordings(data / "test_FD001.txt.gz", "cmapss")
    write(out / "engines_train.csv", train[:40], life=True)
    write(out / "engines_holdout.csv", train[80:], life=True)
    write(out / "engines_live.csv", test[:8], life=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
