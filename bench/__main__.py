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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sizing"]:
        # Not a benchmark: a table computed from a consumers run's JSON.
        from bench import sizing
        return sizing.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {sorted(cases.ALL)}"
                   "; 'consumers' (alone) runs bench.consumers: Node-RED, a bare consumer and "
                   "the aggregator on real servers; 'sizing [--from FILE]' prints the sizing "
                   "table computed from a consumers run")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--items", type=int, default=100_000,
                   help="consumers: prediction items published per run")
    p.add_argument("--batch-sizes", type=lambda s: tuple(int(x) for x in s.split(",")),
                   default=None, help="consumers: items per message, e.g. 1,10,100")
    p.add_argument("--consumers", type=lambda s: tuple(s.split(",")), default=None,
                   help="consumers: which of node_red,bare_python,linewatch")
    p.add_argument("--aggregator-src", type=Path, default=None, metavar="DIR",
                   help="consumers: run the aggregator from this checkout (before/after)")
    p.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                   help="consumers: also run the aggregator of this checkout, as "
                   "linewatch_baseline, in the same run (before/after)")
    args = p.parse_args(argv)
    if args.names == ["consumers"]:
        # Minutes, npm, and real servers: only when asked for by name.
        from bench import consumers
        kwargs: dict = {"items": args.items, "repeats": min(args.repeats, 7)}
        if args.batch_sizes:
            kwargs["batch_sizes"] = args.batch_sizes
        if args.consumers:
            kwargs["consumers"] = args.consumers
        if args.baseline_src:
            kwargs["baseline"] = args.baseline_src.resolve()
        if args.aggregator_src:
            kwargs["source"] = args.aggregator_src.resolve()
        return _write(args.out, {"consumers": consumers.run_all(
            **kwargs, log=lambda line: print(line, file=sys.stderr, flush=True))})
    names = args.names or sorted(cases.ALL)
    unknown = set(names) - set(cases.ALL)
    if unknown:
        p.error(f"unknown benchmarks {sorted(unknown)}")
    return _write(args.out, {n: cases.ALL[n](args.repeats) for n in names})


def _write(out: Path, results: dict) -> int:
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "machine": platform.machine(),
                    "processor": platform.processor()},
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S}.json").write_text(
        json.dumps(result, indent=2, sort_keys=True))
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
