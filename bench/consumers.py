"""Side by side, in one run: the linewatch aggregator against what a plant would build
instead (a Node-RED flow, a bare Python consumer), on the same Mosquitto and the same
InfluxDB 1.x (the test suite's own servers, ``tests/servers.py``, on free loopback ports).

For each consumer, batch size (prediction items per MQTT message) and repeat, in turn on
one broker and one InfluxDB: a fresh consumer process with its own database is started
and shown ready (a probe message stored), then ``items`` prediction items are published
at QoS 1 as fast as the broker takes them (1,000 in flight), and the consumer's CPU time
(user + system, from /proc through psutil) is taken from the first publish to the moment
its database holds every item, or holds no more for ``settle_s``. Figures are medians
over the repeats: points stored per CPU-second, items lost, and for the aggregator the
broker disconnects it counted and why (its log). The machine's load average is recorded
before and after: the machine is shared.

The items: 4 agents of 25 assets each, windows a minute apart; one asset in twenty has a
risk over the threshold in the last tenth of its windows, so tickets open and escalate
(the aggregator validates, dedupes and runs every rule on all of it).
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench import nodered
from contract import wire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers import InfluxServer, MosquittoServer, free_port  # noqa: E402

CONSUMERS = ("node_red", "bare_python", "linewatch")
# The aggregator from another checkout (``baseline``), run beside this one's for figures
# before and after a change in one run, on the same broker, database and machine load.
BASELINE = "linewatch_baseline"
BATCH_SIZES = (1, 10, 100)
AGENTS = 4
ASSETS_PER_AGENT = 25
THRESHOLD = 0.7
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = wire.ModelRef(name="bench", version="1", sha256="0" * 64, threshold=THRESHOLD)


def messages(items: int, per_message: int, run: int) -> list[tuple[str, bytes]]:
    """``items`` predictions in messages of ``per_message``, agents interleaved as they
    would publish; agent names carry ``run`` so no two runs share a msg_id or a seq."""
    assets = AGENTS * ASSETS_PER_AGENT
    windows = -(-items // assets)
    per_agent: dict[int, list[wire.Prediction]] = {a: [] for a in range(AGENTS)}
    for n in range(items):
        w, a = divmod(n, assets)
        end = T0 + timedelta(minutes=w + 1)
        high = a % 20 == 0 and w >= windows * 0.9
        score = 0.9 if high else (n * 7919 % 1000) / 2000
        per_agent[a % AGENTS].append(wire.Prediction(
            asset=f"engine-{a:03d}", window_start=end - timedelta(minutes=1),
            window_end=end, score=score, alert=score >= THRESHOLD))
    queues = []
    for agent, preds in per_agent.items():
        name = f"bench-{run}-{agent}"
        topic = wire.topic("bench", f"line{agent}", name, "predictions")
        starts = range(0, len(preds), per_message)
        queues.append([(topic, wire.encode(wire.Envelope.build(
            name, seq, MODEL, list(preds[i:i + per_message])))) for seq, i in enumerate(starts)])
    out = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


class Publisher:
    """QoS 1 publisher that keeps 1,000 messages in flight: as fast as the broker takes
    them. The window is kept here, not in paho's queue, which rescans every queued message
    on each PUBACK and would make the publisher the bottleneck."""

    WINDOW = 1000

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{port}")
        self.client.max_inflight_messages_set(self.WINDOW)
        self.acked = 0
        self._room = threading.Semaphore(self.WINDOW)
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()

    def _on_publish(self, *_: Any) -> None:
        with self._lock:
            self.acked += 1
        self._room.release()

    def publish(self, msgs: list[tuple[str, bytes]], timeout_s: float = 600) -> float:
        """Publish everything; return the seconds until the broker acknowledged it all."""
        start, self.acked = time.monotonic(), 0
        for topic, payload in msgs:
            if not self._room.acquire(timeout=timeout_s):
                raise RuntimeError(f"broker acknowledged {self.acked} of {len(msgs)}")
            self.client.publish(topic, payload, qos=1)
        while self.acked < len(msgs):
            if time.monotonic() - start > timeout_s:
                raise RuntimeError(f"broker acknowledged {self.acked} of {len(msgs)}")
            time.sleep(0.01)
        return time.monotonic() - start

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stored(influx: InfluxServer, database: str, prefix: str) -> int:
    rows = influx.query(f"SELECT count(score) FROM prediction WHERE agent =~ /^{prefix}/",
                        database)
    return int(rows[0]["count"]) if rows else 0


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


class Consumer:
    """One consumer process under test."""

    def __init__(self, kind: str, mosquitto: MosquittoServer, influx: InfluxServer,
                 database: str, workdir: Path, run: int, source: Path = ROOT,
                 baseline: Path | None = None) -> None:
        self.source = source
        self.kind, self.database, self.workdir = kind, database, workdir
        self.log = workdir / f"{kind}.log"
        self.client_id = f"bench-{kind}-{run}"
        influx.create_database(database)
        host, port = "127.0.0.1", mosquitto.port
        topic = "linewatch/v1/+/+/+/predictions"
        self.http_port = free_port()
        if kind == "node_red":
            nodes = nodered.flow(host, port, host, influx.port, database, topic,
                                 self.client_id)
            self.proc = nodered.start(workdir / "node-red", nodes, self.http_port, self.log)
        elif kind == "bare_python":
            self.source = ROOT
            self.proc = self._python(["-m", "bench.bare_consumer", "--mqtt-port", str(port),
                                      "--influx-url", influx.url, "--database", database,
                                      "--topic", topic, "--client-id", self.client_id], {})
        else:
            if kind == BASELINE:
                self.source = baseline if baseline is not None else source
            env = {"LINEWATCH_MQTT_URL": mosquitto.url, "LINEWATCH_INFLUX_URL": influx.url,
                   "LINEWATCH_INFLUX_DATABASE": database,
                   "LINEWATCH_DB_URL": f"sqlite:///{workdir / 'linewatch.db'}",
                   "LINEWATCH_SERIES_PATH": str(workdir / "series.db"),
                   "LINEWATCH_HTTP_PORT": str(self.http_port),
                   "LINEWATCH_MQTT_CLIENT_ID": self.client_id}
            self.proc = self._python(["-m", "aggregator", "serve"], env)
        self.process = psutil.Process(self.proc.pid)

    def _python(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            # From ``source`` (cwd comes first on sys.path for -m): another checkout's
            # aggregator, for figures before and after a change.
            return subprocess.Popen([sys.executable, *args], cwd=self.source, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env}, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def healthz_mqtt(self) -> dict[str, Any]:
        """The aggregator's own counts: disconnects, retries, messages received and acked."""
        import json
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                    timeout=10) as response:
            mqtt_counts = json.load(response)["mqtt"]
        return {k: mqtt_counts[k] for k in ("disconnects", "connect_failures", "retries",
                                            "received", "acked", "overflowed")}

    def disconnects(self) -> list[str]:
        """What the consumer logged about losing the broker (the aggregator's lines)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines()
                if re.search(r"lost (the )?connection|disconnected|keepalive", line, re.I)]


def wait_ready(consumer: Consumer, publisher: Publisher, influx: InfluxServer, run: int,
               timeout_s: float = 120) -> None:
    """Publish a probe every second until the consumer has stored one."""
    deadline = time.monotonic() + timeout_s
    seq = 0
    while stored(influx, consumer.database, f"probe-{run}") == 0:
        if consumer.proc.poll() is not None:
            raise RuntimeError(f"{consumer.kind} exited: see {consumer.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{consumer.kind} stored no probe in {timeout_s} s: see "
                               f"{consumer.log}")
        end = T0 + timedelta(minutes=seq + 1)
        probe = wire.Envelope.build(f"probe-{run}", seq, MODEL, [wire.Prediction(
            asset="probe", window_start=end, window_end=end, score=0.1, alert=False)])
        publisher.publish([(wire.topic("bench", "probe", f"probe-{run}", "predictions"),
                            wire.encode(probe))])
        seq += 1
        time.sleep(1.0)


def measure(kind: str, per_message: int, items: int, run: int, mosquitto: MosquittoServer,
            influx: InfluxServer, publisher: Publisher, workdir: Path,
            settle_s: float, source: Path = ROOT,
            baseline: Path | None = None) -> dict[str, Any]:
    msgs = messages(items, per_message, run)
    database = f"bench_{kind}_{run}"
    consumer = Consumer(kind, mosquitto, influx, database, workdir, run, source, baseline)
    try:
        wait_ready(consumer, publisher, influx, run)
        prefix = f"bench-{run}-"
        cpu0 = cpu_s(consumer.process)
        wall0 = time.monotonic()
        publish_s = publisher.publish(msgs)
        count, changed, cpu1 = 0, time.monotonic(), cpu0
        while count < items and time.monotonic() - changed < settle_s:
            time.sleep(0.25)
            now = stored(influx, database, prefix)
            cpu1 = cpu_s(consumer.process)
            if now != count:
                count, changed = now, time.monotonic()
        wall = (changed if count < items else time.monotonic()) - wall0
        cpu = cpu1 - cpu0
        result: dict[str, Any] = {
            "stored": count, "lost": items - count, "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2), "publish_s": round(publish_s, 2),
            "points_per_cpu_s": round(count / cpu) if cpu > 0 else None,
        }
        if kind in ("linewatch", BASELINE):
            result["broker_disconnects"] = consumer.disconnects()
            result["healthz_mqtt"] = consumer.healthz_mqtt()
        return result
    finally:
        consumer.stop()
        influx.drop_database(database)


def run_all(items: int = 100_000, repeats: int = 2, batch_sizes: tuple[int, ...] = BATCH_SIZES,
            consumers: tuple[str, ...] = CONSUMERS, settle_s: float = 30.0,
            source: Path = ROOT, baseline: Path | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every consumer at every batch size, ``repeats`` times, interleaved; medians.
    ``source`` is the checkout the aggregator runs from (default this one); ``baseline``
    another checkout whose aggregator runs too, as consumer ``linewatch_baseline``."""
    if baseline is not None and BASELINE not in consumers:
        consumers = (*consumers, BASELINE)
    if "node_red" in consumers:
        nodered.install()
    mosquitto, influx = MosquittoServer(), InfluxServer()
    mosquitto.start()
    influx.start()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        c: {b: [] for b in batch_sizes} for c in consumers}
    load_before = os.getloadavg()
    publisher = Publisher(mosquitto.port)
    run = 0
    try:
        with tempfile.TemporaryDirectory(prefix="linewatch-bench-") as tmp:
            for repeat in range(repeats):
                for per_message in batch_sizes:
                    for kind in consumers:
                        run += 1
                        workdir = Path(tmp) / f"{kind}-{per_message}-{repeat}"
                        workdir.mkdir()
                        result = measure(kind, per_message, items, run, mosquitto, influx,
                                         publisher, workdir, settle_s, source, baseline)
                        result["load_average_1m"] = round(os.getloadavg()[0], 2)
                        log(f"{kind} x{per_message} #{repeat + 1}: {result}")
                        runs[kind][per_message].append(result)
    finally:
        publisher.close()
        mosquitto.stop()
        influx.stop()
    return {
        "items": items, "repeats": repeats, "cpus": os.cpu_count(), "source": str(source),
        "baseline": None if baseline is None else str(baseline),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "medians": {c: {f"items_per_message_{b}": _medians(rs) for b, rs in by.items()}
                    for c, by in runs.items()},
        "ratios": _ratios(runs, batch_sizes),
        "runs": {c: {str(b): rs for b, rs in by.items()} for c, by in runs.items()},
    }


def _medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("points_per_cpu_s", "lost", "cpu_s", "wall_s", "publish_s"):
        values = [r[key] for r in results if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["lost_max"] = max(r["lost"] for r in results)
    if any("broker_disconnects" in r for r in results):
        out["broker_disconnects_logged"] = sum(len(r["broker_disconnects"]) for r in results)
        out["broker_disconnects_counted"] = sum(r["healthz_mqtt"]["disconnects"]
                                                for r in results)
    return out


def _ratios(runs: dict[str, dict[int, list[dict[str, Any]]]],
            batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """The aggregator's points per CPU-second over Node-RED's and the bare consumer's."""
    out: dict[str, Any] = {}
    if "linewatch" not in runs:
        return out
    for b in batch_sizes:
        ours = _medians(runs["linewatch"][b])["points_per_cpu_s"]
        for other in ("node_red", "bare_python", BASELINE):
            if other in runs and ours:
                theirs = _medians(runs[other][b])["points_per_cpu_s"]
                if theirs:
                    out[f"linewatch_over_{other}_at_{b}"] = round(ours / theirs, 2)
    return out
