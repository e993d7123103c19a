"""``python -m aggregator serve [-c aggregator.env]``, ``python -m aggregator migrate [-c ...]``.

``migrate`` upgrades the SQL schema (as ``serve`` does at start) and prints the revision
before and after; back the database up first.

Exit codes: 0 after a clean shutdown (or migration), 1 when the SQL schema cannot be
migrated, 2 for unusable settings (each bad key is printed with its value, as
``LINEWATCH_<KEY>``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from aggregator import migrations
from aggregator.db import open_engine
from aggregator.errors import SchemaError
from aggregator.server import serve
from aggregator.settings import load_settings


def _explain(exc: ValidationError) -> str:
    lines = ["invalid aggregator settings:"]
    for error in exc.errors():
        loc = error["loc"]
        key = "LINEWATCH_" + "_".join(str(p) for p in loc).upper() if loc else "settings"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {error['msg']}{shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aggregator")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the aggregator (REST API + ingest)")
    serve_cmd.add_argument("-c", "--config", help="env file with LINEWATCH_* settings")
    migrate_cmd = commands.add_parser("migrate", help="upgrade the SQL schema, then exit")
    migrate_cmd.add_argument("-c", "--config", help="env file with LINEWATCH_* settings")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except ValidationError as exc:
        sys.stderr.write(_explain(exc))
        return 2
    except FileNotFoundError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # amqtt logs every connection and task at INFO; its warnings are what matter here.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "migrate":
        return _migrate(settings.db_url)
    serve(settings)
    return 0


def _migrate(db_url: str) -> int:
    engine = open_engine(db_url, create=False)
    try:
        sys.stdout.write(f"database: {engine.url.render_as_string(hide_password=True)}\n")
        result = migrations.upgrade(engine)
    except SchemaError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    finally:
        engine.dispose()
    before = result.before or (
        f"none (no history; tables of {result.stamped}, now recorded)" if result.stamped
        else "none (empty)"
    )
    sys.stdout.write(f"revision before: {before}\nrevision after:  {result.after}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
