"""The ``linewatch`` command: agent, aggregator, token, report, demo, train, evaluate,
features, card.

``agent``, ``aggregator``, ``token`` and ``report`` run the code of ``python -m agent run``,
``python -m aggregator serve``, ``python -m aggregator token`` and
``python -m aggregator report``; every command's exit
codes are the constants of ``agent.exits`` / ``aggregator.exits`` (the same numbers),
listed in its ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

# linewatch's own commands use the agent's names for the shared codes: the agent package
# is in every install and its exits module imports nothing.
from agent.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_START
from contract.release import installed_version

__all__ = ["main"]

logger = logging.getLogger("linewatch")

_RAW = argparse.RawDescriptionHelpFormatter

# Plain text: argparse prints it as it is (the module docstring is reST).
_DESCRIPTION = """\
linewatch: predictive-maintenance monitoring for assembly lines. Gateway agents score
sensor data with ONNX failure models, watch for drift and publish over MQTT; the
aggregator stores the series, opens maintenance tickets and serves a REST API.

Run 'linewatch COMMAND --help' for what a command reads, writes and returns.
"""

_EPILOG = f"""\
examples:
  linewatch demo                                   the whole loop on one machine
  linewatch aggregator -c configs/aggregator.example.env
  linewatch token create --scope admin --name you -c configs/aggregator.example.env
  linewatch report --period 30d -c configs/aggregator.example.env
  linewatch agent -c configs/agent.example.yaml

exit codes, the same for every command (README.md, "Exit codes", has the table):
  {EXIT_OK}    done
  {EXIT_FAILED}    ran but did not finish its job (agent: messages left in the outbox)
  {EXIT_CONFIG}    bad arguments or configuration: nothing was started
  {EXIT_START}    could not start: a port in use, a file or server the configuration names
  {EXIT_INTERRUPTED}  stopped by Ctrl-C
"""

_DEMO_DESCRIPTION = """\
The whole loop on one machine, with nothing installed: an embedded MQTT broker and
embedded SQLite stores, the aggregator and its API, and one agent per line replaying the
C-MAPSS FD001 test engines through the failure model. Prints progress, the maintenance
tickets raised, and how they compare with the truth file (--json: one JSON object on
standard output, progress on standard error).

Reads:  the demo YAML file given with -c (default configs/demo.yaml): model, data and
        truth files (--data and --truth replace them), replay speed, rule, optional
        real mqtt_url / influx_url.
Writes: state_dir (default var/demo, wiped at every start): outboxes, ticket database,
        series store and demo.log. The API listens on http_port (default 8000, or a free
        port if that one is busy).

example:
  linewatch demo
  linewatch demo --speed 0 --serve
