"""Alembic's environment for the aggregator's revisions: alembic runs this file.

``aggregator.migrations`` passes a connection in ``config.attributes["connection"]``; the
revisions run on it, inside the caller's transaction (and its lock). Without one (the
``alembic`` command line, used to write the next revision: see README.md here) it opens
the database named by ``-x url=...``, else the aggregator's own ``LINEWATCH_DB_URL``.

Autogenerate compares against ``aggregator.db.Base.metadata`` and writes batch operations
(SQLite rebuilds a table for most ALTERs), with ``UTCDateTime`` frozen to the plain
``sa.DateTime(timezone=True)`` it stores: a revision must not change when the models do.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from aggregator.db import Base, UTCDateTime, open_engine
from aggregator.settings import load_settings

__all__: list[str] = []


def _render_item(type_: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        # Revision 0002 reads the live primary key's name; there is none to read offline.
        raise RuntimeError("offline (--sql) migrations are not supported")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or load_settings().db_url
    engine = open_engine(url, create=False)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


# Alembic loads this file by path under a name of its own; imported as a module of the
# package (pytest's doctest collection, the exported-members test) it must do nothing.
if __name__ != "aggregator.migrations.env":
    _main()
