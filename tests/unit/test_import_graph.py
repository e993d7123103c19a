"""The import graph has floors: ``contract`` and ``outage`` at the bottom, ``agent`` and
``aggregator`` side by side on them, ``linewatch`` (CLI, demo, training) on top. Nothing
points back up.

Read statically from the source (every ``import`` statement, also those inside functions),
so a lazy import cannot hide a dependency the way it hides from ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each package may import from the project's own packages.
ALLOWED = {
    "contract": {"contract"},
    "outage": {"outage"},
    "agent": {"contract", "outage", "agent"},
    "aggregator": {"contract", "outage", "aggregator"},
    "linewatch": {"contract", "outage", "agent", "aggregator", "linewatch"},
}


def _project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_floors_below_it(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(_project_imports(path) - ALLOWED[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_contract_needs_only_the_standard_library_and_pydantic() -> None:
    third_party: dict[str, set[str]] = {}
    for path in (ROOT / "contract").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            for n in names:
                third_party.setdefault(n.split(".")[0], set()).add(path.name)
    for name in set(sys.stdlib_module_names) | {"contract", "__future__"}:
        third_party.pop(name, None)
    # Only signing and verifying an artifact needs cryptography, imported when a key is used.
    assert third_party == {"pydantic": third_party["pydantic"], "cryptography": {"artifact.py"}}


def test_reading_the_contract_loads_no_cryptography() -> None:
    code = ("import sys, contract.wire, contract.card, contract.artifact\n"
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_the_agents_entry_point_loads_neither_the_aggregator_nor_the_cli() -> None:
    code = ("import sys, runpy; sys.argv = ['agent', '--help']\n"
            "try:\n    runpy.run_module('agent', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'aggregator', 'linewatch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"
