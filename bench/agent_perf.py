"""The gateway's speed and footprint, replaying all 100 FD001 test engines, in one run:

- ``compute``: the agent's compute path (quality checks, windows, features, ONNX, the
  envelope and alert-rate monitors, the performance estimate's feed), driven through the
  agent's own methods over ticks read beforehand, its batches thrown away;
- ``pipeline``: the whole agent (``Agent.run``: source, compute, batches, wire encoding,
  outbox, publisher) against a real local Mosquitto with ``publish.confirm: broker``, from
  the first tick to the last PUBACK, with the latency of every window from the moment it was
  complete to the PUBACK of the message that carried it;
- ``floor``: the same work with nothing else: one sample matrix per tick, vectorised
  quality checks, a ring buffer of windows, the card's features as one numpy call per
  function, one onnxruntime call per tick, the same CUSUM recursions the monitors run
  (the envelope's over arrays, the alert rate's River detector per window) and JSON
  encoding of every prediction with ``json.dumps``; ``floor_bare`` is that without the
  quality checks (the floor as issue #12 first measured it);
- ``stages``: each stage's share of the agent's compute path and of the floor;
- ``rss``: peak RSS of a real agent process (``python -m agent run``) replaying 100 engines
  to the broker, and whether it imported scipy;
- ``installed``: the size of a fresh venv's site-packages with only ``.[agent]`` installed
  (``bench.footprint``; cached under ``var/bench`` per pyproject/constraints).

Rates are windows per second of wall time and per CPU second of this process (the machine
is shared: the CPU figures are steadier); ratios to the floor use CPU time.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agent import config as agent_config
from agent.features import FEATURES
from agent.monitors.cusum import ReferenceCusum, step
from agent.monitors.envelope import exceedance
from agent.pipeline import Agent
from agent.sources import Reading

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cmapss_fd001"
DATA = ROOT / "models" / "data" / "cmapss_fd001" / "test_FD001.txt.gz"


def _config(tmp: Path, mqtt_url: str, name: str) -> agent_config.AgentConfig:
    return agent_config.parse({
        "agent": {"id": f"gw-bench-{name}", "site": "bench", "line": "line1"},
        "model": {"dir": str(MODEL)},
        "source": {"type": "replay", "path": str(DATA), "speed": 0, "step_s": 600,
                   "start": "2026-01-01T00:00:00Z"},
        "mqtt": {"url": mqtt_url, "max_inflight": 20},
        "outbox": {"path": str(tmp / name / "outbox.db")},
        "publish": {"confirm": "broker"},
    })


class _Sink:
    """Takes the batches of the compute path and drops them."""

    def add(self, kind: str, items: Any) -> None:
        pass

    def add_predictions(self, chunk: Any) -> None:
        pass

    def due(self) -> bool:
        return False

    def flush(self, kind: str | None = None) -> None:
        pass


def _windows(ready: Any) -> int:
    if isinstance(ready, list):  # the agent before its ticks were batched
        return sum(len(w) for w in ready)
    return len(ready)


def _compute(agent: Agent, ticks: list[list[Reading]]) -> int:
    for readings in ticks:
        ready = agent._window(readings)
        if ready:
            agent._score(ready)
        agent._events()
    return agent.progress.windows_scored


# --- the agent's compute path ----------------------------------------------------------


def compute_once(tmp: Path) -> dict[str, float]:
    agent = Agent(_config(tmp, "mqtt://127.0.0.1:1", f"compute-{uuid.uuid4().hex[:6]}"))
    try:
        ticks = list(agent.source.ticks())
        agent.batcher = _Sink()  # type: ignore[assignment]
        wall, cpu = time.perf_counter(), time.thread_time()
        windows = _compute(agent, ticks)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        agent.outbox.close()
        agent.positions.close()
    return {"windows": windows, "wall_s": wall, "cpu_s": cpu}


# The agent's parts, by stage: whichever of these methods exist are timed.
_STAGES = [
    ("quality", "quality", ("clean", "clean_tick")),
    ("windows", "windower", ("update", "update_tick")),
    ("features", "extractor", ("transform",)),
    ("model", "model", ("run",)),
    ("monitors", "envelope", ("update",)),
    ("monitors", "score_monitor", ("update",)),
    ("estimate", "estimator", ("update",)),
]


def compute_stages(tmp: Path) -> dict[str, float]:
    """CPU seconds per stage of the compute path (timers around each part's calls; the
    rest, "glue", is the pipeline's own code between them)."""
    agent = Agent(_config(tmp, "mqtt://127.0.0.1:1", f"stages-{uuid.uuid4().hex[:6]}"))
    spent: dict[str, float] = {}
    try:
        ticks = list(agent.source.ticks())
        agent.batcher = _Sink()  # type: ignore[assignment]
        for stage, part, methods in _STAGES:
            obj = getattr(agent, part, None)
            for name in methods:
                if obj is not None and hasattr(obj, name):
                    setattr(obj, name, _timed(getattr(obj, name), stage, spent))
        cpu = time.thread_time()
        _compute(agent, ticks)
        total = time.thread_time() - cpu
    finally:
        agent.outbox.close()
        agent.positions.close()
    return {**spent, "glue": total - sum(spent.values()), "total": total}


def _timed(fn: Callable[..., Any], stage: str, spent: dict[str, float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[stage] = spent.get(stage, 0.0) + time.thread_time() - t0
    return wrapper


# --- the whole agent, to PUBACK ----------------------------------------------------------


def pipeline_once(tmp: Path, mqtt_url: str) -> dict[str, Any]:
    """``Agent.run`` to a real broker; every window's latency from complete to PUBACK."""
    agent = Agent(_config(tmp, mqtt_url, f"pipeline-{uuid.uuid4().hex[:6]}"))
    completed: list[tuple[float, int]] = []  # (when, windows) per tick, in order
    put: dict[int, int] = {}  # seq -> windows, predictions only
    acked: dict[int, float] = {}
    lock = threading.Lock()
    began: list[float] = []
    window, source_ticks = agent._window, agent.source.ticks
    outbox_put, outbox_ack = agent.outbox.put, agent.outbox.ack

    spent: dict[str, float] = {}

    def ticks() -> Iterator[list[Reading]]:
        began.extend([time.perf_counter(), time.process_time()])
        it = source_ticks()
        while True:
            t0 = time.thread_time()
            readings = next(it, None)
            spent["source"] = spent.get("source", 0.0) + time.thread_time() - t0
            if readings is None:
                return
            yield readings

    def window_hook(readings: list[Reading]) -> Any:
        ready = window(readings)
        if ready:
            completed.append((time.perf_counter(), _windows(ready)))
        return ready

    def put_hook(seq: int, *args: Any, **kwargs: Any) -> None:
        outbox_put(seq, *args, **kwargs)
        if args[2] == "predictions":
            put[seq] = kwargs.get("windows", 0)

    def ack_hook(seqs: list[int]) -> None:
        now = time.perf_counter()
        outbox_ack(seqs)
        with lock:
            for s in seqs:
                acked.setdefault(s, now)

    # The stages the compute path does not have (CPU of the agent's main thread).
    batcher, positions = agent.batcher, agent.positions
    batcher._write_columns = _timed(  # type: ignore[method-assign]
        batcher._write_columns, "encode_and_outbox", spent)
    positions.save = _timed(positions.save, "position_and_checkpoint",  # type: ignore
                            spent)
    agent.source.ticks = ticks  # type: ignore[method-assign]
    agent._window = window_hook  # type: ignore[method-assign]
    agent.outbox.put = put_hook  # type: ignore[method-assign]
    agent.outbox.ack = ack_hook  # type: ignore[method-assign]
    report = agent.run(drain_timeout_s=120)
    cpu_end = time.process_time()
    if not report.drained:
        raise RuntimeError("the benchmark agent did not drain its outbox")
    seqs = sorted(put)
    last_ack = max(acked[s] for s in seqs)
    # Windows in order of completion; message i carries windows [cum[i-1], cum[i]).
    cum = np.cumsum([put[s] for s in seqs])
    done_at = np.repeat([t for t, _ in completed], [n for _, n in completed])
    ack_of_window = np.array([acked[s] for s in seqs])[
        np.searchsorted(cum, np.arange(len(done_at)), side="right")]
    latency_ms = (ack_of_window - done_at) * 1e3
    return {"windows": report.progress.windows_scored, "messages": len(seqs),
            "stages_cpu_s": spent,
            "wall_s": last_ack - began[0], "cpu_s": cpu_end - began[1],
            "latency_p50_ms": float(np.percentile(latency_ms, 50)),
            "latency_p99_ms": float(np.percentile(latency_ms, 99))}


# --- the floor ---------------------------------------------------------------------------


class Floor:
    """The agent's work with nothing else, over one sample matrix per tick."""

    def __init__(self, agent: Agent, ticks: list[list[Reading]], *, quality: bool) -> None:
        card = agent.model.card
        self.quality = quality
        self.assets = list(agent.source.assets or ())
        index = {a: i for i, a in enumerate(self.assets)}
        # Per tick: asset rows, times, values (one sample per asset per tick in FD001).
        self.ticks = [(np.array([index[r.asset] for r in rs]),
                       np.concatenate([r.t for r in rs]),
                       np.concatenate([r.values for r in rs])) for rs in ticks]
        self.size, n, c = card.window.size, len(self.assets), len(card.channel_names)
        self.session, self.input = agent.model._session, agent.model._input
        self.output, self.out_index = agent.model._output, card.output.index
        self.threshold = card.threshold.value
        groups: dict[str, list[int]] = {}
        self.cols: list[int] = []
        for f in card.features:
            groups.setdefault(f.fn, []).append(card.channel_names.index(f.inputs[0]))
        self.groups = [(FEATURES[fn], chans) for fn, chans in groups.items()]
        order = [j for fn in groups for j, f in enumerate(card.features) if f.fn == fn]
        self.order = np.argsort(order)
        env = agent.envelope
        self.low, self.high, self.scale = env.low, env.high, env.scale
        self.allowance, self.h = env.allowance, env.thresholds
        cal = agent.calibration
        watched = sorted({card.channel_names.index(ch) for ch in cal.limits})
        self.watched = np.array(watched)
        lims = [cal.limits[card.channel_names[j]] for j in watched]
        span = np.array([max(lm.high - lm.low, abs(lm.high) * 0.1, 1e-9) for lm in lims])
        self.lo = np.array([lm.low for lm in lims]) - 3 * span
        self.hi = np.array([lm.high for lm in lims]) + 3 * span
        self.stuck_limit = np.array([lm.stuck_samples or np.inf for lm in lims])
        self.step_cols = np.array([j for j, lm in zip(watched, lims, strict=True)
                                   if lm.step_threshold is not None and lm.noise > 0])
        step_lims = [cal.limits[card.channel_names[j]] for j in self.step_cols]
        self.step_h = np.array([lm.step_threshold for lm in step_lims])
        self.step_noise = np.array([lm.noise for lm in step_lims])
        self.w = cal.step_window
        self.score = agent.score_monitor
        self.n, self.c = n, c
        self.model_ref = {"name": card.name, "version": card.version,
                          "sha256": card.sha256.model, "threshold": self.threshold}

    def run(self, spent: dict[str, float] | None = None) -> int:
        n, c, size, w = self.n, self.c, self.size, self.w
        buf = np.zeros((n, size, c))
        tbuf = np.zeros((n, size))
        count = np.zeros(n, dtype=np.int64)
        last = np.full((n, len(self.watched)), np.nan)
        run = np.zeros((n, len(self.watched)))
        last_t = np.full(n, np.nan)
        tail = np.zeros((n, 2 * w, len(self.step_cols)))
        s = np.zeros((n, len(self.h)))
        score = ReferenceCusum(allowance=0.0, threshold=self.score.threshold) \
            if self.score is not None else None
        up, down = (self.score._up, self.score._down) if self.score is not None else (0, 0)
        ring, at = np.zeros(2000), 0
        items: list[dict[str, Any]] = []
        payloads, scored = 0, 0
        clock = time.thread_time
        mark = clock()

        def lap(stage: str) -> None:
            nonlocal mark
            if spent is not None:
                now = clock()
                spent[stage] = spent.get(stage, 0.0) + now - mark
                mark = now

        for rows, t, v in self.ticks:
            if self.quality:
                x = v[:, self.watched]
                finite = np.isfinite(v).all(axis=1)
                ok = finite & ((x >= self.lo) & (x <= self.hi)).all(axis=1)
                rows, t, v = rows[ok], t[ok], v[ok]
                x = x[ok]
                _gap = t - last_t[rows]
                last_t[rows] = t
                same = x == last[rows]
                run[rows] = np.where(same, run[rows] + 1, 1)
                last[rows] = x
                _stuck = run[rows] >= self.stuck_limit
                tl = tail[rows]
                tl[:, :-1] = tl[:, 1:]
                tl[:, -1] = v[:, self.step_cols]
                tail[rows] = tl
                z = np.abs(tl[:, w:].mean(axis=1) - tl[:, :w].mean(axis=1)) / (
                    self.step_noise * np.sqrt(2.0 / w))
                _steps = z > self.step_h
                lap("quality")
            b = buf[rows]
            b[:, :-1] = b[:, 1:]
            b[:, -1] = v
            buf[rows] = b
            tb = tbuf[rows]
            tb[:, :-1] = tb[:, 1:]
            tb[:, -1] = t
            tbuf[rows] = tb
            count[rows] += 1
            full = count[rows] >= size
            if not full.any():
                lap("windows")
                continue
            win, wt, wrows = b[full], tb[full], rows[full]
            lap("windows")
            k = len(win)
            feats = np.empty((k, len(self.order)), dtype=np.float32)
            col = 0
            for fn, chans in self.groups:
                xs = win[:, :, chans].transpose(0, 2, 1).reshape(k * len(chans), size)
                feats[:, col:col + len(chans)] = fn(xs).reshape(k, len(chans))
                col += len(chans)
            feats = feats[:, self.order]
            lap("features")
            (probs,) = self.session.run([self.output], {self.input: feats})
            scores = np.asarray(probs, dtype=np.float64)[:, self.out_index]
            lap("model")
            e = exceedance(feats.astype(np.float64), self.low, self.high, self.scale)
            s[wrows] = after = step(s[wrows], e, self.allowance)
            _fire = after > self.h
            alerts = scores >= self.threshold
            if score is not None:
                for a in alerts.tolist():
                    score.update(up if a else down)
            lap("monitors")
            idx = (at + np.arange(k)) % len(ring)
            ring[idx] = scores
            at = int(idx[-1] + 1) % len(ring)
            lap("estimate")
            for r, t0, t1, sc, al in zip(wrows.tolist(), wt[:, 0].tolist(), wt[:, -1].tolist(),
                                         scores.tolist(), alerts.tolist(), strict=True):
                items.append({"kind": "prediction", "asset": self.assets[r],
                              "window_start": _iso(t0), "window_end": _iso(t1),
                              "score": sc, "alert": al})
            if len(items) >= 500:
                payloads += len(self._encode(items))
                items = []
            lap("encode")
            scored += k
        if items:
            payloads += len(self._encode(items))
        lap("encode")
        return scored

    def _encode(self, items: list[dict[str, Any]]) -> bytes:
        return json.dumps({"schema": 1, "msg_id": str(uuid.uuid4()), "agent": "gw",
                           "ts": _iso(time.time()), "seq": 0, "model": self.model_ref,
                           "items": items}, separators=(",", ":")).encode()


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def floor_once(floor: Floor) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    windows = floor.run()
    return {"windows": windows, "wall_s": time.perf_counter() - wall,
            "cpu_s": time.thread_time() - cpu}


# --- peak RSS of a real agent process ----------------------------------------------------


def rss(tmp: Path, mqtt_url: str) -> dict[str, Any]:
    config = tmp / "rss.yaml"
    cfg = _config(tmp, mqtt_url, "rss")
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    # The agent's own entry point, with a line at exit: the process's peak RSS (VmHWM; the
    # rusage of a child would count the forking parent's pages too) and whether scipy
    # was loaded.
    code = ("import sys, runpy, atexit; "
            "atexit.register(lambda: print('scipy loaded:', 'scipy' in sys.modules, "
            "[x for x in open('/proc/self/status') if x.startswith('VmHWM')][0])); "
            "sys.argv = ['agent', 'run', '-c', sys.argv[1]]; "
            "runpy.run_module('agent', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(config)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the agent exited with {proc.returncode}: {proc.stderr[-2000:]}")
    hwm_kb = int(proc.stdout.split("VmHWM:")[1].split()[0])
    return {"assets": 100, "peak_rss_mb": round(hwm_kb / 1024, 1),
            "scipy_imported": "scipy loaded: True" in proc.stdout}


# --- the case ----------------------------------------------------------------------------


@contextmanager
def _broker() -> Iterator[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from servers import MosquittoServer
    finally:
        sys.path.pop(0)
    with MosquittoServer() as server:
        yield server.url


def _rate(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r["windows"] / r[key] for r in runs)


def agent_pipeline(repeats: int) -> dict[str, Any]:
    from bench.footprint import agent_install_size

    repeats = max(1, min(repeats, 5))
    with tempfile.TemporaryDirectory() as d, _broker() as url:
        tmp = Path(d)
        setup = Agent(_config(tmp, url, "floor"))
        ticks = list(setup.source.ticks())
        floor = Floor(setup, ticks, quality=True)
        bare = Floor(setup, ticks, quality=False)
        setup.outbox.close()
        setup.positions.close()
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in
                                                 ("compute", "pipeline", "floor", "floor_bare")}
        floor.run(), bare.run()  # warm-up
        for _ in range(repeats):  # interleaved, so that load from others hits all alike
            runs["floor"].append(floor_once(floor))
            runs["floor_bare"].append(floor_once(bare))
            runs["compute"].append(compute_once(tmp))
            runs["pipeline"].append(pipeline_once(tmp, url))
        stages = compute_stages(tmp)
        floor_stages: dict[str, float] = {}
        floor.run(floor_stages)
        memory = rss(tmp, url)
    out: dict[str, Any] = {"assets": 100, "ticks": len(ticks), "repeats": repeats}
    for name, rs in runs.items():
        out[name] = {"windows": rs[0]["windows"],
                     "windows_per_s": round(_rate(rs, "wall_s")),
                     "windows_per_cpu_s": round(_rate(rs, "cpu_s"))}
    out["pipeline"] |= {
        "messages": runs["pipeline"][0]["messages"],
        "latency_ms": {"p50": round(statistics.median(r["latency_p50_ms"]
                                                      for r in runs["pipeline"]), 1),
                       "p99": round(statistics.median(r["latency_p99_ms"]
                                                      for r in runs["pipeline"]), 1),
                       "from": "window complete", "to": "PUBACK of its message"}}
    f, fb = out["floor"]["windows_per_cpu_s"], out["floor_bare"]["windows_per_cpu_s"]
    out["share_of_floor"] = {
        "compute": round(out["compute"]["windows_per_cpu_s"] / f, 3),
        "pipeline": round(out["pipeline"]["windows_per_cpu_s"] / f, 3),
        "compute_vs_bare": round(out["compute"]["windows_per_cpu_s"] / fb, 3),
        "pipeline_vs_bare": round(out["pipeline"]["windows_per_cpu_s"] / fb, 3),
    }
    total = stages.pop("total")
    ftotal = sum(floor_stages.values())
    n = out["compute"]["windows"]
    out["stages_us_per_window"] = {
        "agent": {k: round(v / n * 1e6, 2) for k, v in sorted(stages.items())},
        "floor": {k: round(v / n * 1e6, 2) for k, v in sorted(floor_stages.items())},
        "agent_total": round(total / n * 1e6, 2), "floor_total": round(ftotal / n * 1e6, 2),
    }
    extra = runs["pipeline"][-1]["stages_cpu_s"]
    out["stages_us_per_window"]["pipeline_only"] = {
        k: round(v / n * 1e6, 2) for k, v in sorted(extra.items())}
    out["rss"] = memory
    out["installed"] = agent_install_size()
    out["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out
