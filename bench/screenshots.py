"""Screenshots of the web pages for the README: ``python -m bench.screenshots [--out DIR]``.

Starts the aggregator on scratch stores with its embedded broker, lets two agents replay
FD001 engines through the shipped model (plant time ending now), resolves most maintenance
tickets as the truth file says (a real fault within 30 cycles of failure, else a false
alarm; a few stay open) and reports, at its true time, each failure no ticket warned of,
all through the REST API; has one agent run a candidate version as shadow and another
refuse it (for the models page), then photographs the pages at tablet width (768 px) in
Debian's chromium, driven by Playwright (never a downloaded browser). Prints one JSON
object: the files written and what the aggregator held.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from agent import config as agent_config
from agent.pipeline import Agent
from aggregator import audit, auth
from aggregator.db import open_engine, open_sessions
from aggregator.server import ServerThread
from aggregator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cmapss_fd001"
DATA = ROOT / "models" / "data" / "cmapss_fd001"
CHROMIUM = "/usr/bin/chromium"
TABLET = {"width": 768, "height": 1024}
LINES = {"line1": range(13, 25), "line2": range(26, 38)}  # FD001 engines, several near failure
OPEN_LEFT = 3  # maintenance tickets left open for the tickets page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _token(settings: Settings, name: str, scope: str) -> str:
    engine = open_engine(settings.db_url)
    try:
        with open_sessions(engine)() as session:
            _, token = auth.create_token(session, name, scope, audit.Actor("screenshots"))
            session.commit()
    finally:
        engine.dispose()
    return token


def _truth() -> dict[str, int]:
    """Each test engine's remaining cycles at the end of its record."""
    lines = (DATA / "RUL_FD001.txt").read_text().split()
    return {f"engine-{i:03d}": int(v) for i, v in enumerate(lines, start=1)}


