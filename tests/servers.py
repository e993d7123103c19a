"""Real Mosquitto, InfluxDB 1.x and VictoriaMetrics servers for the tests, each on free
loopback ports.

The shape is httpx's ``serve_in_thread``: start, wait until ready (bounded), use, shut down,
except that these are subprocesses that a test may ``stop()`` and ``start()`` again to cut
the network under the code it tests. A restart keeps the same port(s) and the same data
directory, so clients reconnect to the same URL and find their data again.

Only the stdlib is used here (``urllib.request`` for InfluxDB's HTTP API), so the helpers
work without any of the project's optional dependencies.

Errors::

    ServerError            a server could not be started, or answered an HTTP error
    +-- BinaryNotFoundError  its executable is not installed
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "BinaryNotFoundError",
    "InfluxDatabase",
    "InfluxServer",
    "MosquittoServer",
    "ServerError",
    "ServerMetrics",
    "VictoriaMetricsServer",
    "find_binary",
    "free_port",
]

HOST = "127.0.0.1"
INSTALL_HINT = (
    "install the Debian packages `mosquitto`, `influxdb` and `victoria-metrics` "
    "(run `bash scripts/ensure-servers.sh`, as root, or `make test`)"
)

# Every server started and not yet stopped, so that an aborted run leaves no orphan behind.
_LIVE: set[_ServerProcess] = set()


class ServerError(RuntimeError):
    """Raised when a test server does not start in time, exits, or answers an HTTP error."""


class BinaryNotFoundError(ServerError):
    """Raised when the server's executable is on neither PATH, /usr/sbin nor /usr/bin."""


# Ports are handed out below the kernel's ephemeral range (32768-60999 by default), each
# pytest-xdist worker from its own slice, round-robin. A port the kernel picks (a client's
# local port, another worker's bind to port 0) can then never be one a test has stopped a
# server on and means to start it on again, and a client connecting to a stopped server's
# port can never connect to itself (TCP simultaneous open: paho then reads its own CONNECT
# and reports a protocol error instead of a refused connection).
_PORT_RANGE = (20_000, 32_000)


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), index + 1)
    low, high = _PORT_RANGE
    size = (high - low) // count
    return range(low + index * size, low + (index + 1) * size)


