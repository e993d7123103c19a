"""What a gateway installs: a fresh venv with only ``pip install -c constraints.txt .[agent]``,
measured with ``du`` of its site-packages, and its largest packages.

Building the venv takes a minute or two, so the figures are cached in
``var/bench/agent-install.json`` for as long as pyproject.toml and constraints.txt are
unchanged (the venv itself is removed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "var" / "bench" / "agent-install.json"


def _key() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return round(int(out.stdout.split()[0]) / 1024, 1)


def agent_install_size() -> dict[str, Any]:
    key = _key()
    if CACHE.exists():
        cached: dict[str, Any] = json.loads(CACHE.read_text())
        if cached.get("key") == key:
            return cached["result"]
    with tempfile.TemporaryDirectory() as d:
        venv = Path(d) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
               "--disable-pip-version-check"]
        # From a copy of what a wheel holds: building in place would leave build/ behind.
        src = Path(d) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy(ROOT / name, src / name)
        for package in ("contract", "outage", "agent", "aggregator", "linewatch"):
            shutil.copytree(ROOT / package, src / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(pip + ["-c", str(ROOT / "constraints.txt"), f"{src}[agent]"],
                       check=True, cwd=d)
        (site,) = (venv / "lib").glob("python*/site-packages")
        packages = {p.name: _du_mb(p) for p in site.iterdir()
                    if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))}
        largest = dict(sorted(packages.items(), key=lambda kv: -kv[1])[:8])
        result = {"site_packages_mb": _du_mb(site), "largest_mb": largest,
                  "pip": "pip install -c constraints.txt .[agent]"}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps({"key": key, "result": result}, indent=2))
    return result
