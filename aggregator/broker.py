"""Embedded MQTT broker (amqtt) for the demo and single-line installs.

amqtt is an asyncio broker; the aggregator is threaded (paho, uvicorn), so the broker gets
its own thread and its own event loop, and ``start()`` / ``stop()`` are blocking calls.

Known limits (the design's "known facts", checked on this machine): amqtt speaks
MQTT 3.1.1 only, has no ``$share`` subscriptions, and carries a few thousand QoS 1
messages/s; agents therefore batch many items per message. Every session is anonymous
here, and amqtt drops anonymous sessions at disconnect, so this broker never queues
messages for an absent subscriber: a plant that needs that runs Mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

from aggregator.errors import BrokerError
from aggregator.net import listen

__all__ = ["EmbeddedBroker"]

logger = logging.getLogger(__name__)


class _Snapshots(dict[str, Any]):
    """amqtt's table of subscriptions, iterated over a copy. amqtt (0.12) loops over the
    live table with awaits inside: when a client connects (its retained messages), and for
    every message it routes. A subscription made meanwhile by another client changes the
    table's size, the loop raises, and amqtt drops the connecting client (at the demo's
    start, four agents connecting and subscribing at once) or the message."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().__iter__()))

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return list(super().items())


class EmbeddedBroker:
    """amqtt broker on ``host:port``, running in a background thread.

    Parameters
    ----------
    host, port
        TCP listener address. Anonymous clients are accepted.
    start_timeout_s
        Bound on how long ``start()`` waits for the listener to accept connections.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, start_timeout_s: float = 10.0):
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        # Every connection the listener accepted: amqtt closes the sessions it knows of, but
        # not one cut off before its CONNECT, whose socket then outlives the loop.
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _config(self) -> dict[str, Any]:
        # Plugins listed explicitly: amqtt's defaults add $SYS publishing (and a psutil
        # deprecation warning) and packet logging we do not want; an explicit dict also
        # avoids the deprecated entry-point plugin loading.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    def start(self) -> None:
        """Start the broker and return once its port accepts TCP connections."""
        if self.running:
            return
        # amqtt logs a failed bind as a traceback at ERROR and hides the OSError behind its
        # own exception: probe the port first, so the caller gets the OSError as the cause.
        try:
            for sock in listen(self.host, self.port):
                sock.close()
        except OSError as exc:
            raise BrokerError(
                f"embedded broker on {self.host}:{self.port} did not start: "
                f"{exc.strerror or exc}"
            ) from exc
        self._started.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(self.start_timeout_s) or self._error is not None:
            self._thread.join(timeout=1.0)
            raise BrokerError(
                f"embedded broker on {self.host}:{self.port} did not start: {self._error}"
            ) from self._error
        # No TCP probe here: amqtt's Broker.start() returns after asyncio.start_server() has
        # bound and is listening, so the port accepts connections already; and a probe that
        # connects and sends nothing makes amqtt log an error and leak the socket.
        logger.info("embedded MQTT broker listening on %s:%d", self.host, self.port)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_broker())
        except Exception as exc:  # reported to start() through _error
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start_broker(self) -> None:
        # amqtt's Broker takes the running loop in its constructor, so build it here.
        from amqtt.broker import Broker  # type: ignore[import-untyped]

        broker = Broker(self._config())
        broker._subscriptions = _Snapshots()  # before any client: amqtt's starts empty
        accept = broker.stream_connected
        writers = self._writers

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          listener_name: str) -> None:
            writers.add(writer)
            try:
                await accept(reader, writer, listener_name)
            finally:
                writers.discard(writer)
                writer.close()

        # Looked up on the instance when start() builds the listener's callback.
        broker.stream_connected = tracked
        self._broker = broker
        await broker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every client session and the listener, then end the thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            self._thread = None
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout_s)
        except Exception as exc:
            logger.warning("embedded broker did not shut down cleanly: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        if thread.is_alive():
            raise BrokerError("embedded broker thread did not end")
        self._thread = None
        logger.info("embedded MQTT broker stopped")

    async def _shutdown(self) -> None:
        await self._broker.shutdown()
        # Let handler tasks cancelled by the shutdown finish before the loop stops.
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        # One loop round lets the transports' close callbacks run before the loop stops.
        await asyncio.sleep(0)
