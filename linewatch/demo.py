"""``linewatch demo``: the whole loop on one machine, with nothing installed.

An embedded MQTT broker (amqtt) and an embedded series store (SQLite) stand in for
Mosquitto and InfluxDB unless the demo config names real ones. The aggregator serves its
API; one agent per line replays C-MAPSS FD001 test engines through the failure model; the
demo prints progress, then every ticket raised (maintenance, sensor, inspect,
retraining), the maintenance tickets checked against the truth file.

``--data FILE`` replays any file in the model's input format instead, its assets shared out
among the configured agents: how a team checks a model against new data before trusting
it. ``--json`` prints one JSON object on stdout (progress goes to stderr).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field

from agent import config as agent_config
from agent.pipeline import Agent
from contract.card import ModelCard
from linewatch.tables import read_data

if TYPE_CHECKING:
    from aggregator.settings import Settings

__all__ = ["DemoAgentConfig", "DemoConfig", "assign_assets", "run_demo"]


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
    for name in ("httpx", "httpcore", "transitions", "amqtt"):
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
        # Model health judges the model against its card's test F1.
        models_dir=demo.model.parent,
        # Stable, so a real broker keeps one persistent session for the demo, not one per run.
        mqtt_client_id="linewatch-demo",
    )


def _demo_token(settings: Settings) -> str:
    """An admin token in the demo's own (fresh) database, made before the aggregator starts
    so that it does not warn that there is none."""
    from aggregator import audit, auth
    from aggregator.db import open_engine, open_sessions

    engine = open_engine(settings.db_url)
    try:
        with open_sessions(engine)() as session:
            _, token = auth.create_token(session, "demo", "admin", audit.Actor("demo"))
            session.commit()
    finally:
        engine.dispose()
    return token


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


def _truth(demo: DemoConfig, card: ModelCard) -> dict[str, float]:
    """Cycles each engine really had left at the end of its record."""
    if demo.truth is None:
        return {}
    replayed = {asset for a in demo.agents for asset in a.assets}
    recs = read_data(card.input, demo.data, truth=demo.truth)
    return {r.asset: float(r.labels["rul"][-1]) for r in recs
            if r.asset in replayed and "rul" in r.labels}


def assign_assets(demo: DemoConfig, data: Path, card: ModelCard) -> DemoConfig:
    """``demo`` replaying ``data``: its assets shared out in order among the configured
    agents (fewer agents if the file has fewer assets)."""
    assets = sorted({r.asset for r in read_data(card.input, data)})
    agents = demo.agents[: max(1, min(len(demo.agents), len(assets)))]
    bounds = [round(i * len(assets) / len(agents)) for i in range(len(agents) + 1)]
    return demo.model_copy(update={"data": data, "agents": [
        a.model_copy(update={"assets": assets[lo:hi]})
        for a, lo, hi in zip(agents, bounds, bounds[1:], strict=False)]})


def _wait_stored(api: httpx.Client, predictions: int, events: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline:
        counts = api.get("/healthz").json()["counts"]
        stored = counts["predictions_stored"]
        if stored >= predictions and counts["drift_events_stored"] >= events:
            break
        time.sleep(0.2)
    return stored


def _ticket_json(t: dict[str, Any]) -> dict[str, Any]:
    out = {k: t[k] for k in ("id", "kind", "status", "outcome", "site", "line", "agent",
                             "opened_at", "received_at", "updated_at", "escalations",
                             "evidence")}
    if t["kind"] == "retraining":
        out["assets"] = t["evidence"].get("assets", [])
        out["model"] = t["asset"]
    else:
        out["asset"] = t["asset"]
    return out


def _summary(demo: DemoConfig, api: httpx.Client, card: ModelCard,
             agents: list[Agent], scored: int, stored: int) -> dict[str, Any]:
    """Everything the demo found, as one JSON-able object (the text report reads it too)."""
    tickets = [_ticket_json(t) for t in api.get("/tickets", params={"limit": 10_000}).json()]
    live = [t for t in tickets if t["outcome"] != "superseded"]
    counts: dict[str, Any] = {k: sum(t["kind"] == k for t in live)
                              for k in ("maintenance", "sensor", "inspect", "retraining")}
    counts["superseded"] = len(tickets) - len(live)
    counts["reclassified"] = sum("reclassified_from" in t["evidence"] for t in live)
    truth = _truth(demo, card)
    check = None
    horizon = card.output.horizon
    if truth and horizon:
        ticketed = {t["asset"] for t in live if t["kind"] == "maintenance"}
        near = {a for a, left in truth.items() if left <= horizon}
        check = {"horizon": horizon, "engines_near_failure": len(near),
                 "near_failure_ticketed": len(near & ticketed),
                 "maintenance_tickets": len(ticketed),
                 "maintenance_tickets_right": len(near & ticketed),
                 "maintenance_tickets_wrong": len(ticketed - near)}
    return {
        "model": {"name": card.name, "version": card.version, "meaning": card.output.meaning,
                  "threshold": card.threshold.value},
        "data": str(demo.data), "assets": sum(len(a.assets) for a in demo.agents),
        "agents": len(demo.agents),
        "windows": {"scored": scored, "stored": stored,
                    "alerting": sum(a.progress.alerts for a in agents)},
        "conditions": {"drift": sum(a.progress.drift_events for a in agents),
                       "quality": sum(a.progress.quality_events for a in agents)},
        "monitoring": agents[0].calibration.report.model_dump(mode="json"),
        "counts": counts, "truth": check, "tickets": tickets,
        "rule": {"k": demo.rule_k, "n": demo.rule_n},
    }


def _report(summary: dict[str, Any], out: TextIO, truth: dict[str, float]) -> None:
    c = summary["counts"]
    tickets = [t for t in summary["tickets"] if t["outcome"] != "superseded"]
    print(f"\nTickets: {c['maintenance']} maintenance, {c['sensor']} sensor, {c['inspect']} "
          f"inspect, {c['retraining']} retraining"
          + (f" ({c['reclassified']} reclassified, {c['superseded']} superseded by later "
             "evidence)" if c["reclassified"] or c["superseded"] else ""), file=out)
    rule = summary["rule"]
    maintenance = sorted((t for t in tickets if t["kind"] == "maintenance"),
                         key=lambda t: t["asset"])
    if maintenance:
        print(f"\nMaintenance tickets (score >= {summary['model']['threshold']:.2f} in "
              f"{rule['k']} of the last {rule['n']} windows, inputs as in training):", file=out)
        print(f"  {'ticket':>6}  {'asset':<11} {'agent':<9} {'latest window (plant time)':<26} "
              f"{'score':>5} {'escalations':>11}  {'true cycles left at end':>23}", file=out)
        for t in maintenance:
            latest = (t["evidence"].get("scores") or [{}])[-1]
            score, end = latest.get("score"), str(latest.get("window_end", ""))[:16]
            left = truth.get(t["asset"])
            print(f"  {t['id']:>6}  {t['asset']:<11} {t['agent']:<9} {end:<26} "
                  f"{'' if score is None else f'{score:.2f}':>5} {t['escalations']:>11}  "
                  f"{'' if left is None else f'{left:.0f}':>23}", file=out)
    for kind, title in (("sensor", "Sensor tickets (check the sensor)"),
                        ("inspect", "Inspect tickets (the model cannot judge this asset)")):
        rows = sorted((t for t in tickets if t["kind"] == kind), key=lambda t: t["asset"])
        if rows:
            print(f"\n{title}:", file=out)
        for t in rows:
            ev = t["evidence"]
            print(f"  {t['id']:>6}  {t['asset']:<11} {t['agent']:<9} "
                  f"{', '.join(ev.get('channels', []))[:40]:<40} since "
                  f"{str(ev.get('since', ''))[:16]}"
                  + ("  (was maintenance)" if "reclassified_from" in ev else ""), file=out)
    for t in (t for t in tickets if t["kind"] == "retraining"):
        ev = t["evidence"]
        print(f"\nRetraining ticket {t['id']} for {t['model']}: inputs moved on "
              f"{ev['assets_moved']} assets ({', '.join(ev['lines'])}) from {ev['from'][:16]} to "
              f"{ev['to'][:16]}; the budget expected {ev['expected_by_budget']:.2g} such alarms "
              f"(p = {ev['p_value']:.1e}). The model cannot judge {ev['blind']['assets']} assets "
              f"({ev['blind']['alerting_not_trusted']} alerting, not trusted). Signals: "
              + ", ".join(s["signal"] for s in ev["signals"][:6]), file=out)
    check = summary["truth"]
    if check:
        hit, near, n = (check["near_failure_ticketed"], check["engines_near_failure"],
                        check["maintenance_tickets"])
        print(f"\nAgainst the truth file: {near} engines were within {check['horizon']} cycles "
              f"of failure at the end of their record and {hit} of them got a ticket"
              f"{_pct(hit, near)}. {hit} of {n} tickets were right{_pct(hit, n)}; "
              f"{check['maintenance_tickets_wrong']} went to engines with more than "
              f"{check['horizon']} cycles left.", file=out)


class _Stop(Exception):
    """SIGTERM, turned into an exception so the demo shuts down as on Ctrl-C."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Stop


