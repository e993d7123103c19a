"""``python -m agent run -c configs/agent.example.yaml``: one gateway agent.

The same command as ``linewatch agent``; it imports only the agent and the contract, so a
gateway that installed ``linewatch[agent]`` never loads the aggregator or the trainer.

Exit codes: 0 when the replay ended and the outbox drained, 1 when messages are still in
the outbox (kept for the next start) or the model cannot be served, 2 for a bad
configuration (key path and value printed), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from agent.errors import AgentError, ConfigError
from contract.errors import ContractError

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's options, shared with ``linewatch agent``."""
    parser.add_argument("-c", "--config", required=True, type=Path, help="agent YAML file")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds to wait for the outbox to empty at the end of a replay")


def run(args: argparse.Namespace) -> int:
    """Run one agent from parsed arguments; return the exit code."""
    from agent import config as agent_config
    from agent.pipeline import Agent

    try:
        agent = Agent(agent_config.load(args.config))
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except (AgentError, ContractError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        report = agent.run(drain_timeout_s=args.drain_timeout)
    except KeyboardInterrupt:
        return 130
    p = report.progress
    sys.stdout.write(f"scored {p.windows_scored} windows, {p.alerts} above threshold; "
                     f"{p.published} messages acknowledged, {p.outbox_depth} left in the "
                     "outbox\n")
    return 0 if report.drained else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("run", help="run the agent until its source ends"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