_PORTS = _port_slice()
_next_port = _PORTS.start + os.getpid() % len(_PORTS)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    Successive calls in one process cycle through the worker's slice, so a port a test
    has just released is the last one to be handed out again.

    >>> 20_000 <= free_port() < 32_000
    True
    """
    global _next_port
    for _ in range(len(_PORTS)):
        port = _next_port
        _next_port = _PORTS.start + (_next_port + 1 - _PORTS.start) % len(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ServerError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1} on {HOST}")


def find_binary(name: str) -> str:
    """Return the path of executable ``name``: PATH first, then /usr/sbin and /usr/bin.

    /usr/sbin is often not on a non-root PATH, and that is where Debian puts mosquitto.
    """
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin"):
        candidate = Path(folder, name)
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise BinaryNotFoundError(f"`{name}` not found on PATH, /usr/sbin or /usr/bin: {INSTALL_HINT}")


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _ServerProcess:
    """One server subprocess in its own temp dir: start / wait until ready / stop."""

    name = "server"
    start_timeout_s = 10.0
    stop_timeout_s = 10.0

    def __init__(self) -> None:
        self.binary = find_binary(self.name)
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"linewatch-{self.name}-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._pick_ports()

    # -- subclass hooks ----------------------------------------------------------------
    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _write_config(self) -> list[str]:
        """Write the config file and return the command line."""
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def log_text(self) -> str:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start the server (a no-op if it runs) and return once it serves requests."""
        if self.running:
            return
        # A free port can be taken by someone else between free_port() and the server's
        # bind(). Before the first successful start nothing depends on the port yet, so pick
        # new ones and try again; after that the port is part of the URL clients hold.
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._start_once()
            except ServerError:
                if attempt + 1 == attempts or "in use" not in self.log_text():
                    raise
                self._pick_ports()
            else:
                self._started_once = True
                return

    def _start_once(self) -> None:
        command = self._write_config()
        with (
            open(self.tmpdir / f"{self.name}.stdout", "ab") as out,
            open(self.tmpdir / f"{self.name}.stderr", "ab") as err,
        ):
            self._proc = subprocess.Popen(
                command,
                cwd=self.tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # Own process group: a Ctrl-C aimed at pytest does not hit the server first,
                # and stop() can signal the whole group.
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + self.start_timeout_s
        while not self._ready():
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                _LIVE.discard(self)
                raise ServerError(
                    f"{self.name} exited with code {code} while starting; log tail:\n"
                    f"{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} not ready after {self.start_timeout_s:.0f} s; log tail:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the server and wait for it to exit (SIGKILL after a timeout). Idempotent."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        self._signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, so nothing it kept in memory is saved (a broker
        killed before its first autosave comes back without any session). Idempotent."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        self._signal(proc, signal.SIGKILL)
        proc.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port(s) with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its temp dir (config, data, logs)."""
        self.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _log_tail(self) -> str:
        return "\n".join(self.log_text().splitlines()[-30:])

    def __enter__(self) -> _ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.close()


class MosquittoServer(_ServerProcess):
    """The ``mosquitto`` broker on a free loopback port, with persistence on.

    ``persistence true`` makes a persistent session (clean_session=False / MQTT 5 session
    expiry) and its queued QoS 1/2 messages survive ``restart()``: mosquitto writes
    ``mosquitto.db`` on SIGTERM and reads it back at start.

    ``extra_config`` is appended to the generated configuration. Coming last, its global
    options win (mosquitto keeps the last value it reads), so ``allow_anonymous false`` there
    overrides the default ``true``. ``{host}``, ``{port}``, ``{tls_port}`` and ``{tmpdir}`` in
    it are filled in; ``tls_port`` is a second free port, for a second listener such as
    ``listener {tls_port} {host}`` with certificates, and nothing listens on it otherwise.

    Attributes: ``host`` ("127.0.0.1"), ``port``, ``tls_port``, ``url``
    ("mqtt://127.0.0.1:<port>"), ``tmpdir``, ``running``, ``pid``.
    """

    name = "mosquitto"
    start_timeout_s = 10.0
    host = HOST

    def __init__(self, extra_config: str = "") -> None:
        self.extra_config = extra_config
        super().__init__()

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.tls_port = free_port()
        while self.tls_port == self.port:
            self.tls_port = free_port()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.tmpdir / "mosquitto.log"

    def _write_config(self) -> list[str]:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.tmpdir}/",
            # Large enough that no test loses a queued message to the queue limit
            # (the default max_queued_messages is 1000).
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            f"log_dest file {self.log_path}",
        ]
        if os.geteuid() == 0:
            # Run as root, mosquitto drops to user `mosquitto`, which cannot write to our
            # 0700 temp dir; `user root` keeps it as it is.
            lines.append("user root")
        if self.extra_config:
            lines.append(self.extra_config.format(
                host=self.host, port=self.port, tls_port=self.tls_port, tmpdir=self.tmpdir
            ))
        config = self.tmpdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return [self.binary, "-c", str(config)]

    def _ready(self) -> bool:
        return _tcp_accepts(self.port)

    def log_text(self) -> str:
        """The broker's log file, plus anything it printed before the log was open."""
        parts = []
        for path in (self.tmpdir / "mosquitto.stderr", self.log_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)


class InfluxServer(_ServerProcess):
    """InfluxDB 1.x (``influxd``, Debian package ``influxdb``) on free loopback ports.

    Attributes: ``url`` ("http://127.0.0.1:<port>"), ``port`` (HTTP), ``rpc_port``,
    ``tmpdir``, ``running``, ``pid``.
    """

    name = "influxd"
    start_timeout_s = 30.0
    host = HOST

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.rpc_port = free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _write_config(self) -> list[str]:
        d = self.tmpdir
        config = d / "influxdb.conf"
        config.write_text(
            f"""\
# Upstream spells it reporting-disabled; Debian's patched build reporting-enabled.
# influxd ignores keys it does not know, so both are set.
reporting-disabled = true
reporting-enabled = false
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{d}/meta"
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false

[logging]
  suppress-logo = true

[ifql]
  enabled = false
[[graphite]]
  enabled = false
[[collectd]]
  enabled = false
[[opentsdb]]
  enabled = false
[[udp]]
  enabled = false
"""
        )
        return [self.binary, "run", "-config", str(config)]

    def _ready(self) -> bool:
        try:
            status, _ = self._request("GET", "/ping", timeout_s=1.0)
        except (OSError, ServerError):
            return False
        return status == 204

    def log_text(self) -> str:
        """What influxd wrote to stderr (its log) and stdout."""
        parts = []
        for suffix in ("stderr", "stdout"):
            path = self.tmpdir / f"influxd.{suffix}"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    # -- HTTP API helpers (InfluxDB 1.x: /ping, /query, /write) -------------------------
    def query(
        self, q: str, db: str | None = None, *, epoch: str | None = None
    ) -> list[dict[str, Any]]:
        """Run InfluxQL through ``GET /query`` and return rows as ``{column: value}`` dicts.

        Rows of ALL series of the FIRST statement are returned, flattened in the order
        InfluxDB sends them. For a ``GROUP BY <tag>`` query each row also carries the
        series' tags, and every row carries ``"_measurement"`` (the series name). ``time``
        is an RFC 3339 string unless ``epoch`` ("ns", "u", "ms", "s") asks for integers.
        Raises ``ServerError`` if InfluxDB reports an error for the statement.
        """
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        body = self._json("GET", "/query?" + urllib.parse.urlencode(params))
        results = body.get("results") or [{}]
        first = results[0]
        if "error" in first:
            raise ServerError(f"InfluxQL error for {q!r}: {first['error']}")
        rows: list[dict[str, Any]] = []
        for series in first.get("series", []):
            extra = {"_measurement": series.get("name"), **series.get("tags", {})}
            for values in series.get("values", []):
                rows.append({**extra, **dict(zip(series["columns"], values, strict=True))})
        return rows

    def execute(self, q: str, db: str | None = None) -> None:
        """Run a statement that changes state (CREATE, DROP, ...) through ``POST /query``."""
        params = {"q": q}
        if db is not None:
            params["db"] = db
        body = self._json("POST", "/query", data=urllib.parse.urlencode(params).encode())
        for result in body.get("results", []):
            if "error" in result:
                raise ServerError(f"InfluxQL error for {q!r}: {result['error']}")

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` (a no-op if it exists)."""
        self.execute(f"CREATE DATABASE {_quote_ident(name)}")

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE`` (a no-op if it does not exist)."""
        self.execute(f"DROP DATABASE {_quote_ident(name)}")

    def write(self, lines: str | list[str], db: str, *, precision: str = "ns") -> None:
        """Write line protocol through ``POST /write``; InfluxDB answers 204 on success."""
        text = lines if isinstance(lines, str) else "\n".join(lines)
        path = "/write?" + urllib.parse.urlencode({"db": db, "precision": precision})
        status, body = self._request("POST", path, data=text.encode())
        if status != 204:
            raise ServerError(f"write to {db!r} answered {status}: {body[:500]!r}")

    def _json(self, method: str, path: str, data: bytes | None = None) -> dict[str, Any]:
        status, body = self._request(method, path, data=data)
        if status != 200:
            raise ServerError(f"{method} {path} answered {status}: {body[:500]!r}")
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    def _request(
        self, method: str, path: str, data: bytes | None = None, timeout_s: float = 10.0
    ) -> tuple[int, bytes]:
        headers = {}
        if data is not None and path.startswith("/query"):
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            # 4xx/5xx still carry InfluxDB's JSON error body; callers decide what it means.
            with exc:
                return exc.code, exc.read()


class ServerMetrics(dict[str, float]):
    """A server's metrics in Prometheus' text format: ``{'name{label="v", ...}': value}``."""

    def total(self, name: str, **labels: str) -> float:
        """The sum of metric ``name`` over its series whose labels include ``labels``; 0 if
        there is none.

        >>> ServerMetrics({'up{job="a", x="1"}': 1.0, 'up{job="b"}': 2.0}).total("up", job="a")
        1.0
        """
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(value for series, value in self.items()
                   if series.split("{", 1)[0] == name and all(w in series for w in wanted))


class InfluxDatabase(NamedTuple):
    """What the ``influxdb`` fixture gives a test: a fresh database on the session's server."""

    url: str
    database: str
    server: InfluxServer


def _quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier.

    >>> _quote_ident('a"b')
    '"a\\\\"b"'
    """
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# No proxy for loopback, whatever http_proxy/HTTP_PROXY the environment sets.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class VictoriaMetricsServer(_ServerProcess):
    """VictoriaMetrics (``victoria-metrics``, Debian package of the same name) on a free
    loopback port: a real server for InfluxDB's v2 write API (``/api/v2/write``), which
    ignores org and token and stores no bucket label.

    It answers neither InfluxQL nor Flux: what was written is read back with ``export()``
    (its ``/api/v1/export``). Each field of a line becomes a series ``<measurement>_<field>``
    labelled with the line's tags; values are float64 (a bool is 0 or 1, a string field is
    stored as 0) and timestamps milliseconds. ``-retentionPeriod 100y`` keeps replayed
    timestamps (the default, one month, drops older points);
    ``-dedup.minScrapeInterval 1ms`` keeps the last sample written per series and
    millisecond, as InfluxDB keeps the last point per series and timestamp.

    Attributes: ``url`` ("http://127.0.0.1:<port>"), ``port``, ``tmpdir``, ``running``,
    ``pid``.
    """

    name = "victoria-metrics"
    start_timeout_s = 15.0
    host = HOST

    def _pick_ports(self) -> None:
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _write_config(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.tmpdir / 'data'}",
            f"-httpListenAddr={self.host}:{self.port}",
            "-retentionPeriod=100y",
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=WARN",
        ]

    def _ready(self) -> bool:
        try:
            return self._get("/ping", timeout_s=1.0)[0] == 204
        except OSError:
            return False

    def log_text(self) -> str:
        """What victoria-metrics wrote to stderr and stdout."""
        parts = []
        for suffix in ("stderr", "stdout"):
            path = self.tmpdir / f"{self.name}.{suffix}"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """Every series matching ``match`` with its samples, as ``/api/v1/export`` lists
        them: ``{"metric": {"__name__": ..., tag: value}, "values": [...], "timestamps":
        [ms, ...]}``. Pending writes are flushed first (``/internal/force_flush``), so
        everything the server acknowledged is in it."""
        status, body = self._get("/internal/force_flush")
        if status != 200:
            raise ServerError(f"force_flush answered {status}: {body[:300]!r}")
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        status, body = self._get(f"/api/v1/export?{query}")
        if status != 200:
            raise ServerError(f"export answered {status}: {body[:300]!r}")
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def metrics(self, timeout_s: float = 10.0) -> ServerMetrics:
        """The server's own metrics (``/metrics``) as of this call. It renders them at most
        about once a second and answers the last rendering until then, so this asks until
        the rendering changes (every request counts in it): that one is newer than the call.
        """
        first = self._metrics_once()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self._metrics_once()
            if now != first:
                return now
        raise ServerError(f"/metrics did not change in {timeout_s:.0f} s")

    def _metrics_once(self) -> ServerMetrics:
        status, body = self._get("/metrics")
        if status != 200:
            raise ServerError(f"/metrics answered {status}")
        metrics = ServerMetrics()
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                metrics[series] = float(value)
        return metrics

    def _get(self, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path)
        try:
            with _OPENER.open(request, timeout=timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
