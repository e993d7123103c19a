"""How many assets and agents one core, and one aggregator replica, can take: a sizing
table computed from a ``bench consumers`` run (the aggregator's figures in its JSON).

    python -m bench sizing [--from bench/results/bench-....json] [--headroom 0.5]

For each items-per-message setting the run measured two rates of the aggregator:

- **per core**: points stored per CPU-second of its process (what a core's worth of CPU
  ingests, validating, deduping and running every rule);
- **per replica**: points stored per second of the run's wall-clock time, first publish to
  last point stored. A replica ingests on one thread (one batch at a time, waiting on
  InfluxDB and SQL in between), so a replica is not more than one core for ingest, and
  less when it waits: more cores in one replica keep its API, web pages and MQTT network
  thread off the ingest thread, they do not ingest faster. Beyond one replica's rate, add
  replicas in a shared subscription group (README: running more than one aggregator).
  The publisher may also have been the limit of a run, so this is a floor.

Of either rate only ``1 - headroom`` is planned for (default half: bursts after an
outage, the API's queries, a slower database). An asset scored once a minute adds 1/60
point a second, once every 10 s 1/10, once a second 1; agents are those assets at a
typical 20 or 100 assets per agent.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AGENT_SIZES", "RATES", "Row", "load", "main", "markdown", "rows"]

ROOT = Path(__file__).resolve().parents[1]
# Seconds between an asset's windows, and what the table calls them.
RATES = ((60.0, "1 window/min"), (10.0, "1 window/10 s"), (1.0, "1 window/s"))
AGENT_SIZES = (20, 100)  # assets per agent


@dataclass(frozen=True)
class Row:
    """One line of the table: one items-per-message setting, per core or per replica."""

    items_per_message: int
    unit: str  # "core" or "replica"
    points_per_s: float  # measured
    usable_points_per_s: float  # after the headroom
    assets: tuple[int, ...]  # at each of RATES
    agents: tuple[tuple[int, ...], ...]  # at each of RATES, for each of AGENT_SIZES


def load(path: Path) -> dict[str, Any]:
    """The ``consumers`` results of a bench JSON file (the whole file or that part)."""
    data = json.loads(path.read_text())
    if "results" in data:
        data = data["results"]
    if "consumers" in data:
        data = data["consumers"]
    if "medians" not in data or "linewatch" not in data["medians"]:
        raise ValueError(f"{path}: no 'bench consumers' figures of the aggregator in it")
    return dict(data)


def rows(consumers: dict[str, Any], headroom: float = 0.5) -> list[Row]:
    """Per items-per-message setting of the run: a core's row and a replica's."""
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    out = []
    medians = consumers["medians"]["linewatch"]
    for key in sorted(medians, key=lambda k: int(k.rsplit("_", 1)[1])):
        per_message = int(key.rsplit("_", 1)[1])
        m = medians[key]
        wall = [r["stored"] / r["wall_s"] for r in consumers["runs"]["linewatch"][str(per_message)]
                if r.get("wall_s")]
        measured = {"core": m["points_per_cpu_s"],
                    "replica": sorted(wall)[len(wall) // 2] if wall else None}
        for unit, rate in measured.items():
            if not rate:
                continue
            usable = rate * (1 - headroom)
            assets = tuple(int(usable * every) for every, _ in RATES)
            out.append(Row(per_message, unit, rate, usable, assets,
                           tuple(tuple(a // size for size in AGENT_SIZES) for a in assets)))
    return out


def markdown(table: list[Row], headroom: float = 0.5) -> str:
    """The table as markdown: assets, and in brackets agents of 20 / of 100 assets."""
    sizes = " / ".join(str(s) for s in AGENT_SIZES)
    head = ["items per message", "per", "points/s measured",
            f"planned ({round(headroom * 100)} % headroom)",
            *(f"assets at {name} (agents of {sizes})" for _, name in RATES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [str(r.items_per_message), r.unit, f"{r.points_per_s:,.0f}",
                 f"{r.usable_points_per_s:,.0f}",
                 *(f"{a:,} ({' / '.join(f'{n:,}' for n in agents)})"
                   for a, agents in zip(r.assets, r.agents, strict=True))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _newest() -> Path:
    for path in sorted((ROOT / "bench" / "results").glob("bench-*.json"), reverse=True):
        try:
            load(path)
        except (ValueError, KeyError, json.JSONDecodeError):
            continue
        return path
    raise SystemExit("no bench consumers results in bench/results: run "
                     "`python -m bench consumers` first, or give --from FILE")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sizing", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--from", dest="sources", type=Path, action="append", metavar="FILE",
                   help="a bench consumers JSON (default: the newest in bench/results); "
                        "again for another run's batch sizes (a size in two files: the "
                        "first one's)")
    p.add_argument("--headroom", type=float, default=0.5,
                   help="share of the measured rate kept free (default 0.5)")
    args = p.parse_args(argv)
    sources = args.sources or [_newest()]
    table: list[Row] = []
    for source in sources:
        known = {r.items_per_message for r in table}
        table += [r for r in rows(load(source), args.headroom)
                  if r.items_per_message not in known]
    table.sort(key=lambda r: r.items_per_message)  # stable: core before replica
    print(markdown(table, args.headroom))
    print(f"\nFrom {', '.join(s.name for s in sources)}; assets and agents rounded down.",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
