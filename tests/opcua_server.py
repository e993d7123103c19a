"""A real asyncua OPC UA server for the OPC UA source's tests, run in the test's process on
an event loop of its own thread (building asyncua's address space takes seconds; stopping
and starting the server again does not).

It serves one variable per asset and channel, node id ``ns=2;s=<asset>.<channel>``, at
``url`` (opc.tcp://127.0.0.1:<free port>/linewatch), and while it runs writes a new value
to every variable every 50 ms with a source timestamp: channel j of write k reads k + j, so
every sample is known. ``stop()`` closes the server's socket and every session, as a server
that goes away does; ``start()`` serves again on the same port.

Imported as ``opcua_server`` (``tests/`` is on ``sys.path``, like ``servers``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from servers import free_port

__all__ = ["OpcUaTestServer"]


class OpcUaTestServer:
    def __init__(self, assets: Sequence[str], channels: Sequence[str]) -> None:
        self.port = free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/linewatch"
        self._assets, self._channels = list(assets), list(channels)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="opcua-test-server")
        self._thread.start()
        self._server: Any = None
        self._variables: list[tuple[Any, int]] = []
        self._writer: asyncio.Task[None] | None = None
        self._call(self._init())

    def _call(self, coro: Any, timeout: float = 120.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _init(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace("urn:linewatch:test")
        plant = await server.nodes.objects.add_object(ns, "plant")
        for asset in self._assets:
            for j, channel in enumerate(self._channels):
                var = await plant.add_variable(ua.NodeId(f"{asset}.{channel}", ns),
                                               f"{asset}.{channel}", 0.0)
                self._variables.append((var, j))
        self._server = server

    async def _write(self) -> None:
        from asyncua import ua

        k = 0
        while True:
            k += 1
            now = datetime.now(UTC)
            for var, j in self._variables:
                await var.write_value(ua.DataValue(
                    ua.Variant(float(k + j), ua.VariantType.Double),
                    SourceTimestamp=now, ServerTimestamp=now))
            await asyncio.sleep(0.05)

    async def _start(self) -> None:
        await self._server.start()
        self._writer = asyncio.create_task(self._write())

    async def _stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        await self._server.stop()

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())

    async def _cancel_rest(self) -> None:
        # Sessions' and subscriptions' loops the server leaves behind after stop().
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def close(self) -> None:
        try:
            if self._writer is not None:
                self.stop()
            self._call(self._cancel_rest())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
