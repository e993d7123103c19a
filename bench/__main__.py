"""Run the benchmarks and print one JSON object; also write it to bench/results/."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {sorted(cases.ALL)}")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    names = args.names or sorted(cases.ALL)
    unknown = set(names) - set(cases.ALL)
    if unknown:
        p.error(f"unknown benchmarks {sorted(unknown)}")
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "machine": platform.machine(),
                    "processor": platform.processor()},
        "results": {n: cases.ALL[n](args.repeats) for n in names},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S}.json").write_text(
        json.dumps(result, indent=2, sort_keys=True))
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
