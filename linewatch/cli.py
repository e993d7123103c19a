"""The ``linewatch`` command: agent, aggregator, demo, train, evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger("linewatch")


def _agent(args: argparse.Namespace) -> int:
    from agent.__main__ import run

    return run(args)


def _aggregator(args: argparse.Namespace) -> int:
    from aggregator.server import serve
    from aggregator.settings import load_settings

    serve(load_settings(args.config))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from linewatch.demo import run_demo

    return run_demo(args.config, serve=args.serve, speed=args.speed, data=args.data,
                    truth=args.truth, as_json=args.json)


_TRAIN_OUT = Path("var/models")  # relative to the working directory, like var/ of the demo


def _train(args: argparse.Namespace) -> int:
    from contract.card import CARD_FILE, MODEL_FILE
    from linewatch.training import NAMES, train

    names = NAMES if args.name == "all" else (args.name,)
    out: Path = args.out
    # Replacing a model (the shipped ones above all) must be asked for: check every target
    # before the first one is trained, so a refused "all" writes nothing.
    taken = [out / name for name in names if (out / name).exists()]
    if taken and not args.overwrite:
        print(f"error: not replacing {', '.join(map(str, taken))}: pass --overwrite to "
              "replace, or --out DIR to write elsewhere", file=sys.stderr)
        return 1
    calibrated = [name for name in names if _calibrated(out / name)]
    for name in names:
        path = train(name, out, search=not args.no_search)
        print(f"{name}: wrote {path / MODEL_FILE}, {path / CARD_FILE}, {path / 'CARD.md'}")
        if name in calibrated:
            # A calibration describes the model it was run on, so it is not carried over.
            print(f"{name}: the card it replaced had a monitor calibration; make one for the "
                  f"new model: linewatch calibrate {path} DATA_FILE --write")
    return 0


def _calibrated(model_dir: Path) -> bool:
    from contract.card import CardError, ModelCard

    try:
        return ModelCard.load(model_dir).reference.monitoring is not None
    except CardError:
        return False


def _evaluate(args: argparse.Namespace) -> int:
    from linewatch.evaluate import evaluate, format_report

    alarms, _, days = args.budget.partition("/")
    result = evaluate(args.model_dir, args.data_file, truth=args.truth,
                      budget=(float(alarms), float(days or 1)),
                      windows_per_day=args.windows_per_day, assets=args.assets)
    print(json.dumps(result, sort_keys=True) if args.json else format_report(result))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from linewatch.calibration import run_calibration

    print(run_calibration(args.model_dir, args.data_file, write=args.write))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linewatch", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)

    from agent.__main__ import add_arguments

    a = sub.add_parser("agent", help="run a gateway agent")
    add_arguments(a)
    a.set_defaults(func=_agent)

    g = sub.add_parser("aggregator", help="run the central aggregator (API + MQTT ingest)")
    g.add_argument("-c", "--config", type=Path, default=None,
                   help="env file with LINEWATCH_* settings (the environment also works)")
    g.set_defaults(func=_aggregator)

    d = sub.add_parser("demo", help="embedded broker + aggregator + agents replaying FD001")
    d.add_argument("-c", "--config", type=Path, default=Path("configs/demo.yaml"))
    d.add_argument("--serve", action="store_true",
                   help="keep the aggregator and its API running after the replay ends")
    d.add_argument("--speed", type=float, default=None,
                   help="replay speed (times real time, 0 = as fast as possible)")
    d.add_argument("--data", type=Path, default=None,
                   help="replay this file (in the model's input format) instead of the "
                   "config's; its assets are shared out among the configured agents")
    d.add_argument("--truth", type=Path, default=None,
                   help="truth for --data (a C-MAPSS RUL file): check the maintenance "
                   "tickets against it")
    d.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout: every ticket (kind, asset or "
                   "assets, opened_at, evidence) and the counts; progress goes to stderr")
    d.set_defaults(func=_demo)

    from linewatch.training import NAMES

    t = sub.add_parser(
        "train", help="rebuild a model from the data in models/data",
        description="Rebuild a model (model.onnx, card.json, CARD.md) from the data in "
                    f"models/data into OUT/NAME (default {_TRAIN_OUT}/NAME). An existing "
                    "model directory is never replaced without --overwrite; the shipped "
                    "models are replaced by: linewatch train all --out models --overwrite")
    t.add_argument("name", choices=[*NAMES, "all"], metavar="NAME",
                   help=f"one of {', '.join(NAMES)}, or all")
    # --models-root: the option's old name, kept for scripts that use it.
    t.add_argument("--out", "--models-root", dest="out", type=Path, default=_TRAIN_OUT,
                   help=f"directory to write NAME/ into (default {_TRAIN_OUT}); data come "
                        "from OUT/data when it exists, else from models/data")
    t.add_argument("--overwrite", action="store_true",
                   help="replace OUT/NAME if it exists")
    t.add_argument("--no-search", action="store_true",
                   help="reuse the recorded hyper-parameters instead of searching again")
    t.set_defaults(func=_train)

    c = sub.add_parser(
        "calibrate", help="measure how the drift monitors behave on in-distribution data",
        description="Run the agent's drift and data-quality detectors over in-distribution "
        "recordings (the model's training data, or data from machines known to be healthy "
        "and run the same way), cross-fitted by asset, and record how far they wander: the "
        "null every agent calibrates its thresholds against, for its own false-alarm budget. "
        "Prints the thresholds for the default budget (1 false alarm per agent per 90 days, "
        "25 assets); with --write, stores the calibration in the card's reference.monitoring "
        "(model.onnx and its checksum are untouched). Example: linewatch calibrate "
        "models/cmapss_fd001 models/data/cmapss_fd001/train_FD001.txt.gz --write")
    c.add_argument("model_dir", type=Path, help="model directory (model.onnx + card.json)")
    c.add_argument("data_file", type=Path,
                   help="in-distribution recordings in the card's input format")
    c.add_argument("--write", action="store_true", help="store the result in card.json")
    c.set_defaults(func=_calibrate)

    e = sub.add_parser("evaluate", help="score a data file with a model, print metrics")
    e.add_argument("model_dir", type=Path)
    e.add_argument("data_file", type=Path)
    e.add_argument("--truth", type=Path, default=None,
                   help="RUL file for a C-MAPSS test file")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--budget", default="1/90", metavar="ALARMS/DAYS",
                   help="false drift alarms allowed per agent per days, for the monitors' "
                   "thresholds (default 1/90)")
    e.add_argument("--windows-per-day", type=float, default=144.0,
                   help="windows per asset per day on the line (default 144: one a cycle of "
                   "10 minutes)")
    e.add_argument("--assets", type=int, default=None,
                   help="assets per agent (default: the file's)")
    e.set_defaults(func=_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from agent.errors import AgentError, ConfigError
    from contract.errors import ContractError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (AgentError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
