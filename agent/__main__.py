"""``python -m agent run -c configs/agent.example.yaml``: one gateway agent.

The same command as ``linewatch agent``; it imports only the agent and the contract, so a
gateway that installed ``linewatch[agent]`` never loads the aggregator or the trainer.
A failure to start is reported in one or two lines (what is wrong, which key of the config
to change) with the exit codes of ``agent.exits``; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent.errors import AgentError, ConfigError, OutboxError, SourceError
from agent.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_START
from contract.errors import CardError, ContractError
from contract.release import installed_version

if TYPE_CHECKING:
    from agent.pipeline import RunReport

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main", "run", "summary"]

DESCRIPTION = """\
Run one gateway agent: replay a recorded data file as if live, score every window with
the model, watch inputs and scores for drift, and publish predictions, drift events and
health over MQTT to the aggregator.

Reads:  the agent YAML file given with -c (every key is described in
        configs/agent.example.yaml), the model directory it names (model.onnx +
        card.json) and the data file it names.
Writes: the on-disk outbox (outbox.path, default var/agent/<agent id>/outbox.db): every
        message waits there until the aggregator confirms it stored it (or, with
        publish.confirm: broker, until the broker acknowledges it), and a message still
        there at exit is sent at the next start. Publishes to mqtt.url.

Ends when the replay is over and the outbox has drained (or after --drain-timeout).
A restarted agent resumes its replay where the last run stopped, with the same plant
times (the position is kept in the outbox file); a replay already complete is not
scored again. --from-start (or source.resume: false) replays from the beginning.

example:
  linewatch agent -c configs/agent.example.yaml
  python -m agent run -c configs/agent.example.yaml
"""

EPILOG = f"""\
exit codes (README.md, "Exit codes", has every command's):
  {EXIT_OK}    the replay ended and every message was confirmed
  {EXIT_FAILED}    messages are still in the outbox (kept: they are sent at the next start)
  {EXIT_CONFIG}    bad configuration: the key path and value are printed
  {EXIT_START}    could not start: model directory, model card, data file or outbox unusable
  {EXIT_INTERRUPTED}  stopped by Ctrl-C
"""



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's options, shared with ``linewatch agent``."""
    parser.add_argument("-c", "--config", required=True, type=Path, metavar="FILE",
                        help="agent YAML file (see configs/agent.example.yaml)")
    parser.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="seconds to wait at the end of a replay for every message to be "
                        "confirmed (default: 60)")
    parser.add_argument("--from-start", action="store_true",
                        help="replay from the beginning instead of resuming where the last "
                        "run stopped (as source.resume: false)")
    # SUPPRESS: given after the subcommand, -v must not reset one given before it.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at DEBUG level; show the traceback of a failed start")


def _brief(exc: BaseException) -> str:
    """The first line of the message; when a pydantic error lies behind it (a model card
    that does not validate), its first problem too."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        errors = cause.errors()
        e = errors[0]
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        first += f"; the first: {loc}: {e['msg']} (got {e.get('input')!r})"
    return first


def _todo(exc: BaseException, config: Path) -> str:
    if isinstance(exc, CardError):
        return (f"check model.dir in {config}: a model directory holds model.onnx and card.json "
                "as 'linewatch train' writes them")
    if isinstance(exc, SourceError):
        return (f"check source.path and source.format in {config} (for a table, mqtt or "
                "opcua source: its mapping, named above)")
    if isinstance(exc, OutboxError):
        return f"set outbox.path in {config} to a file in a writable directory"
    return f"check the paths in {config} (model.dir, source.path, outbox.path)"


def run(args: argparse.Namespace) -> int:
    """Run one agent from parsed arguments; return the exit code (``agent.exits``)."""
    from agent import config as agent_config

    verbose = bool(getattr(args, "verbose", False))
    try:
        config = agent_config.load(args.config)
        if getattr(args, "from_start", False):
            config = config.model_copy(update={
                "source": config.source.model_copy(update={"resume": False})})
        # Imported only now: onnxruntime and River take seconds to load on a small gateway,
        # and a bad configuration should be reported at once.
        from agent.pipeline import Agent

        agent = Agent(config)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_CONFIG
    except (AgentError, ContractError, OSError) as exc:
        if verbose:
            traceback.print_exception(exc)
        sys.stderr.write(f"error: {_brief(exc)}\n  {_todo(exc, args.config)}\n")
        return EXIT_START
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        report = agent.run(drain_timeout_s=args.drain_timeout)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    sys.stdout.write(summary(report, agent.config.publish.confirm) + "\n")
    return EXIT_OK if report.drained else EXIT_FAILED


def summary(report: RunReport, confirm: str) -> str:
    """The agent's last line: what it scored and what it knows of where the messages are.

    >>> from agent.pipeline import Progress, RunReport
    >>> p = Progress(windows_scored=1234, alerts=17, published=250, confirmed=250)
    >>> summary(RunReport(p, drained=True), "aggregator")  # doctest: +NORMALIZE_WHITESPACE
    'scored 1234 windows, 17 above threshold; 250 messages stored by the aggregator
     (confirmed), 0 handed to the broker but not yet confirmed, 0 not yet sent'
    >>> p = Progress(windows_scored=5, published=3, outbox_depth=2, unsent=2)
    >>> summary(RunReport(p, drained=False), "broker")  # doctest: +NORMALIZE_WHITESPACE
    'scored 5 windows, 0 above threshold; 3 messages acknowledged by the broker
     (publish.confirm: broker), 2 not yet sent; 2 left in the outbox for the next start'
    """
    p = report.progress
    line = f"scored {p.windows_scored} windows, {p.alerts} above threshold; "
    if confirm == "broker":
        line += (f"{p.published} messages acknowledged by the broker (publish.confirm: "
                 f"broker), {p.unsent} not yet sent")
    else:
        line += (f"{p.confirmed} messages stored by the aggregator (confirmed), "
                 f"{p.unconfirmed} handed to the broker but not yet confirmed, "
                 f"{p.unsent} not yet sent")
    if p.outbox_depth:
        line += f"; {p.outbox_depth} left in the outbox for the next start"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="The linewatch gateway agent; 'linewatch agent' runs the same code.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"linewatch {installed_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level; show the traceback of a failed start")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_arguments(commands.add_parser(
        "run", help="run the agent until its source ends", description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
