"""Run the aggregator under uvicorn: ``serve`` (blocking) or ``ServerThread`` (background)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from aggregator.api.app import create_app
from aggregator.errors import AggregatorError
from aggregator.settings import Settings

__all__ = ["ServerThread", "serve"]

logger = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Run the aggregator until SIGINT/SIGTERM (uvicorn handles the signals)."""
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port)


class ServerThread:
    """The aggregator in a background thread, for the demo and end-to-end tests.

    ``start()`` returns once the app's lifespan has finished starting (stores open,
    broker and subscriber started), the HTTP port accepts connections, and the subscriber
    holds its subscription (waited for up to ``ready_timeout_s``, since a fresh session
    gets nothing published before it subscribes; a broker that is down only logs a
    warning: the subscriber keeps reconnecting). With ``http_port=0`` the OS picks a port;
    read it from ``port`` / ``url`` after start.

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
        config = uvicorn.Config(
            self.app,
            host=settings.http_host,
            port=settings.http_port,
            lifespan="on",
            log_config=None,
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.http_port

    @property
    def url(self) -> str:
        return f"http://{self.settings.http_host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.run, name="aggregator-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise AggregatorError("the aggregator failed to start (see the log)")
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

    def stop(self, timeout_s: float = 30.0) -> None:
        """Run the lifespan's shutdown (subscriber, broker, stores) and end the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("aggregator thread still running after %.0f s", timeout_s)
            self._thread = None

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
