"""Run the aggregator under uvicorn: ``serve`` (blocking) or ``ServerThread`` (background).

Both end a failed start with a ``StartError`` whose message is one sentence naming the
``LINEWATCH_*`` setting to change, never with uvicorn's ``sys.exit(3)`` or a logged
traceback. ``serve`` checks the cheap things first (HTTP port, embedded broker port,
SQLite series file, database connection), before anything starts or logs; what can only
fail inside the app's lifespan (InfluxDB refusing, a port taken in between) is caught on
its way out of uvicorn and described the same way.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import sys
import threading
import time

import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE

from aggregator.api.app import create_app
from aggregator.db import open_engine
from aggregator.errors import (
    AggregatorError,
    BrokerError,
    SchemaError,
    SeriesError,
    UnavailableError,
)
from aggregator.exits import EXIT_CONFIG, EXIT_START
from aggregator.net import bind_problem, listen
from aggregator.settings import Settings

__all__ = ["ServerThread", "StartError", "check_database", "serve"]

logger = logging.getLogger(__name__)

_EXAMPLE = "configs/aggregator.example.env"


class StartError(AggregatorError):
    """The aggregator could not start. The message says what is wrong and what to set.

    ``setting`` names the ``LINEWATCH_*`` variable concerned (or is None); ``exit_code``
    is ``EXIT_START``, or ``EXIT_CONFIG`` for a value that can never work (a database URL
    SQLAlchemy cannot parse).
    """

    def __init__(self, message: str, *, setting: str | None, exit_code: int = EXIT_START):
        super().__init__(message)
        self.setting = setting
        self.exit_code = exit_code


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _shown_db_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _listen_http(settings: Settings) -> list[socket.socket]:
    try:
        return listen(settings.http_host, settings.http_port)
    except OSError as exc:
        raise StartError(
            bind_problem(exc, settings.http_host, settings.http_port,
                         host_key="LINEWATCH_HTTP_HOST", port_key="LINEWATCH_HTTP_PORT"),
            setting="LINEWATCH_HTTP_PORT",
        ) from exc


def _broker_problem(exc: OSError, settings: Settings) -> StartError:
    return StartError(
        "embedded MQTT broker: "
        + bind_problem(exc, settings.embedded_broker_host, settings.embedded_broker_port,
                       host_key="LINEWATCH_EMBEDDED_BROKER_HOST",
                       port_key="LINEWATCH_EMBEDDED_BROKER_PORT")
        + " (or set LINEWATCH_MQTT_URL to use a real broker)",
        setting="LINEWATCH_EMBEDDED_BROKER_PORT",
    )


def _check_broker_port(settings: Settings) -> None:
    if settings.mqtt_url is not None:
        return
    try:
        for sock in listen(settings.embedded_broker_host, settings.embedded_broker_port):
            sock.close()
    except OSError as exc:
        raise _broker_problem(exc, settings) from exc


def _check_series(settings: Settings) -> None:
    # InfluxDB is not opened here: unreachable is a warning by design (messages wait in the
    # broker), and a refusal is described when the lifespan meets it.
    if settings.influx_url is not None:
        return
    from aggregator.series.sqlite import SqliteSeriesStore

    path = settings.series_path
    try:
        SqliteSeriesStore(path).close()
    except (OSError, sqlite3.Error) as exc:
        raise StartError(
            f"cannot open the series store {str(path)!r} ({_first_line(exc)}): "
            "set LINEWATCH_SERIES_PATH to a file in a writable directory",
            setting="LINEWATCH_SERIES_PATH",
        ) from exc


def _database_problem(exc: BaseException, url: str) -> StartError:
    shown = _shown_db_url(url)
    if isinstance(exc, ArgumentError | NoSuchModuleError):
        return StartError(
            f"LINEWATCH_DB_URL={shown!r} is not a database URL ({_first_line(exc)}): "
            "use sqlite:///path/to/file.db or postgresql+psycopg://user:password@host/db",
            setting="LINEWATCH_DB_URL", exit_code=EXIT_CONFIG,
        )
    if isinstance(exc, ImportError):
        return StartError(
            f"the database driver for LINEWATCH_DB_URL={shown!r} is not installed "
            f"({_first_line(exc)}): install linewatch[aggregator] (psycopg for PostgreSQL)",
            setting="LINEWATCH_DB_URL",
        )
    cause = getattr(exc, "orig", None) or exc
    todo = ("set LINEWATCH_DB_URL to a file in a writable directory" if url.startswith("sqlite")
            else "check that the server runs and accepts the user, password and database in "
            "LINEWATCH_DB_URL")
    return StartError(f"cannot use the database {shown} ({_first_line(cause)}): {todo}",
                      setting="LINEWATCH_DB_URL")


def check_database(url: str) -> None:
    """Connect to ``url`` once, leaving the schema alone; raise ``StartError`` if that fails.

    Migrating the schema is the lifespan's job (or ``migrate``'s).
    """
    try:
        engine = open_engine(url, create=False)
    except (SQLAlchemyError, ImportError, OSError) as exc:
        raise _database_problem(exc, url) from exc
    try:
        with engine.connect():
            pass
    except (SQLAlchemyError, OSError) as exc:
        raise _database_problem(exc, url) from exc
    finally:
        engine.dispose()


def _describe(exc: BaseException | None, settings: Settings) -> StartError:
    """A lifespan failure as a ``StartError``."""
    if isinstance(exc, StartError):
        return exc
    if isinstance(exc, BrokerError) and isinstance(exc.__cause__, OSError):
        return _broker_problem(exc.__cause__, settings)
    if isinstance(exc, BrokerError):
        return StartError(
            f"{exc}: check LINEWATCH_EMBEDDED_BROKER_HOST and LINEWATCH_EMBEDDED_BROKER_PORT, "
            "or set LINEWATCH_MQTT_URL to use a real broker",
            setting="LINEWATCH_EMBEDDED_BROKER_PORT",
        )
    if isinstance(exc, SeriesError | UnavailableError) and settings.influx_url is not None:
        return StartError(
            f"InfluxDB at {settings.influx_url} refused to start the series store "
            f"({_first_line(exc)}): check LINEWATCH_INFLUX_URL, LINEWATCH_INFLUX_DATABASE, "
            "LINEWATCH_INFLUX_USERNAME and LINEWATCH_INFLUX_PASSWORD",
            setting="LINEWATCH_INFLUX_URL",
        )
    if isinstance(exc, SchemaError):
        return StartError(
            f"the database {_shown_db_url(settings.db_url)} cannot be migrated "
            f"({_first_line(exc)}): see README.md, \"Upgrading\", or set LINEWATCH_DB_URL",
            setting="LINEWATCH_DB_URL",
        )
    if isinstance(exc, SQLAlchemyError | UnavailableError):
        return _database_problem(exc, settings.db_url)
    if isinstance(exc, OSError):
        return StartError(
            f"the aggregator did not start ({_first_line(exc)}): check the paths in the "
            f"settings (LINEWATCH_SERIES_PATH, LINEWATCH_DB_URL; see {_EXAMPLE})",
            setting=None,
        )
    what = "no reason given" if exc is None else f"{type(exc).__name__}: {_first_line(exc)}"
    return StartError(f"the aggregator did not start ({what}); run with -v for the traceback",
                      setting=None)


class _StartupGuard:
    """ASGI wrapper that keeps the exception a failed lifespan startup raised.

    Starlette reports the failure to uvicorn with the formatted traceback as the message,
    which uvicorn logs at ERROR; the guard blanks that message (the caller reports the
    kept exception in one sentence, and ``-v`` shows the traceback) and logs, once the
    lifespan is up, where the API listens, as uvicorn does when it binds itself.
    """

    def __init__(self, app: ASGIApp, url: str) -> None:
        self.app = app
        self.url = url
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                # Starlette sends this from inside its except block: the exception is at hand.
                self.error = sys.exception()
                message = {**message, "message": ""}
            elif message["type"] == "lifespan.startup.complete":
                logger.info("REST API on %s (OpenAPI docs at %s/docs)", self.url, self.url)
            await send(message)

        await self.app(scope, receive, guarded_send)


def _url(host: str, sockets: list[socket.socket]) -> str:
    port = int(sockets[0].getsockname()[1])
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(settings: Settings) -> None:
    """Run the aggregator until SIGINT/SIGTERM (uvicorn handles the signals).

    Raises ``StartError`` if it cannot start. After a SIGINT, uvicorn shuts down cleanly
    and then raises ``KeyboardInterrupt``; after a SIGTERM it ends the process by SIGTERM.
    """
    sockets = _listen_http(settings)
    try:
        _check_broker_port(settings)
        _check_series(settings)
        check_database(settings.db_url)
        guard = _StartupGuard(create_app(settings), _url(settings.http_host, sockets))
        config = uvicorn.Config(
            guard, host=settings.http_host, port=settings.http_port, lifespan="on",
            log_config=None,
        )
        try:
            uvicorn.Server(config).run(sockets=sockets)
        except SystemExit as exc:
            # uvicorn's only way of saying "startup failed"; anything else is not ours.
            if exc.code != STARTUP_FAILURE:
                raise
            raise _describe(guard.error, settings) from guard.error
    finally:
        for sock in sockets:
            sock.close()


class ServerThread:
    """The aggregator in a background thread, for the demo and end-to-end tests.

    ``start()`` returns once the app's lifespan has finished starting (stores open,
    broker and subscriber started), the HTTP port accepts connections, and the subscriber
    holds its subscription (waited for up to ``ready_timeout_s``, since a fresh session
    gets nothing published before it subscribes; a broker that is down only logs a
    warning: the subscriber keeps reconnecting). With ``http_port=0`` the OS picks a port;
    read it from ``port`` / ``url`` after start. A start that fails raises ``StartError``.

    Uvicorn is given ``log_config=None`` so it leaves the process's logging alone (tests
    use ``caplog``).
    """

    def __init__(
        self, settings: Settings, *, start_timeout_s: float = 30.0, ready_timeout_s: float = 5.0
    ) -> None:
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.app = create_app(settings)
        self._guard = _StartupGuard(self.app, f"http://{settings.http_host}")
        config = uvicorn.Config(
            self._guard,
            host=settings.http_host,
            port=settings.http_port,
            lifespan="on",
            log_config=None,
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.http_port

    @property
    def url(self) -> str:
        return f"http://{self.settings.http_host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=self._sockets)
        except SystemExit:
            pass  # startup failed: start() sees the thread end and reads the guard

    def start(self) -> None:
        self._sockets = _listen_http(self.settings)
        self._guard.url = _url(self.settings.http_host, self._sockets)
        self._thread = threading.Thread(target=self._run, name="aggregator-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                self._close_sockets()
                raise _describe(self._guard.error, self.settings) from self._guard.error
            if time.monotonic() > deadline:
                self.stop()
                raise AggregatorError(f"the aggregator did not start in {self.start_timeout_s} s")
            time.sleep(0.02)
        with socket.create_connection((self.settings.http_host, self.port), timeout=5):
            pass  # started means bound and listening; this proves it
        if not self.app.state.subscriber.wait_ready(self.ready_timeout_s):
            logger.warning(
                "not subscribed to %s:%d after %.0f s; still trying",
                *self.settings.mqtt[:2], self.ready_timeout_s,
            )

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def stop(self, timeout_s: float = 30.0) -> None:
        """Run the lifespan's shutdown (subscriber, broker, stores) and end the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("aggregator thread still running after %.0f s", timeout_s)
            self._thread = None
        self._close_sockets()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