def run_demo(
    path: Path,
    *,
    serve: bool = False,
    speed: float | None = None,
    data: Path | None = None,
    truth: Path | None = None,
    as_json: bool = False,
) -> int:
    """Run the demo; return the exit code (1 if the aggregator did not store everything)."""
    from aggregator.server import ServerThread

    demo = DemoConfig.model_validate(yaml.safe_load(Path(path).read_text()))
    if speed is not None:
        demo = demo.model_copy(update={"speed": speed})
    card = ModelCard.load(demo.model)
    if data is not None:
        demo = assign_assets(demo, data, card).model_copy(update={"truth": truth})
    elif truth is not None:
        demo = demo.model_copy(update={"truth": truth})
    # With --json, stdout carries the one JSON object and nothing else.
    out = sys.stderr if as_json else sys.stdout
    if demo.state_dir.exists():
        shutil.rmtree(demo.state_dir)
    demo.state_dir.mkdir(parents=True)
    log_path = _log_to_file(demo.state_dir / "demo.log")
    broker_port = _free_port()
    http_port = demo.http_port if _port_free(demo.http_port) else _free_port()
    settings = _settings(demo, broker_port, http_port)
    mqtt_url = demo.mqtt_url or f"mqtt://127.0.0.1:{broker_port}"
    print(f"log: {log_path} (warnings also here)", file=out)
    print(f"broker: {mqtt_url} ({'configured' if demo.mqtt_url else 'embedded amqtt'}); "
          f"series: {demo.influx_url or f'embedded SQLite {settings.series_path}'}", file=out)
    token = _demo_token(settings)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    server = ServerThread(settings)
    server.start()
    base = f"http://127.0.0.1:{http_port}"
    # The token is printed here, once; the log file never sees it.
    print(f"aggregator API: {base} (token: {token}; send it as 'Authorization: Bearer "
          f"<token>'; OpenAPI docs at {base}/docs, where \"Authorize\" takes it)", file=out)
    agents: list[Agent] = []
    try:
        agents = [Agent(_agent_config(demo, a, mqtt_url)) for a in demo.agents]
        n_assets = sum(len(a.assets) for a in demo.agents)
        print(f"model {card.name} {card.version}: {card.output.meaning}", file=out)
        print(f"{len(agents)} agents replaying {n_assets} assets from {demo.data}\n", file=out)
        threads = [threading.Thread(target=a.run, name=f"agent-{a.config.agent.id}")
                   for a in agents]
        for t in threads:
            t.start()
        tty = out.isatty()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, timeout=10, headers=auth) as api:
            while any(t.is_alive() for t in threads):
                # On a terminal the progress line rewrites itself; in a log, one line a second.
                print(_line(agents, api), end="\r" if tty else "\n", flush=True, file=out)
                for t in threads:
                    t.join(timeout=1.0 / len(threads))
            print(_line(agents, api) + " " * 4, file=out)
            scored = sum(a.progress.windows_scored for a in agents)
            events = sum(a.progress.events_sent for a in agents)
            stored = _wait_stored(api, scored, events, timeout_s=30)
            print(f"\nall replays ended: {scored} windows scored, {stored} stored by the "
                  "aggregator", file=out)
            summary = _summary(demo, api, card, agents, scored, stored)
            if as_json:
                sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
            else:
                _report(summary, out, _truth(demo, card))
                _drift(api, out)
            if serve:
                print(f"\nAPI: {base}/tickets  {base}/agents  {base}/drift  {base}/healthz  "
                      f"{base}/reports/model-health  {base}/docs\n(with the token printed at "
                      f"the start, e.g. curl -H 'Authorization: Bearer lw_...' {base}/tickets)"
                      "\nserving until Ctrl-C "
                      "(or SIGTERM)", file=out)
                while True:
                    time.sleep(3600)
            print(f"\nThe API has stopped with the demo; `make demo DEMO_ARGS=--serve` keeps it "
                  f"up. Everything is kept in {demo.state_dir} until the next run.", file=out)
        return 0 if stored >= scored else 1
    except (KeyboardInterrupt, _Stop) as exc:
        for a in agents:
            a.stop()
        why = "SIGTERM" if isinstance(exc, _Stop) else "Ctrl-C"
        print(f"\n{why}: stopping the agents and the aggregator", file=out)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        if not as_json:
            print("demo stopped", file=out)


def _drift(api: httpx.Client, out: TextIO) -> None:
    drift = api.get("/drift", params={"limit": 10_000}).json()
    shown = drift[:5]
    print(f"\nDrift and data-quality events reported by the agents: {len(drift)}"
          + (f" (the newest {len(shown)} below)" if len(drift) > len(shown) else "")
          + "".join(f"\n  {d['agent']} {d['asset'] or '(all its assets)'} {d['monitor']} "
                    f"{d['detector']}: {d['detail']}" for d in shown), file=out)


def _pct(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.0f}%)" if whole else ""
