"""``linewatch demo``: the whole loop on one machine, with nothing installed.

An embedded MQTT broker (amqtt) and an embedded series store (SQLite) stand in for
Mosquitto and InfluxDB unless the demo config names real ones. The aggregator serves its
API; one agent per line replays C-MAPSS FD001 test engines through the failure model; the
demo prints progress, then the maintenance tickets raised, checked against the truth file.
"""

from __future__ import annotations

import logging
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field

from agent import config as agent_config
from agent.datasets import read_recordings
from agent.pipeline import Agent
from contract.card import ModelCard

if TYPE_CHECKING:
    from aggregator.settings import Settings

__all__ = ["DemoAgentConfig", "DemoConfig", "run_demo"]


class DemoAgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    line: str
    assets: list[str] = Field(min_length=1)


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: str = "plant1"
    model: Path
    data: Path
    truth: Path | None = None
    speed: float = Field(0.0, ge=0)
    step_s: float = Field(600.0, gt=0)
    state_dir: Path = Path("var/demo")
    mqtt_url: str | None = None
    influx_url: str | None = None
    http_port: int = 8000
    rule_k: int = 3
    rule_n: int = 5
    agents: list[DemoAgentConfig] = Field(min_length=1)


def _log_to_file(path: Path) -> Path:
    """Everything at INFO to a file; only warnings and errors on the console, so the
    progress lines stay readable."""
    root = logging.getLogger()
    for h in root.handlers:
        h.setLevel(logging.WARNING)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Per-request and per-state-change lines from libraries drown everything else.
    for name in ("httpx", "transitions", "amqtt"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _agent_config(demo: DemoConfig, a: DemoAgentConfig, mqtt_url: str) -> agent_config.AgentConfig:
    return agent_config.parse({
        "agent": {"id": a.id, "site": demo.site, "line": a.line},
        "model": {"dir": str(demo.model)},
        "source": {"type": "replay", "path": str(demo.data), "assets": a.assets,
                   "speed": demo.speed, "step_s": demo.step_s,
                   "start": "2026-01-01T00:00:00Z"},
        "mqtt": {"url": mqtt_url},
        "outbox": {"path": str(demo.state_dir / a.id / "outbox.db")},
        "publish": {"flush_interval_s": 0.5, "health_interval_s": 5},
    })


def _settings(demo: DemoConfig, broker_port: int, http_port: int) -> Settings:
    from aggregator.settings import Settings

    return Settings(
        mqtt_url=demo.mqtt_url, embedded_broker_port=broker_port,
        influx_url=demo.influx_url, influx_database="linewatch_demo",
        series_path=demo.state_dir / "series.db",
        db_url=f"sqlite:///{demo.state_dir / 'linewatch.db'}",
        rule_k=demo.rule_k, rule_n=demo.rule_n, http_port=http_port,
        # Stable, so a real broker keeps one persistent session for the demo, not one per run.
        mqtt_client_id="linewatch-demo",
    )


def _line(agents: list[Agent], api: httpx.Client) -> str:
    ticks = sum(a.progress.ticks for a in agents)
    total = sum(a.progress.total_ticks or 0 for a in agents) or 1
    scored = sum(a.progress.windows_scored for a in agents)
    alerts = sum(a.progress.alerts for a in agents)
    acked = sum(a.progress.published for a in agents)
    buffered = sum(a.progress.outbox_depth for a in agents)
    tickets = len(api.get("/tickets", params={"status": "open"}).json())
    return (f"replay {100 * ticks / total:5.1f}% | {scored:6d} windows scored | "
            f"{alerts:5d} above threshold | {acked:5d} messages acked, {buffered:4d} buffered"
            f" | {tickets:3d} tickets open")


def _truth(demo: DemoConfig) -> dict[str, float]:
    """Cycles each engine really had left at the end of its record."""
    if demo.truth is None:
        return {}
    replayed = {asset for a in demo.agents for asset in a.assets}
    recs = read_recordings(demo.data, "cmapss", truth=demo.truth)
    return {r.asset: float(r.labels["rul"][-1]) for r in recs if r.asset in replayed}


def _wait_stored(api: httpx.Client, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline:
        stored = api.get("/healthz").json()["counts"]["predictions_stored"]
        if stored >= expected:
            break
        time.sleep(0.2)
    return stored


def _report(demo: DemoConfig, api: httpx.Client, card: ModelCard) -> None:
    tickets = api.get("/tickets").json()
    truth = _truth(demo)
    horizon = card.output.horizon
    print(f"\nMaintenance tickets raised: {len(tickets)} "
          f"(rule: score >= {card.threshold.value:.2f} in {demo.rule_k} of the last "
          f"{demo.rule_n} windows)")
    print(f"  {'ticket':>6}  {'asset':<11} {'agent':<9} {'latest window (plant time)':<26} "
          f"{'score':>5} {'escalations':>11}  {'true cycles left at end':>23}")
    for t in sorted(tickets, key=lambda t: t["asset"]):
        latest = (t["evidence"].get("scores") or [{}])[-1]
        score, end = latest.get("score"), str(latest.get("window_end", ""))[:16]
        left = truth.get(t["asset"])
        print(f"  {t['id']:>6}  {t['asset']:<11} {t['agent']:<9} {end:<26} "
              f"{'' if score is None else f'{score:.2f}':>5} {t['escalations']:>11}  "
              f"{'' if left is None else f'{left:.0f}':>23}")
    if truth and horizon:
        ticketed = {t["asset"] for t in tickets}
        near = {a for a, left in truth.items() if left <= horizon}
        hit = len(near & ticketed)
        false = len(ticketed - near)
        print(f"\nAgainst the truth file: {len(near)} engines were within {horizon} cycles of "
              f"failure at the end of their record and {hit} of them got a ticket"
              f"{_pct(hit, len(near))}. {hit} of {len(ticketed)} tickets were right"
              f"{_pct(hit, len(ticketed))}; {false} went to engines with more than {horizon} "
              "cycles left.")


def _pct(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.0f}%)" if whole else ""


def run_demo(path: Path, *, serve: bool = False, speed: float | None = None) -> int:
    from aggregator.server import ServerThread

    demo = DemoConfig.model_validate(yaml.safe_load(Path(path).read_text()))
    if speed is not None:
        demo = demo.model_copy(update={"speed": speed})
    if demo.state_dir.exists():
        shutil.rmtree(demo.state_dir)
    demo.state_dir.mkdir(parents=True)
    log_path = _log_to_file(demo.state_dir / "demo.log")
    broker_port = _free_port()
    http_port = demo.http_port if _port_free(demo.http_port) else _free_port()
    settings = _settings(demo, broker_port, http_port)
    mqtt_url = demo.mqtt_url or f"mqtt://127.0.0.1:{broker_port}"
    print(f"log: {log_path} (warnings also here)")
    print(f"broker: {mqtt_url} ({'configured' if demo.mqtt_url else 'embedded amqtt'}); "
          f"series: {demo.influx_url or f'embedded SQLite {settings.series_path}'}")
    server = ServerThread(settings)
    server.start()
    base = f"http://127.0.0.1:{http_port}"
    print(f"aggregator API: {base}  (OpenAPI docs at {base}/docs)")
    try:
        agents = [Agent(_agent_config(demo, a, mqtt_url)) for a in demo.agents]
        card = agents[0].model.card
        n_assets = sum(len(a.assets) for a in demo.agents)
        print(f"model {card.name} {card.version}: {card.output.meaning}")
        print(f"{len(agents)} agents replaying {n_assets} engines from {demo.data}\n")
        threads = [threading.Thread(target=a.run, name=f"agent-{a.config.agent.id}")
                   for a in agents]
        for t in threads:
            t.start()
        tty = sys.stdout.isatty()
        with httpx.Client(base_url=base, timeout=10) as api:
            while any(t.is_alive() for t in threads):
                # On a terminal the progress line rewrites itself; in a log, one line a second.
                print(_line(agents, api), end="\r" if tty else "\n", flush=True)
                for t in threads:
                    t.join(timeout=1.0 / len(threads))
            print(_line(agents, api) + " " * 4)
            scored = sum(a.progress.windows_scored for a in agents)
            stored = _wait_stored(api, scored, timeout_s=30)
            print(f"\nall replays ended: {scored} windows scored, {stored} stored by the "
                  "aggregator")
            _report(demo, api, card)
            drift = api.get("/drift").json()
            print(f"\nDrift and data-quality events reported by the agents: {len(drift)}"
                  + "".join(f"\n  {d['agent']} {d['asset'] or '(all its assets)'} {d['monitor']} "
                            f"{d['detector']}: {d['detail']}" for d in drift[:5]))
            print(f"\nAPI: {base}/tickets  {base}/agents  {base}/drift  {base}/healthz  "
                  f"{base}/docs")
            if serve:
                print("serving until Ctrl-C")
                while True:
                    time.sleep(3600)
        return 0 if stored >= scored else 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
