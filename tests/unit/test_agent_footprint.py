"""A gateway installs `linewatch[agent]` only: the agent must not need the aggregator's or
the trainer's libraries, and the aggregator reads the contract without the agent's runtime."""

from __future__ import annotations

import subprocess
import sys

# (River itself imports scikit-learn and SQLAlchemy when they happen to be installed, so
# those two are not listed: a gateway simply does not have them.)
HEAVY_FOR_A_GATEWAY = ("aggregator", "fastapi", "starlette", "influxdb_client", "amqtt",
                       "skl2onnx", "uvicorn", "httpx", "linewatch.training")
AGENT_RUNTIME = ("onnxruntime", "river", "paho")


def _imported_after(statement: str, names: tuple[str, ...]) -> list[str]:
    code = (f"import sys; {statement}; "
            f"print(' '.join(n for n in {names!r} if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_the_agent_imports_nothing_from_the_central_side() -> None:
    statement = "import linewatch.cli, agent.pipeline, agent.sources.replay"
    assert _imported_after(statement, HEAVY_FOR_A_GATEWAY) == []


def test_the_wire_contract_needs_only_pydantic() -> None:
    assert _imported_after("import contract.wire, contract.card", AGENT_RUNTIME + ("numpy",)) == []


def test_an_agent_with_the_default_config_never_loads_scipy(tmp_path) -> None:
    """River's drift package imports scipy (for KSWIN), about 85 MB of a gateway's memory;
    the agent's detectors need none of it. Started from the example config and run over a
    few ticks, the agent has not imported it."""
    code = f"""
import sys, yaml
from agent import config as agent_config
from agent.pipeline import Agent
raw = yaml.safe_load(open("configs/agent.example.yaml"))
raw["outbox"] = {{"path": {str(tmp_path / "outbox.db")!r}}}
raw["source"]["speed"] = 0  # the example paces one cycle a second
agent = Agent(agent_config.parse(raw))
for n, readings in zip(range(60), agent.source.ticks()):
    ready = agent._window(readings)
    if len(ready):
        agent._score(ready)
    agent._events()
assert agent.progress.windows_scored > 0
print("scipy" in sys.modules, "river.drift" in sys.modules)
"""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root)
    assert out.stdout.split() == ["False", "False"]
