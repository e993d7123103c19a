"""SQL schema migrations (Alembic) for the aggregator, and the code that runs them.

``upgrade(engine)`` brings a database to the newest revision (``head``):
``aggregator.db.open_engine`` calls it at every start, ``python -m aggregator migrate``
on demand. Alembic is configured here in code, with no alembic.ini: the revisions are the
``versions/`` beside this file and run on the caller's engine, all in one transaction, so
an upgrade that fails halfway leaves the database as it was (PostgreSQL and SQLite both
roll back DDL).

Databases made before there were migrations (``create_all``) have the tables but no
``alembic_version``. Their schema is one of ``UNVERSIONED``: the one whose tables have the
same columns, primary keys and indexes (built once per process on a scratch in-memory
SQLite). It is stamped with that revision, then upgraded. A schema that matches none is
refused with ``SchemaError`` rather than guessed at; so is a revision this release does
not know (the database was upgraded by a newer aggregator).

Replicas starting together against one PostgreSQL: the upgrade takes a transaction-level
advisory lock first, so the second replica waits, then finds the database at head and
does nothing. On SQLite the transaction's ``BEGIN IMMEDIATE`` (``aggregator.db``) takes
the database's write lock and serialises them the same way (its busy timeout, 10 s, bounds
the wait). Within one process a lock does the same for threads, since Alembic's ``op`` is
a module-level global.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from aggregator.errors import SchemaError

__all__ = [
    "UNVERSIONED",
    "SchemaUpgrade",
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade",
]

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"
# The revisions whose schema a release before migrations could have made with create_all,
# newest first: 0001 up to commit a232ddb, 0002 from it until migrations arrived. Every
# later revision is reached by migrating, which records it, so this list never grows.
UNVERSIONED = ("0002", "0001")
# pg_advisory_xact_lock key shared by every aggregator: "lwschema" as a positive bigint.
_PG_LOCK_KEY = int.from_bytes(b"lwschema", "big")

# Alembic's ``op`` and ``context`` are module-level proxies: two threads of one process
# must not run revisions at once, even on different databases.
_IN_PROCESS = threading.Lock()

# table -> (columns, primary key, indexes as (name, columns, unique))
_Shape = dict[str, tuple[frozenset[str], tuple[str, ...], frozenset[tuple[str, str, bool]]]]


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """What ``upgrade`` did: revisions before and after, and the stamp of a database that
    had none (``None`` when it already had its history, or was empty)."""

    before: str | None
    stamped: str | None
    after: str | None


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration of the aggregator's revisions, running on ``connection``."""
    config = Config()
    # configparser would read a '%' in the install path as interpolation.
    config.set_main_option("script_location", str(HERE).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this release knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its revisions
        raise SchemaError("no migration revisions found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's recorded revision; ``None`` when it has no migration history."""
    with engine.connect() as conn:
        return _current(conn)


def upgrade(engine: Engine) -> SchemaUpgrade:
    """Bring the database to ``head``, stamping a pre-migrations database first.

    Raises ``SchemaError`` for a schema it cannot place (see the module docstring).
    """
    with _IN_PROCESS, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        before = _current(conn)
        stamped = None
        if before is None:
            stamped = _unversioned_revision(conn)
            if stamped is not None:
                logger.info("SQL schema has no migration history; it is revision %s", stamped)
                command.stamp(alembic_config(conn), stamped)
        elif before not in _known_revisions():
            raise SchemaError(
                f"the SQL database is at schema revision {before!r}, which this release "
                f"does not know (newest known: {head_revision()}): it was upgraded by a "
                "newer aggregator; run that release, or restore a backup"
            )
        command.upgrade(alembic_config(conn), "head")
        after = _current(conn)
    if after != (stamped or before):
        logger.info("SQL schema upgraded from %s to %s", stamped or before or "empty", after)
    return SchemaUpgrade(before=before, stamped=stamped, after=after)


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def _unversioned_revision(conn: Connection) -> str | None:
    """The revision an unversioned database's tables match; None if it has none of ours."""
    tables = set(inspect(conn).get_table_names()) - {VERSION_TABLE}
    if not tables:
        return None
    shapes = {rev: _revision_shape(rev) for rev in UNVERSIONED}
    ours = set().union(*shapes.values())
    if not tables & ours:
        return None  # only other applications' tables: ours start from the first revision
    found = _shape(conn, tables & ours)
    for rev, shape in shapes.items():
        if found == shape:
            return rev
    nearest = UNVERSIONED[0]
    differ = sorted(t for t in ours if found.get(t) != shapes[nearest].get(t))
    raise SchemaError(
        "the SQL database has aggregator tables but no migration history, and they match "
        f"no earlier release's schema (revisions {', '.join(UNVERSIONED)}); tables that "
        f"differ from revision {nearest}: {', '.join(differ)}. Restore a backup, or bring "
        f"the tables to a revision's schema by hand and record it in {VERSION_TABLE}"
    )


@functools.cache
def _revision_shape(revision: str) -> _Shape:
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
            return _shape(conn, set(inspect(conn).get_table_names()) - {VERSION_TABLE})
    except CommandError as exc:  # pragma: no cover - UNVERSIONED names shipped revisions
        raise SchemaError(f"revision {revision}: {exc}") from exc
    finally:
        engine.dispose()


def _shape(conn: Connection, tables: set[str]) -> _Shape:
    """What two backends agree on when they reflect a table: names, keys, indexes."""
    inspector = inspect(conn)
    shape: _Shape = {}
    for table in tables:
        columns = frozenset(c["name"] for c in inspector.get_columns(table))
        primary_key = tuple(inspector.get_pk_constraint(table)["constrained_columns"])
        indexes = frozenset(
            (str(i["name"]), ",".join(str(c) for c in i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        )
        shape[table] = (columns, primary_key, indexes)
    return shape
