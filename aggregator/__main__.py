"""``python -m aggregator serve [-c aggregator.env]``: the same as ``linewatch aggregator``.
``python -m aggregator migrate [-c aggregator.env]``: upgrade the SQL schema (as ``serve``
does at start), print the revision before and after, and exit; back the database up first.
``python -m aggregator token create|list|revoke [-c aggregator.env]``: the API tokens, the
same as ``linewatch token``.
``python -m aggregator report [--period 30d] [--format markdown|html] [--out FILE]``: the
model health report, the same as ``linewatch report`` and ``GET /reports/model-health``.

``linewatch aggregator`` calls ``serve_command`` here, so both commands report a bad
setting or a failed start the same way: one line per problem naming the ``LINEWATCH_*``
setting, its value and what to do, and the exit codes of ``aggregator.exits``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from aggregator.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_START
from contract.release import installed_version

if TYPE_CHECKING:  # pydantic-settings and SQLAlchemy are loaded only when needed
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from aggregator.db import ApiToken
    from aggregator.settings import Settings

__all__ = [
    "MIGRATE_DESCRIPTION",
    "MIGRATE_EPILOG",
    "REPORT_DESCRIPTION",
    "REPORT_EPILOG",
    "SERVE_DESCRIPTION",
    "SERVE_EPILOG",
    "TOKEN_DESCRIPTION",
    "TOKEN_EPILOG",
    "add_report_arguments",
    "add_serve_arguments",
    "add_token_arguments",
    "explain",
    "main",
    "migrate_command",
    "report_command",
    "serve_command",
    "token_command",
]

_EXAMPLE = "configs/aggregator.example.env"
_PREFIX = "LINEWATCH_"

SERVE_DESCRIPTION = """\
Run the central aggregator: subscribe to the agents' MQTT topics, store every scored
window as a time series, open maintenance tickets, and serve the REST API.

Reads:  LINEWATCH_* settings from the env file given with -c and from the environment
        (the environment wins); every setting is described in
        configs/aggregator.example.env. Without LINEWATCH_MQTT_URL an embedded MQTT
        broker is started; without LINEWATCH_INFLUX_URL series go to an SQLite file.
