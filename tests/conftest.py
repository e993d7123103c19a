"""Shared fixtures: our own Mosquitto, InfluxDB 1.x and PostgreSQL database per run.

The servers are real processes on free loopback ports (see ``tests/servers.py``); no test
touches a system-wide service. A missing server is a FAILURE, never a skip: a green run must
mean every backend was exercised. ``bash scripts/ensure-servers.sh`` installs them.

Fixtures:
    mosquitto      function  a started ``MosquittoServer``; stop()/start()/restart() freely
    influxd        session   the one ``InfluxServer`` of the run
    influxdb       function  ``InfluxDatabase(url, database, server)``, a fresh database
    postgres_url   session   SQLAlchemy URL of a fresh PostgreSQL database
    victoria_metrics  function  a started, empty ``VictoriaMetricsServer`` (InfluxDB v2
                   write API); stop()/start() freely
    fail_on_thread_exception  autouse: an exception escaping any thread fails the test
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

# `servers` is tests/servers.py, imported under that name: pytest's default "prepend" import
# mode puts tests/ on sys.path for this conftest, and --doctest-modules imports the file under
# the same name. The explicit insert keeps `from servers import ...` working in test modules
# under --import-mode=importlib too.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from servers import (
    InfluxDatabase,
    InfluxServer,
    MosquittoServer,
    ServerError,
    VictoriaMetricsServer,
)

S = TypeVar("S", MosquittoServer, InfluxServer, VictoriaMetricsServer)

PG_ADMIN_URL_ENV = "LINEWATCH_TEST_PG_ADMIN_URL"
PG_ADMIN_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def _start(server_class: type[S]) -> S:
    """Create and start a server; a missing binary or a failed start fails the test."""
    server = None
    try:
        server = server_class()
        server.start()
    except ServerError as exc:
        if server is not None:
            server.close()
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture
def mosquitto() -> Iterator[MosquittoServer]:
    """A fresh broker for this test, with persistence on; stopped and deleted afterwards."""
    server = _start(MosquittoServer)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def influxd() -> Iterator[InfluxServer]:
    """One influxd for the whole run; each test gets its own database from `influxdb`."""
    server = _start(InfluxServer)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def influxdb(influxd: InfluxServer) -> Iterator[InfluxDatabase]:
    """A fresh, empty database on the session's influxd.

    A test may ``server.stop()`` / ``server.start()`` to inject faults; the server is
    started again here at teardown if the test left it stopped.
    """
    influxd.start()  # an earlier test may have failed between its stop() and start()
    name = f"test_{uuid.uuid4().hex[:12]}"
    influxd.create_database(name)
    yield InfluxDatabase(url=influxd.url, database=name, server=influxd)
    influxd.start()
    influxd.drop_database(name)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+psycopg://...``) of a fresh database, dropped at the end.

    The admin URL defaults to the local server and is overridden by
    ``LINEWATCH_TEST_PG_ADMIN_URL``.
    """
    import psycopg

    admin_url = os.environ.get(PG_ADMIN_URL_ENV, PG_ADMIN_URL_DEFAULT)
    # psycopg wants a libpq URL; accept a SQLAlchemy-style one as well.
    admin_url = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"linewatch_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {admin_url} ({exc}); start it, or point "
            f"{PG_ADMIN_URL_ENV} at an admin URL (Debian package `postgresql`)",
            pytrace=False,
        )
    parts = urllib.parse.urlsplit(admin_url)
    yield urllib.parse.urlunsplit(
        parts._replace(scheme="postgresql+psycopg", path=f"/{name}", query="")
    )
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        # WITH (FORCE), PostgreSQL >= 13: an engine a test forgot to dispose must not
        # keep the database alive.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def fail_on_thread_exception() -> Iterator[None]:
    """Fail the test if an exception escaped any thread while it ran.

    paho runs callbacks in its network thread, where an exception would otherwise only be
    printed (or, with ``suppress_exceptions``, logged) while the test goes on green. This is
    Home Assistant's ``fail_on_log_exception`` idea, applied to ``threading.excepthook``.
    """
    escaped: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:  # threading ignores it too
            return
        name = args.thread.name if args.thread is not None else "<unknown>"
        escaped.append(
            f"Exception in thread {name}:\n"
            + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        )

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
    if escaped:
        pytest.fail("\n".join(escaped), pytrace=False)


@pytest.fixture
def victoria_metrics() -> Iterator[VictoriaMetricsServer]:
    """A fresh VictoriaMetrics for this test (it has no databases to keep tests apart; it
    starts in well under a second); stopped and deleted afterwards."""
    server = _start(VictoriaMetricsServer)
    try:
        yield server
    finally:
        server.close()
