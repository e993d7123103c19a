"""Rebuild shipped models from models/data: ``python models/train.py [name|all] [--no-search]``.

A thin wrapper around :func:`linewatch.training.train` (the same as ``linewatch train``).
"""

from __future__ import annotations

import argparse
import logging

from linewatch.training import NAMES, train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("name", nargs="?", default="all", choices=[*NAMES, "all"])
    p.add_argument("--no-search", action="store_true",
                   help="reuse the hyper-parameters recorded by the last search")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("skl2onnx").setLevel(logging.WARNING)
    for name in NAMES if args.name == "all" else (args.name,):
        path = train(name, search=not args.no_search)
        print(f"{name}: wrote {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
