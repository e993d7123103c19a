"""Values of an OPC UA server's nodes, as line-side gateways read PLCs.

Each configured node (``source.nodes``: node id -> asset, channel) is subscribed for data
change notifications; a value carries the device's timestamp (``timestamp: source``), the
server's (``server``) or its arrival (``arrival``), falling back to the server's and then
to arrival when the one asked for is absent. Values of one asset are assembled into samples
(``agent.sources.samples``). The client (asyncua, LGPL-3.0) runs its asyncio loop in a
thread of its own.

When the server goes away (stopped, rebooted, the network down) the connection loss is
logged at WARNING with the reason, and the client connects again with backoff (1, 2, 4 ...
up to ``retry_max_s`` seconds; attempts 1, 2, 4, 8 ... at WARNING, as every link of the
agent logs them) and subscribes again; one INFO line says when it is back and after how
long. Nothing is buffered on the server for us meanwhile: a live source resumes with what
the PLC reads now.

A value that is not a number (a string, null, a bad status) is a missing value (NaN), which
the quality monitor counts and skips; logged once per kind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.uaerrors import UaError

from agent.errors import SourceError
from agent.monitors import Event
from agent.sources import Reading
from agent.sources.config import OpcUaSourceConfig
from agent.sources.samples import SampleAssembler, take
from contract.card import ModelCard
from outage.failures import FailureLog

__all__ = ["OpcUaSource"]

logger = logging.getLogger(__name__)

_TICK_S = 0.2
_BATCH = 5000
_QUEUE = 20_000


class OpcUaSource:
    """A live source subscribed to OPC UA nodes (module docstring). ``ticks()`` yields at
    least every 0.2 s, empty when nothing arrived, until ``close()``."""

    def __init__(self, config: OpcUaSourceConfig, card: ModelCard) -> None:
        self.config = config
        self.channels = card.channel_names
        unknown = sorted({n.channel for n in config.nodes} - set(self.channels))
        if unknown:
            raise SourceError(f"source.nodes: the model has no channels {unknown} (it reads "
                              f"{self.channels})")
        for asset in {n.asset for n in config.nodes}:
            have = {n.channel for n in config.nodes if n.asset == asset}
            lacking = [c for c in self.channels if c not in have]
            if lacking:
                raise SourceError(f"source.nodes: asset {asset!r} has no node for channels "
                                  f"{lacking}")
        try:
            self._ids = [ua.NodeId.from_string(n.node) for n in config.nodes]
        except (ValueError, UaError) as exc:
            raise SourceError(f"source.nodes: {exc}") from exc
        self._by_id = {nid.to_string(): n for nid, n in zip(self._ids, config.nodes,
                                                            strict=True)}
        assets = list(dict.fromkeys(n.asset for n in config.nodes))
        self.assets: Sequence[str] | None = config.assets or assets
        self.sample_interval_s = config.sample_interval_s
        self.total_ticks: int | None = None
        self.rejected = 0  # every value becomes a sample (NaN when unreadable)
        self.missing_values: dict[str, int] = {}
        self.received = 0
        self.connects = 0
        self._told: set[str] = set()
        self._samples = SampleAssembler(self.channels, config.align_s, self._lacking)
        self._queue: queue.Queue[tuple[str, Any, float]] = queue.Queue(_QUEUE)
        self._closed = threading.Event()
        self._connected = threading.Event()
        self._log = FailureLog(logger)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        quiet = logging.getLogger("asyncua")
        if quiet.level == logging.NOTSET:
            # asyncua logs every request at INFO and every failed reconnect at WARNING; this
            # module says what an operator needs, once.
            quiet.setLevel(logging.ERROR)

    # --- the source ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def to_epoch_s(self, t: np.ndarray) -> np.ndarray:
        return t

    def events(self) -> list[Event]:
        return []

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_loop, name="linewatch-opcua",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def ticks(self) -> Iterator[list[Reading]]:
        self.start()
        while not self._closed.is_set():
            yield self.readings(take(self._queue, _TICK_S, _BATCH))

    def readings(self, batch: Sequence[tuple[str, Any, float]]) -> list[Reading]:
        """Samples from (node id, value, time) notifications, per asset in time order."""
        parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        # A notification batch holds values node after node: assemble them in time order.
        for node_id, value, at in sorted(batch, key=lambda item: item[2]):
            self.received += 1
            node = self._by_id[node_id]
            for asset, ts, values in self._samples.add(node.asset, node.channel,
                                                       self._number(node.channel, value), at):
                parts.setdefault(asset, []).append((ts, values))
        out = []
        for asset, chunks in parts.items():
            t = np.concatenate([c[0] for c in chunks])
            v = np.concatenate([c[1] for c in chunks])
            order = np.argsort(t, kind="stable")
            out.append(Reading(asset, t[order], v[order]))
        return out

    def _number(self, channel: str, value: Any) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool):
            return float(value)
        self._missing("wrong_type", f"{channel} reads {value!r:.40}, not a number")
        return math.nan

    def _lacking(self, asset: str, channel: str) -> None:
        self._missing("missing_channel", f"no value of {channel} for a sample of {asset}")

    def _missing(self, kind: str, detail: str) -> None:
        self.missing_values[kind] = self.missing_values.get(kind, 0) + 1
        if kind not in self._told:
            self._told.add(kind)
            logger.warning("OPC UA value read as missing (%s): %s; the quality monitor "
                           "counts and skips such samples (logged once)", kind, detail)

    # --- asyncua's thread ----------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._closed.is_set():
            return
        delay = 1.0
        while not self._stop.is_set():
            lost = asyncio.Event()
            try:
                client = await self._connect(lost)
            except (OSError, TimeoutError, ConnectionError, UaError) as exc:
                self._log.failed(type(exc).__name__, f"cannot connect to OPC UA server "
                                 f"{self.config.url}: {_why(exc)}", retry_in_s=delay)
            else:
                delay = 1.0
                self._connected.set()
                self._log.recovered(f"connected to OPC UA server {self.config.url} again, "
                                    f"subscribed to {len(self._ids)} nodes")
                await self._wait(lost)
                self._connected.clear()
                if not self._stop.is_set():
                    logger.warning("lost the OPC UA server %s; reconnecting", self.config.url)
                await self._disconnect(client)
                continue
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, self.config.retry_max_s)

    async def _connect(self, lost: asyncio.Event) -> Client:
        client = Client(self.config.url, timeout=4, watchdog_intervall=1.0)
        if self.config.username:
            client.set_user(self.config.username)
            password = self.config.password()
            if password is not None:
                client.set_password(password)

        async def on_lost(exc: Exception) -> None:
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            await client.connect()
            subscription = await client.create_subscription(
                self.config.publishing_interval_ms, _Handler(self))
            nodes = [client.get_node(nid) for nid in self._ids]
            results = await subscription.subscribe_data_change(nodes)
            bad = [(n.node, r) for n, r in zip(self.config.nodes,
                                               results if isinstance(results, list)
                                               else [results], strict=True)
                   if not isinstance(r, int)]
            for node, result in bad:
                logger.error("OPC UA server %s refused node %s: %s", self.config.url, node,
                             result)
        except BaseException:
            await self._disconnect(client)
            raise
        self.connects += 1
        return client

    async def _wait(self, lost: asyncio.Event) -> None:
        assert self._stop is not None
        waits = {asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._stop.wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()

    async def _disconnect(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), 2)
        except Exception:  # noqa: BLE001 - a dead server cannot be told goodbye
            logger.debug("disconnect from %s failed", self.config.url, exc_info=True)

    def _notified(self, node: Node, value: Any, data: DataChangeNotif) -> None:
        dv = data.monitored_item.Value
        stamp = None
        if self.config.timestamp == "source":
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
        elif self.config.timestamp == "server":
            stamp = dv.ServerTimestamp or dv.SourceTimestamp
        t = time.time() if stamp is None else _epoch(stamp)
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            value = None
        item = (node.nodeid.to_string(), value, t)
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


class _Handler:
    def __init__(self, source: OpcUaSource) -> None:
        self._source = source

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        self._source._notified(node, val, data)


def _epoch(stamp: datetime) -> float:
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