Writes: LINEWATCH_SERIES_PATH (default var/series.db) and LINEWATCH_DB_URL (default
        sqlite:///var/linewatch.db); serves http://LINEWATCH_HTTP_HOST:LINEWATCH_HTTP_PORT
        (default 127.0.0.1:8000; /docs has the OpenAPI page).

Runs until Ctrl-C or SIGTERM.

example:
  linewatch aggregator -c configs/aggregator.example.env
  LINEWATCH_HTTP_PORT=8080 python -m aggregator serve -c configs/aggregator.example.env
"""

SERVE_EPILOG = f"""\
exit codes (README.md, "Exit codes", has every command's):
  {EXIT_CONFIG}    bad settings: invalid value, unknown key, missing or unreadable env file
  {EXIT_START}    could not start: a port in use, the database or the series store unusable
  {EXIT_INTERRUPTED}  stopped by Ctrl-C, after a clean shutdown
  143  stopped by SIGTERM, after a clean shutdown (the process ends by the signal, as
       service managers expect)
"""


MIGRATE_DESCRIPTION = """\
Upgrade the aggregator's SQL schema to this release's newest revision, print the revision
before and after, and exit. serve does the same at every start; run migrate by hand, e.g.
before starting several replicas. Back the database up first: migrations move data.

Reads:  LINEWATCH_DB_URL (from the env file given with -c, or the environment).
Writes: the database's schema and its migration history (alembic_version).

example:
  python -m aggregator migrate -c configs/aggregator.example.env
"""

MIGRATE_EPILOG = f"""\
exit codes (README.md, "Exit codes", has every command's):
  {EXIT_OK}    the schema is at the newest revision
  {EXIT_FAILED}    the schema cannot be migrated (unknown tables, or a newer release's)
  {EXIT_CONFIG}    bad settings: invalid value, unknown key, missing or unreadable env file
  {EXIT_START}    the database cannot be reached or opened
"""

TOKEN_DESCRIPTION = """\
Manage the REST API's tokens. Every route but /healthz, /readyz and the docs needs one,
sent as 'Authorization: Bearer <token>'. Scopes: read (every GET), write (also change
tickets and report failures), admin (also manage tokens, also with POST/GET/DELETE /tokens).

  create --scope read|write|admin --name NAME
         prints the new token on standard output, once: it is stored only as a hash.
         NAME (a letter first, then letters, digits and . _ @ + -) is recorded as the
         actor of every change the token makes.
  list   every token: id, name, scope, prefix, when created and by whom, last used,
         revoked; never a secret (--json: one JSON array).
  revoke NAME|ID
         the token is refused from its next request on.

Reads:  LINEWATCH_DB_URL (from the env file given with -c, or the environment): the
        aggregator's own database, migrated to this release's schema first if needed.
Writes: the tokens, and an entry in the audit log for each one created or revoked.

example:
  linewatch token create --scope admin --name alice -c configs/aggregator.example.env
  python -m aggregator token revoke alice -c configs/aggregator.example.env
"""

TOKEN_EPILOG = f"""\
exit codes (README.md, "Exit codes", has every command's):
  {EXIT_OK}    done
  {EXIT_FAILED}    refused: the name is taken by an active token, or no such token to revoke
  {EXIT_CONFIG}    bad arguments or settings (a name outside the rules, a bad env file)
  {EXIT_START}    the database cannot be reached, opened or migrated
"""

REPORT_DESCRIPTION = """\
The model health report, for people who want a yes or a no: does the model still work,
are its alerts right, does it catch the failures, how much warning it gives, what it
costs, whether it drifts, what to do next. The same figures, from the same computation,
as GET /health/models and GET /reports/model-health.

Reads:  the aggregator's SQL database (LINEWATCH_DB_URL: tickets, their outcomes, reported
        failures, drift conditions) and its series store (LINEWATCH_INFLUX_URL or
        LINEWATCH_SERIES_PATH: which assets were scored; without it, no false alarms per
        machine), from the env file given with -c or the environment; LINEWATCH_TARGET_F1,
        LINEWATCH_MODELS_DIR, LINEWATCH_VISIT_COST and LINEWATCH_CURRENCY. Changes
        nothing: a database this release has not migrated is refused.
Writes: the report (Markdown by default) to standard output, or to --out FILE.

example:
  linewatch report --period 30d -c configs/aggregator.example.env
  linewatch report --period 12w --format html --out health.html -c configs/aggregator.example.env
"""

REPORT_EPILOG = f"""\
exit codes (README.md, "Exit codes", has every command's):
  {EXIT_OK}    report written
  {EXIT_CONFIG}    bad arguments or settings (a period or time that does not parse, a bad env file)
  {EXIT_START}    the database cannot be reached, has no aggregator schema, or is not migrated
       to this release; or --out cannot be written
"""

# For the top level: every subcommand's own --help lists what its codes mean for it.
_EPILOG = f"""\
exit codes, the same for every subcommand (README.md, "Exit codes", has the table):
  {EXIT_OK}    done                      {EXIT_CONFIG}    bad arguments or settings
  {EXIT_START}    could not start           {EXIT_INTERRUPTED}  stopped by Ctrl-C
"""



def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve``, shared with ``linewatch aggregator``."""
    parser.add_argument("-c", "--config", type=Path, default=None, metavar="FILE",
                        help="env file with LINEWATCH_* settings (the environment also works, "
                        "and wins over the file)")
    # SUPPRESS: given after the subcommand, -v must not reset one given before it.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at DEBUG level; show the traceback of a failed start")


def _where(key: str, path: Path | None) -> str:
    if path is None or key.upper() in (k.upper() for k in os.environ):
        return "the environment"
    return str(path)


def _known_keys() -> list[str]:
    from aggregator.settings import Settings

    return [_PREFIX + name.upper() for name in Settings.model_fields]


def explain(exc: ValidationError, path: Path | None) -> list[str]:
    """One line per invalid setting: its name, value (passwords masked), what is wrong,
    and what to do."""
    lines = []
    for error in exc.errors():
        msg = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            # A rule across settings; its message names them.
            lines.append(f"error: {msg} (in {path or 'the environment'})")
            continue
        name = str(error["loc"][0]).upper()
        key = name if name.startswith(_PREFIX) or error["type"] == "extra_forbidden" \
            else _PREFIX + name
        value = error.get("input")
        shown = "'***'" if "PASSWORD" in key else repr(value)
        where = _where(key, path)
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, _known_keys(), n=1)
            todo = (f"did you mean {close[0]}?" if close
                    else f"remove it (every setting is listed in {_EXAMPLE})")
            lines.append(f"error: {key}={shown} in {where}: unknown setting; {todo}")
        elif value == "":
            lines.append(f"error: {key} is empty in {where}: {msg}; give it a value, or remove "
                         "the line to use the default")
        else:
            lines.append(f"error: {key}={shown} in {where}: {msg}; fix it in {where}")
    return lines


def _load(args: argparse.Namespace) -> Settings | None:
    """The settings, or None after saying on stderr what is wrong with them."""
    from aggregator.settings import load_settings

    path: Path | None = args.config
    try:
        return load_settings(path)
    except ValidationError as exc:
        sys.stderr.write("".join(line + "\n" for line in explain(exc, path)))
    except FileNotFoundError as exc:
        sys.stderr.write(f"error: {exc}: check the -c path (an example: {_EXAMPLE})\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(f"error: cannot read settings file {str(path)!r} ({reason}): make it "
                         "a readable UTF-8 text file of LINEWATCH_KEY=value lines\n")
    return None


def _log(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO ("HTTP Request: POST http://.../write ...": one line
    # per batch written to InfluxDB) and httpcore every connection step at DEBUG; their
    # failures reach us as exceptions, told by the series store. Even with -v.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if not verbose:
        # At INFO, amqtt logs every connection and state change and alembic every plugin it
        # loads (at import); their warnings are what matter. Set before the imports.
        for noisy in ("amqtt", "transitions", "alembic.runtime.plugins"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _checked_engine(settings: Settings, verbose: bool) -> Engine | int:
    """The SQL engine, once the database answers; else the error said and its exit code."""
    from aggregator.db import open_engine
    from aggregator.server import StartError, check_database

    try:
        check_database(settings.db_url)
    except StartError as exc:
        if verbose:
            traceback.print_exception(exc)
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    return open_engine(settings.db_url, create=False)


def serve_command(args: argparse.Namespace) -> int:
    """Load the settings and run the aggregator; return the exit code (``aggregator.exits``).

    Configures logging unless the caller already did.
    """
    verbose = bool(getattr(args, "verbose", False))
    settings = _load(args)
    if settings is None:
        return EXIT_CONFIG
    _log(verbose)
    # Imported only now: FastAPI, SQLAlchemy and uvicorn take a second or two to load, and a
    # bad setting should be reported at once.
    from aggregator.server import StartError, serve

    try:
        serve(settings)
    except StartError as exc:
        if verbose:
            traceback.print_exception(exc)
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it handled once it has shut down cleanly.
        return EXIT_INTERRUPTED
    return EXIT_OK


def migrate_command(args: argparse.Namespace) -> int:
    """Upgrade the SQL schema and print the revision before and after; return the exit code."""
    verbose = bool(getattr(args, "verbose", False))
    settings = _load(args)
    if settings is None:
        return EXIT_CONFIG
    _log(verbose)
    from aggregator import migrations
    from aggregator.errors import SchemaError

    engine = _checked_engine(settings, verbose)
    if isinstance(engine, int):
        return engine
    try:
        sys.stdout.write(f"database: {engine.url.render_as_string(hide_password=True)}\n")
        result = migrations.upgrade(engine)
    except SchemaError as exc:
        if verbose:
            traceback.print_exception(exc)
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAILED
    finally:
        engine.dispose()
    before = result.before or (
        f"none (no history; tables of {result.stamped}, now recorded)" if result.stamped
        else "none (empty)"
    )
    sys.stdout.write(f"revision before: {before}\nrevision after:  {result.after}\n")
    return EXIT_OK


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``create``, ``list`` and ``revoke`` subcommands, shared with ``linewatch token``."""
    actions = parser.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token; prints it once",
                                description="Create an API token and print it, once.")
    create.add_argument("--scope", required=True, choices=("read", "write", "admin"),
                        help="read: every GET; write: also change tickets; admin: also tokens")
    create.add_argument("--name", required=True,
                        help="who or what uses it; recorded as the actor of its changes")
    add_serve_arguments(create)
    listing = actions.add_parser("list", help="list the tokens (never a secret)",
                                 description="List every API token; never a secret.")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    add_serve_arguments(listing)
    revoke = actions.add_parser("revoke", help="revoke a token by name or id",
                                description="Revoke an API token: refused from now on.")
    revoke.add_argument("token", metavar="NAME|ID",
                        help="the name of an active token, or a token's id (token list)")
    add_serve_arguments(revoke)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _token_rows(rows: list[ApiToken]) -> str:
    header = ("id", "name", "scope", "prefix", "created (UTC)", "created by", "last used",
              "revoked")
    table = [header] + [
        (str(r.id), r.name, r.scope, f"{r.prefix}...", _when(r.created_at), r.created_by,
         _when(r.last_used_at), _when(r.revoked_at))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                   + "\n" for row in table)


def _token_json(row: ApiToken) -> dict[str, object]:
    return {"id": row.id, "name": row.name, "scope": row.scope, "prefix": row.prefix,
            "created_at": row.created_at.isoformat(), "created_by": row.created_by,
            "last_used_at": None if row.last_used_at is None else row.last_used_at.isoformat(),
            "revoked_at": None if row.revoked_at is None else row.revoked_at.isoformat()}


def _token_action(session: Session, args: argparse.Namespace) -> int:
    from aggregator import audit, auth

    if args.token_action == "create":
        row, secret = auth.create_token(session, args.name, args.scope, audit.cli_actor())
        session.commit()
        # The token alone on stdout (for a script to capture); the rest on stderr.
        sys.stdout.write(secret + "\n")
        sys.stdout.flush()
        sys.stderr.write(
            f"created {row.scope} token {row.id} {row.name!r} ({row.prefix}...). It is shown "
            "only this once: keep it safe. Send it as 'Authorization: Bearer <token>'.\n")
    elif args.token_action == "list":
        rows = auth.list_tokens(session)
        if args.json:
            sys.stdout.write(json.dumps([_token_json(r) for r in rows]) + "\n")
        elif rows:
            sys.stdout.write(_token_rows(rows))
        else:
            sys.stderr.write("no API token yet: create one with `linewatch token create "
                             "--scope admin --name you`\n")
    else:
        row, now = auth.revoke_token(session, args.token, audit.cli_actor())
        session.commit()
        if now:
            sys.stdout.write(f"revoked token {row.id} {row.name!r} ({row.prefix}...)\n")
        else:
            sys.stdout.write(f"token {row.id} {row.name!r} ({row.prefix}...) was already "
                             f"revoked at {_when(row.revoked_at)} UTC\n")
    return EXIT_OK


def token_command(args: argparse.Namespace) -> int:
    """``token create|list|revoke`` on the database of the settings; return the exit code."""
    verbose = bool(getattr(args, "verbose", False))
    if args.token_action == "create":
        from aggregator.auth import NAME_PATTERN

        if not re.fullmatch(NAME_PATTERN, args.name):
            sys.stderr.write(f"error: --name {args.name!r}: 1 to 64 characters, a letter "
                             "first, then letters, digits and . _ @ + -\n")
            return EXIT_CONFIG
    settings = _load(args)
    if settings is None:
        return EXIT_CONFIG
    _log(verbose)
    # A command that prints its answer: the libraries' INFO lines (alembic's every step)
    # would bury it. A schema upgrade is said in one line below.
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    from aggregator import migrations
    from aggregator.auth import AuthError
    from aggregator.db import open_sessions
    from aggregator.errors import SchemaError

    engine = _checked_engine(settings, verbose)
    if isinstance(engine, int):
        return engine
    try:
        result = migrations.upgrade(engine)
    except SchemaError as exc:
        engine.dispose()
        if verbose:
            traceback.print_exception(exc)
        sys.stderr.write(f"error: the database cannot be migrated ({exc}): see README.md, "
                         "\"Upgrading\", or set LINEWATCH_DB_URL\n")
        return EXIT_START
    if result.before != result.after:
        sys.stderr.write(f"database schema upgraded from {result.before or 'empty'} to "
                         f"{result.after}\n")
    try:
        with open_sessions(engine)() as session:
            return _token_action(session, args)
    except AuthError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAILED
    finally:
        engine.dispose()


def _period(text: str) -> str:
    from aggregator.modelhealth import parse_period

    try:
        parse_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _until(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: an ISO-8601 date-time with a time zone, e.g. 2026-03-01T00:00:00Z"
        ) from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z or +HH:MM")
    return value


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``report``, shared with ``linewatch report``."""
    parser.add_argument("--period", type=_period, default="30d", metavar="LENGTH",
                        help="how long the period is, ending at --until: a whole number and "
                        "h, d or w, e.g. 30d (the default), 12w, 36h")
    parser.add_argument("--until", type=_until, default=None, metavar="TIME",
                        help="when the period ends (excluded), ISO-8601 with a time zone; "
                        "default: now")
    parser.add_argument("--format", choices=("markdown", "html"), default="markdown",
                        help="markdown (the default) or html (one self-contained page)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write the report to FILE instead of standard output")
    add_serve_arguments(parser)


def report_command(args: argparse.Namespace) -> int:
    """Write the model health report of the settings' stores; return the exit code."""
    verbose = bool(getattr(args, "verbose", False))
    settings = _load(args)
    if settings is None:
        return EXIT_CONFIG
    _log(verbose)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    from sqlalchemy.engine import make_url

    from aggregator import migrations
    from aggregator.db import open_sessions
    from aggregator.modelhealth import model_health, parse_period, period_ending
    from aggregator.report import render_html, render_markdown
    from aggregator.series import open_series

    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or ":memory:").exists():
        # Connecting would create the file: a report changes nothing.
        sys.stderr.write(f"error: no database file at {url.database}: check LINEWATCH_DB_URL\n")
        return EXIT_START
    engine = _checked_engine(settings, verbose)
    if isinstance(engine, int):
        return engine
    try:
        revision, head = migrations.current_revision(engine), migrations.head_revision()
        if revision != head:
            sys.stderr.write(
                "error: " + (f"the database at {settings.db_url} has no aggregator schema: "
                             "check LINEWATCH_DB_URL" if revision is None else
                             f"the database is at schema revision {revision}, this release "
                             f"reads {head}: start this release's aggregator, or run "
                             "`python -m aggregator migrate`, first") + "\n")
            return EXIT_START
        since, until = period_ending(args.until, parse_period(args.period))
        series = None
        if settings.influx_url is None and not settings.series_path.exists():
            sys.stderr.write(f"warning: no series store at {settings.series_path} (check "
                             "LINEWATCH_SERIES_PATH): the report counts no assets, so no "
                             "false alarms per machine\n")
        else:
            series = open_series(settings)
        try:
            with open_sessions(engine)() as session:
                figures = model_health(session, series, settings, since=since, until=until)
        finally:
            if series is not None:
                series.close()
    finally:
        engine.dispose()
    text = render_html(figures) if args.format == "html" else render_markdown(figures)
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"error: cannot write {args.out}: {exc.strerror or exc}\n")
        return EXIT_START
    sys.stderr.write(f"wrote the model health report to {args.out}\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aggregator",
        description="The linewatch aggregator; 'linewatch aggregator' runs the same code.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"linewatch {installed_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level; show the traceback of a failed start")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve", help="run the aggregator (REST API + MQTT ingest)",
        description=SERVE_DESCRIPTION, epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(serve_cmd)
    serve_cmd.set_defaults(func=serve_command)
    migrate_cmd = commands.add_parser(
        "migrate", help="upgrade the SQL schema, then exit", description=MIGRATE_DESCRIPTION,
        epilog=MIGRATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(migrate_cmd)
    migrate_cmd.set_defaults(func=migrate_command)
    token_cmd = commands.add_parser(
        "token", help="create, list or revoke API tokens", description=TOKEN_DESCRIPTION,
        epilog=TOKEN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_token_arguments(token_cmd)
    token_cmd.set_defaults(func=token_command)
    report_cmd = commands.add_parser(
        "report", help="write the model health report", description=REPORT_DESCRIPTION,
        epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_report_arguments(report_cmd)
    report_cmd.set_defaults(func=report_command)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