def _fill(base: str, token: str, state: Path, broker: int) -> dict[str, Any]:
    start = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    agents = [Agent(agent_config.parse({
        "agent": {"id": f"gw-{line}", "site": "plant1", "line": line},
        "model": {"dir": str(MODEL)},
        "source": {"type": "replay", "path": str(DATA / "test_FD001.txt.gz"),
                   "assets": [f"engine-{i:03d}" for i in engines], "speed": 0,
                   "step_s": 600, "start": start},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker}"},
        "outbox": {"path": str(state / line / "outbox.db")},
        "publish": {"flush_interval_s": 0.2, "health_interval_s": 1},
    })) for line, engines in LINES.items()]
    threads = [threading.Thread(target=a.run, kwargs={"drain_timeout_s": 60}) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scored = sum(a.progress.windows_scored for a in agents)
    with httpx.Client(base_url=base, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        deadline = time.monotonic() + 60
        while api.get("/healthz").json()["counts"]["predictions_stored"] < scored:
            if time.monotonic() > deadline:
                raise SystemExit("screenshots: the aggregator did not store every window")
            time.sleep(0.2)
        truth = _truth()

        def fails_at(asset: str) -> str:
            """When the engine fails: its record's last window plus its remaining cycles,
            so the gateways' per-window estimate is checked against the truth."""
            scores = api.get(f"/assets/{asset}/scores", params={"limit": 1000}).json()
            last = datetime.fromisoformat(scores[-1]["window_end"])
            return (last + truth[asset] * timedelta(seconds=600)).isoformat()

        maintenance = api.get("/tickets", params={"kind": "maintenance"}).json()
        for i, t in enumerate(sorted(maintenance, key=lambda t: t["id"])[OPEN_LEFT:]):
            real = truth.get(t["asset"], 999) <= 30
            body: dict[str, Any] = ({"outcome": "confirmed_failure", "note": "failed",
                                     "failed_at": fails_at(t["asset"])}
                                    if real and i % 3 else
                                    {"outcome": "preventive_action", "note": "fixed in time"}
                                    if real else
                                    {"outcome": "no_fault_found", "note": "checked, fine"})
            api.post(f"/tickets/{t['id']}/resolve", json=body).raise_for_status()
        # Every engine that fails within 30 cycles and had no ticket: a missed failure,
        # reported at its true time.
        ticketed = {t["asset"] for t in maintenance}
        for line, engines in LINES.items():
            for asset in (f"engine-{i:03d}" for i in engines):
                if truth[asset] <= 30 and asset not in ticketed:
                    api.post("/failures", json={
                        "site": "plant1", "line": line, "asset": asset,
                        "at": fails_at(asset),
                        "note": "seized: no ticket warned of it"}).raise_for_status()
        opened = [t for t in api.get("/tickets").json() if t["status"] != "resolved"]
    return {"windows_scored": scored, "tickets": len(maintenance), "open": len(opened),
            "first_open": opened[-1]["id"] if opened else None}


def _candidate(base: str, token: str, broker: int) -> dict[str, Any]:
    """For the models page: gw-line1 runs a candidate version as shadow beside the live
    one (each of its windows scored again, a little higher), and gw-line2
    refused that assignment. Sent as the agents would, through the broker."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from contract.wire import Deployment, Envelope, Health, ModelRef, Prediction, encode, topic

    card = json.loads((MODEL / "card.json").read_text())
    live = ModelRef(name=card["name"], version=card["version"], sha256=card["sha256"]["model"],
                    threshold=card["threshold"]["value"])
    candidate = live.model_copy(update={"version": "1.1.0", "sha256": "0" * 64})
    now = datetime.now(UTC)
    with httpx.Client(base_url=base, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        agents = {a["agent"]: a for a in api.get("/agents").json()}
        since = (now - timedelta(days=3)).isoformat()
        windows = [Prediction(asset=asset, window_start=p["window_start"],
                              window_end=p["window_end"], score=min(1.0, p["score"] * 1.05),
                              alert=p["score"] * 1.05 >= live.threshold)
                   for asset in (f"engine-{i:03d}" for i in LINES["line1"])
                   for p in api.get(f"/assets/{asset}/scores",
                                    params={"since": since, "limit": 1000}).json()]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="screenshots-candidate")
        client.connect("127.0.0.1", broker)
        client.loop_start()
        sent = []
        for agent, line, state in (("gw-line1", "line1", "applied"),
                                   ("gw-line2", "line2", "refused")):
            seq = agents[agent]["last_seq"] + 1
            deployment = Deployment(
                assignment="fd001-1.1.0", state=state, at=now - timedelta(hours=23),
                live=live, shadow=candidate if state == "applied" else None,
                reason="" if state == "applied" else "sha256 of the downloaded model does "
                "not match the assignment's")
            health = Envelope.build(agent, seq, live, [Health(
                at=now, windows_scored=0, outbox_depth=0, deployment=deployment)])
            sent.append(client.publish(topic("plant1", line, agent, "health"), encode(health),
                                       qos=1))
            if state == "applied":
                shadow = candidate.model_copy(update={"role": "shadow"})
                for n, start in enumerate(range(0, len(windows), 500)):
                    batch = Envelope.build(agent, seq + 1 + n, shadow,
                                           windows[start:start + 500])  # type: ignore[arg-type]
                    sent.append(client.publish(topic("plant1", line, agent, "predictions"),
                                               encode(batch), qos=1))
        for info in sent:
            info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        deadline = time.monotonic() + 30
        while not all(a.get("deployment") for a in api.get("/agents").json()):
            if time.monotonic() > deadline:
                raise SystemExit("screenshots: the deployments were not recorded")
            time.sleep(0.2)
    return {"shadow_windows": len(windows)}


def _shoot(base: str, token: str, out: Path, ticket: int | None) -> list[str]:
    from playwright.sync_api import sync_playwright

    # The replay's windows end a day ago and more: the models page's gate over 3 days.
    pages = {"tickets": "/ui/tickets", "fleet": "/ui/fleet", "models": "/ui/models?period=3d",
             "health": "/ui/health"}
    if ticket is not None:
        pages["ticket"] = f"/ui/tickets/{ticket}"
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(viewport=TABLET).new_page()
            page.goto(f"{base}/ui/sign-in")
            page.fill("#token", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/tickets")
            for name, path in pages.items():
                page.goto(f"{base}{path}")
                page.wait_for_load_state("networkidle")
                target = out / f"{name}.png"
                page.screenshot(path=str(target), full_page=True)
                written.append(str(target))
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots",
                   help="directory for the PNGs (default docs/screenshots)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="linewatch-screenshots-"))
    broker, http = _free_port(), _free_port()
    settings = Settings(embedded_broker_port=broker, http_port=http,
                        series_path=state / "series.db", db_url=f"sqlite:///{state}/lw.db",
                        models_dir=MODEL.parent, visit_cost=350.0, currency="EUR",
                        mqtt_client_id="linewatch-screenshots")
    token = _token(settings, "maintenance-lead", "write")
    server = ServerThread(settings)
    server.start()
    base = f"http://127.0.0.1:{http}"
    try:
        if not server.app.state.subscriber.wait_ready(10):
            raise SystemExit("screenshots: the aggregator did not subscribe to its broker")
        filled = _fill(base, token, state, broker)
        filled |= _candidate(base, token, broker)
        written = _shoot(base, token, args.out, filled.pop("first_open"))
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    json.dump({"written": written, **filled}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
