"""``python -m agent run -c configs/agent.example.yaml``: the same as ``linewatch agent``."""

from __future__ import annotations

import sys

from linewatch.cli import main

if __name__ == "__main__":
    args = sys.argv[2:] if sys.argv[1:2] == ["run"] else sys.argv[1:]
    sys.exit(main(["agent", *args]))
