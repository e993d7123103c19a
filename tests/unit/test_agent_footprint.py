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
