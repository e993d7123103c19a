"""The commands' surface: --version, --help text, and one set of exit codes documented once.

Run as a user runs them: the installed ``linewatch`` script and ``python -m agent`` /
``python -m aggregator``, in subprocesses.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import agent.exits
import aggregator.exits

ROOT = Path(__file__).resolve().parents[2]
LINEWATCH = str(Path(sys.executable).parent / "linewatch")
CODES = ("EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG", "EXIT_START", "EXIT_INTERRUPTED")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize(
    "argv",
    [[LINEWATCH], [sys.executable, "-m", "agent"], [sys.executable, "-m", "aggregator"]],
    ids=["linewatch", "python -m agent", "python -m aggregator"],
)
def test_version_is_the_installed_distribution(argv: list[str]) -> None:
    done = run(*argv, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"linewatch {importlib.metadata.version('linewatch')}\n"


def test_top_level_help_is_plain_text() -> None:
    done = run(LINEWATCH, "--help")
    assert done.returncode == 0
    # The module docstring (reST, ``linewatch``) used to be the description.
    assert "`" not in done.stdout
    assert "predictive-maintenance monitoring" in done.stdout
    for command in ("agent", "aggregator", "token", "report", "demo", "train", "evaluate"):
        assert re.search(rf"^\s+{command}\s+\S", done.stdout, re.M), command


def _description(help_text: str) -> str:
    """What argparse prints between the usage lines and the first argument section."""
    after_usage = help_text.split("\n\n", 1)[1]
    return re.split(r"^(?:positional arguments|options):$", after_usage, flags=re.M)[0]


@pytest.mark.parametrize(
    ("argv", "reads"),
    [
        ([LINEWATCH, "agent"], "agent YAML file"),
        ([sys.executable, "-m", "agent", "run"], "agent YAML file"),
        ([LINEWATCH, "aggregator"], "LINEWATCH_* settings"),
        ([sys.executable, "-m", "aggregator", "serve"], "LINEWATCH_* settings"),
        ([sys.executable, "-m", "aggregator", "migrate"], "LINEWATCH_DB_URL"),
        ([LINEWATCH, "token"], "LINEWATCH_DB_URL"),
        ([sys.executable, "-m", "aggregator", "token"], "LINEWATCH_DB_URL"),
        ([LINEWATCH, "report"], "LINEWATCH_DB_URL"),
        ([sys.executable, "-m", "aggregator", "report"], "LINEWATCH_DB_URL"),
        ([LINEWATCH, "demo"], "demo YAML file"),
        ([LINEWATCH, "evaluate"], "MODEL_DIR"),
    ],
    ids=["agent", "python -m agent run", "aggregator", "python -m aggregator serve",
         "python -m aggregator migrate", "token", "python -m aggregator token", "report",
         "python -m aggregator report", "demo", "evaluate"],
)
def test_a_command_help_says_what_it_does_reads_writes_and_returns(
    argv: list[str], reads: str
) -> None:
    done = run(*argv, "--help")
    assert done.returncode == 0, done.stderr
    description = _description(done.stdout)
    assert "Reads:" in description and reads in description
    assert "Writes:" in description
    assert "example:" in description
    assert "`" not in done.stdout
    epilog = done.stdout.split("exit codes", 1)[1]
    listed = {int(code) for code in re.findall(r"^\s+(\d+)\s", epilog, re.M)}
    assert agent.exits.EXIT_CONFIG in listed and agent.exits.EXIT_START in listed
    assert listed <= {getattr(agent.exits, c) for c in CODES} | {143}


def test_calibrate_help_has_a_description_and_its_exit_codes() -> None:
    done = run(LINEWATCH, "calibrate", "--help")
    assert done.returncode == 0, done.stderr
    assert "in-distribution" in _description(done.stdout)
    assert "exit codes" in done.stdout and "could not start" not in done.stdout
    assert f"{agent.exits.EXIT_START} the model directory" in " ".join(done.stdout.split())


def test_evaluate_help_says_what_truth_expects() -> None:
    done = run(LINEWATCH, "evaluate", "--help")
    options = done.stdout.split("options:", 1)[1]
    truth = options.split("--truth", 1)[1].split("--json", 1)[0]
    assert "C-MAPSS test file" in truth and "RUL_" in truth and "one integer per engine" in truth


def test_both_sides_name_the_same_exit_codes() -> None:
    assert [getattr(agent.exits, c) for c in CODES] == [
        getattr(aggregator.exits, c) for c in CODES
    ] == [0, 1, 2, 3, 130]


def test_readme_documents_every_command_and_code_once() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.count("## Exit codes") == 1
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| command"))
    assert [int(n) for n in re.findall(r"\| (\d+) ", header)] == [
        getattr(agent.exits, c) for c in CODES
    ]
    for command in ("linewatch agent", "python -m agent run", "linewatch aggregator",
                    "python -m aggregator serve", "python -m aggregator migrate",
                    "linewatch token", "python -m aggregator token", "linewatch report",
                    "python -m aggregator report", "linewatch demo",
                    "linewatch train", "linewatch calibrate", "linewatch evaluate"):
        assert f"`{command}`" in section, command
    for name in CODES:
        assert f"`{name}`" in section, name


def test_the_docs_give_the_aggregator_command_as_the_readme_does() -> None:
    env = (ROOT / "configs" / "aggregator.example.env").read_text()
    assert "linewatch aggregator -c configs/aggregator.example.env" in env.splitlines()[0]
    assert "python -m aggregator" not in env