"""

_DEMO_EPILOG = f"""\
exit codes (README.md, "Exit codes", has every command's):
  {EXIT_OK}    every scored window reached the aggregator (also: stopped by Ctrl-C)
  {EXIT_FAILED}    some scored windows were not stored by the aggregator
  {EXIT_CONFIG}    bad demo configuration, or the file is missing
  {EXIT_START}    could not start: model, data file, port or state_dir unusable
"""

_EVALUATE_DESCRIPTION = """\
Score a recorded data file with a model the way a gateway would (same windows, features
and ONNX runtime; the model's sha256 and self-test are checked) and print the model
card's metrics with 95 % confidence intervals, and the drift monitors' thresholds for a
false-alarm budget (--budget).

Reads:  MODEL_DIR (model.onnx + card.json, e.g. models/cmapss_fd001) and DATA_FILE, in
        the format the card names (C-MAPSS text, AI4I CSV, IMS snapshots). The truth
        comes from the file itself, except for a C-MAPSS test file: give its RUL file
        with --truth. Without truth, only counts and score summaries are printed.
Writes: nothing; the report goes to standard output (--json: one JSON object).

example:
  linewatch evaluate models/cmapss_fd001 models/data/cmapss_fd001/test_FD001.txt.gz \\
      --truth models/data/cmapss_fd001/RUL_FD001.txt
  linewatch evaluate models/ai4i2020 models/data/ai4i2020/ai4i2020.csv --json
"""

_EVALUATE_EPILOG = f"""\
exit codes (README.md, "Exit codes", has every command's):
  {EXIT_OK}    report printed
  {EXIT_CONFIG}    bad arguments (e.g. --truth with a file that is not C-MAPSS, --budget x)
  {EXIT_START}    the model directory, the data file or the truth file is missing or unusable
"""


# One paragraph, wrapped by argparse like calibrate's description.
_CALIBRATE_EPILOG = (
    f"exit codes (README.md, \"Exit codes\", has every command's): {EXIT_OK} thresholds "
    f"printed (and, with --write, stored in card.json); {EXIT_CONFIG} bad arguments; "
    f"{EXIT_START} the model directory or the data file is missing or unusable; "
    f"{EXIT_INTERRUPTED} stopped by Ctrl-C."
)



def _verbose_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the subcommand, -v must not reset one given before it.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at DEBUG level; show the traceback of an error")


def _agent(args: argparse.Namespace) -> int:
    from agent.__main__ import run

    return run(args)


def _aggregator(args: argparse.Namespace) -> int:
    from aggregator.__main__ import serve_command

    return serve_command(args)


def _token(args: argparse.Namespace) -> int:
    from aggregator.__main__ import token_command

    return token_command(args)


def _registry(args: argparse.Namespace) -> int:
    from linewatch.registry import run

    return run(args)


def _health_report(args: argparse.Namespace) -> int:
    from aggregator.__main__ import report_command

    return report_command(args)


def _demo(args: argparse.Namespace) -> int:
    if not args.config.is_file():
        print(f"error: demo configuration {str(args.config)!r} does not exist: check the -c "
              "path (the shipped one is configs/demo.yaml)", file=sys.stderr)
        return EXIT_CONFIG
    from pydantic import ValidationError

    from aggregator.errors import AggregatorError
    from linewatch.demo import run_demo

    try:
        return run_demo(args.config, serve=args.serve, speed=args.speed, data=args.data,
                        truth=args.truth, as_json=args.json)
    except ValidationError as exc:
        _report(exc, args)
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
            print(f"error: {args.config}: {loc}: {e['msg']}{got}", file=sys.stderr)
        return EXIT_CONFIG
    except AggregatorError as exc:
        _report(exc, args)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_START


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
    from linewatch.calibration import calibrate_trained
    from linewatch.training.common import data_root

    for name in names:
        path = train(name, out, search=not args.no_search)
        # A calibration describes the model it was measured on: the new model gets its own,
        # from the same training data.
        calibrate_trained(path, data_root(out))
        print(f"{name}: wrote {path / MODEL_FILE}, {path / CARD_FILE} (with its monitor "
              f"calibration), {path / 'CARD.md'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from agent.datasets import DatasetError
    from contract.errors import ContractError
    from linewatch.evaluate import evaluate, format_report

    alarms, _, days = args.budget.partition("/")
    try:
        budget = (float(alarms), float(days or 1))
    except ValueError:
        print(f"error: --budget {args.budget!r}: expected ALARMS/DAYS, e.g. 1/90",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = evaluate(args.model_dir, args.data_file, truth=args.truth, budget=budget,
                          windows_per_day=args.windows_per_day, assets=args.assets)
    except (ContractError, DatasetError, OSError):
        raise  # main() reports them: could not start
    except ValueError as exc:
        # What is left is a combination read_recordings refuses (--truth with AI4I or IMS).
        _report(exc, args)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(result, sort_keys=True) if args.json else format_report(result))
    return EXIT_OK


def _report(exc: BaseException, args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        traceback.print_exception(exc)


def _features(args: argparse.Namespace) -> int:
    from linewatch.ownmodel import feature_table
    from linewatch.spec import load_spec
    from linewatch.tables import write_table

    spec = load_spec(args.spec)
    cols = feature_table(spec, args.data_file)
    write_table(args.out, cols)
    print(f"wrote {len(cols['asset'])} windows x {len(spec.features)} features to {args.out}")
    return EXIT_OK


def _card(args: argparse.Namespace) -> int:
    from contract.card import CARD_FILE
    from linewatch.ownmodel import card_for_export, write_model_dir
    from linewatch.spec import load_spec

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        print(f"error: not replacing {args.out}: pass --overwrite, or --out DIR",
              file=sys.stderr)
        return EXIT_FAILED
    spec = load_spec(args.spec)
    card, said = card_for_export(args.model, spec, args.data, args.holdout)
    out = write_model_dir(args.out, args.model, card)
    print("\n".join(said))
    print(f"wrote {out / 'model.onnx'} and {out / CARD_FILE}")
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from linewatch.calibration import run_calibration

    print(run_calibration(args.model_dir, args.data_file, write=args.write))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linewatch", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=_RAW)
    p.add_argument("--version", action="version", version=f"linewatch {installed_version()}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log at DEBUG level; show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from agent.__main__ import DESCRIPTION as AGENT_DESCRIPTION
    from agent.__main__ import EPILOG as AGENT_EPILOG
    from agent.__main__ import add_arguments
    from aggregator.__main__ import (
        REPORT_DESCRIPTION,
        REPORT_EPILOG,
        SERVE_DESCRIPTION,
        SERVE_EPILOG,
        TOKEN_DESCRIPTION,
        TOKEN_EPILOG,
        add_report_arguments,
        add_serve_arguments,
        add_token_arguments,
    )

    a = sub.add_parser("agent", help="run a gateway agent", description=AGENT_DESCRIPTION,
                       epilog=AGENT_EPILOG, formatter_class=_RAW)
    add_arguments(a)
    a.set_defaults(func=_agent)

    g = sub.add_parser("aggregator", help="run the central aggregator (API + MQTT ingest)",
                       description=SERVE_DESCRIPTION, epilog=SERVE_EPILOG, formatter_class=_RAW)
    add_serve_arguments(g)
    g.set_defaults(func=_aggregator)

    k = sub.add_parser("token", help="create, list or revoke the aggregator's API tokens",
                       description=TOKEN_DESCRIPTION, epilog=TOKEN_EPILOG, formatter_class=_RAW)
    add_token_arguments(k)
    k.set_defaults(func=_token)

    r = sub.add_parser("report", help="write the model health report (Markdown or HTML)",
                       description=REPORT_DESCRIPTION, epilog=REPORT_EPILOG,
                       formatter_class=_RAW)
    add_report_arguments(r)
    r.set_defaults(func=_health_report)

    from linewatch.registry import DESCRIPTION as REGISTRY_DESCRIPTION
    from linewatch.registry import add_arguments as add_registry_arguments

    m = sub.add_parser("registry", help="make the signing key; publish a model version",
                       description=REGISTRY_DESCRIPTION, formatter_class=_RAW)
    add_registry_arguments(m)
    m.set_defaults(func=_registry)

    d = sub.add_parser("demo", help="embedded broker + aggregator + agents replaying FD001",
                       description=_DEMO_DESCRIPTION, epilog=_DEMO_EPILOG, formatter_class=_RAW)
    d.add_argument("-c", "--config", type=Path, default=Path("configs/demo.yaml"),
                   metavar="FILE", help="demo YAML file (default: configs/demo.yaml)")
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
    _verbose_flag(d)
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
        "calibrate", help="measure how the drift monitors behave on in-distribution data, "
        "and how far a classifier's scores are probabilities",
        description="Run the agent's drift and data-quality detectors over in-distribution "
        "recordings (the model's training data, or data from machines known to be healthy "
        "and run the same way), cross-fitted by asset, and record how far they wander: the "
        "null every agent calibrates its thresholds against, for its own false-alarm budget. "
        "Prints the thresholds for the default budget (1 false alarm per agent per 90 days, "
        "25 assets). When DATA_FILE is the training data of one of linewatch's classifiers, "
        "also rebuilds the out-of-fold scores its training validated on and measures how far "
        "they are probabilities (ECE, Brier, reliability table, and an isotonic map when it "
        "helps on held-out folds; needs the train extra). With --write, stores the "
        "calibrations in the card (reference.monitoring, calibration) and CARD.md; "
        "model.onnx and its checksum are untouched. Example: linewatch calibrate "
        "models/cmapss_fd001 models/data/cmapss_fd001/train_FD001.txt.gz --write",
        epilog=_CALIBRATE_EPILOG)
    c.add_argument("model_dir", type=Path, help="model directory (model.onnx + card.json)")
    c.add_argument("data_file", type=Path,
                   help="in-distribution recordings in the card's input format")
    c.add_argument("--write", action="store_true",
                   help="store the results in card.json (and CARD.md)")
    _verbose_flag(c)
    c.set_defaults(func=_calibrate)

    f = sub.add_parser(
        "features", help="the agent's features of a data file, as a table to train on",
        description="Window a data file and compute the features a spec lists with the "
        "agent's own code (agent/windows.py, agent/features.py), so a model trained on them "
        "sees what the gateway will feed it. Reads SPEC (YAML: input layout and channels, "
        "window, features) and DATA_FILE (CSV or Parquet laid out as input.table says, or a "
        "shipped format). Writes OUT (.csv, or .parquet with pyarrow): asset, window_end, "
        "one column per feature in spec order, and the data's labels at each window's newest "
        "sample. Example: linewatch features spec.yaml engines.csv -o features.csv",
        epilog=f"exit codes: {EXIT_OK} written; {EXIT_START} the spec or the data file is "
        "missing or unusable (one line says which field or row).")
    f.add_argument("spec", type=Path, help="the model's spec (YAML)")
    f.add_argument("data_file", type=Path, help="recorded data")
    f.add_argument("-o", "--out", type=Path, required=True, help="table to write")
    _verbose_flag(f)
    f.set_defaults(func=_features)

    k2 = sub.add_parser(
        "card", help="write the model card for an ONNX model trained elsewhere",
        description="Make a model directory (model.onnx + card.json) the agent can run from "
        "an ONNX file trained elsewhere on the rows 'linewatch features' writes. Computes the "
        "sha256 values, each feature's training range and reference statistics, the alert "
        "threshold (for target_precision on --holdout, or 1 - horizon/cap for a remaining "
        "life), the probabilities' calibration and metrics on --holdout, the monitors' "
        "calibration on --data, and self-test rows scored by onnxruntime. Accepts skl2onnx "
        "exports with or without ZipMap, onnxmltools' LightGBM and XGBoost, and a torch "
        "export with one float output; anything else gets one line saying what to change. "
        "Example: linewatch card model.onnx --spec spec.yaml --data train.csv "
        "--holdout holdout.csv --out models/mine",
        epilog=f"exit codes: {EXIT_OK} written; {EXIT_FAILED} --out is not empty (pass "
        f"--overwrite); {EXIT_START} the model, the spec or a data file is unusable (one "
        "line names the field and what to change).")
    k2.add_argument("model", type=Path, help="the ONNX file")
    k2.add_argument("--spec", type=Path, required=True, help="the model's spec (YAML)")
    k2.add_argument("--data", type=Path, required=True,
                    help="the data the model was trained on")
    k2.add_argument("--holdout", type=Path, default=None,
                    help="data it was not trained on: threshold, calibration and metrics")
    k2.add_argument("--out", type=Path, required=True, help="model directory to write")
    k2.add_argument("--overwrite", action="store_true", help="replace files in --out")
    _verbose_flag(k2)
    k2.set_defaults(func=_card)

    e = sub.add_parser("evaluate", help="score a data file with a model, print metrics",
                       description=_EVALUATE_DESCRIPTION, epilog=_EVALUATE_EPILOG,
                       formatter_class=_RAW)
    e.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="model directory with model.onnx and card.json, e.g. models/cmapss_fd001")
    e.add_argument("data_file", type=Path, metavar="DATA_FILE",
                   help="recorded data in the card's input format, e.g. "
                   "models/data/cmapss_fd001/test_FD001.txt.gz")
    e.add_argument("--truth", type=Path, default=None, metavar="RUL_FILE",
                   help="only for a C-MAPSS test file (test_*.txt), which stops before "
                   "failure: its RUL_*.txt, one integer per engine (the cycles it had left "
                   "after its last row), e.g. models/data/cmapss_fd001/RUL_FD001.txt")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--budget", default="1/90", metavar="ALARMS/DAYS",
                   help="false drift alarms allowed per agent per days, for the monitors' "
                   "thresholds (default 1/90)")
    e.add_argument("--windows-per-day", type=float, default=144.0,
                   help="windows per asset per day on the line (default 144: one a cycle of "
                   "10 minutes)")
    e.add_argument("--assets", type=int, default=None,
                   help="assets per agent (default: the file's)")
    _verbose_flag(e)
    e.set_defaults(func=_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # alembic logs every plugin it loads, at import, at INFO.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from agent.errors import AgentError, ConfigError
    from contract.errors import ContractError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        _report(exc, args)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (AgentError, ContractError, OSError, ValueError) as exc:
        # Something the arguments name is missing or unusable (model, data file). Of the
        # ValueErrors, only a data file that does not parse; numpy loads with that class.
        from agent.datasets import DatasetError

        if isinstance(exc, ValueError) and not isinstance(exc, DatasetError | ContractError):
            raise
        _report(exc, args)
        text = str(exc).strip()
        print(f"error: {text.splitlines()[0] if text else repr(exc)}", file=sys.stderr)
        return EXIT_START
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
