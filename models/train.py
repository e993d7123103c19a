"""Rebuild models from models/data: ``python models/train.py NAME|all [options]``.

The same command as ``linewatch train`` (same options; see ``--help``): it writes into
``var/models/`` unless told ``--out DIR``, and never replaces an existing model directory,
the shipped ones included, without ``--overwrite``.
"""

from __future__ import annotations

import sys

from linewatch.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
