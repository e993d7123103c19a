"""The web pages (issue #11) in a real browser: Debian's chromium, driven by Playwright
(never a downloaded browser), against the real aggregator on Mosquitto, filled by one
agent replaying FD001 engines through the shipped model, with outcomes a technician gave
through the API.

- every page renders with data, without a console error, asks nothing of any host but
  the aggregator (``page.on("request")``), and does not scroll sideways at 768 px;
- the figures are the API's: the ticket cards are ``GET /tickets``'s open tickets, model
  health shows ``GET /health/models``'s precision;
- a ticket resolved from the page shows its outcome through the API, recorded with the
  token's name;
- without a session every page redirects to the sign-in form; a form posted without or
  with a wrong CSRF token is refused and changes nothing; a read session cannot act; a
  revoked token ends its sessions; the JSON API does not take the session cookie.

One aggregator, one replay and one browser serve the whole module.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from agent_support import ROOT, agent_cfg
from aggregator_support import (
    Publisher,
    api_token,
    bearer,
    data_topic,
    payload,
    start_service,
    store_settings,
    wait_until,
)
from servers import MosquittoServer, ServerError, free_port

from agent.pipeline import Agent
from aggregator.server import ServerThread
from contract import artifact
from contract.wire import Deployment, DriftEvent, Health, ModelRef, Prediction, Range
from linewatch.registry import keygen

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
# FD001 test engines: four that end within 30 cycles of failure, two far from it.
NEAR = ["engine-018", "engine-020", "engine-024", "engine-031"]
FAR = ["engine-001", "engine-002"]
NOW = datetime.now(UTC).replace(microsecond=0)
PAGES = ["/ui/tickets", "/ui/fleet", "/ui/models", "/ui/health"]
TABLET = {"width": 768, "height": 1024}


@dataclass
class Plant:
    server: ServerThread
    api: httpx.Client  # admin
    tokens: dict[str, str]  # technician (write), viewer (read)
    tickets: list[dict[str, Any]]  # maintenance tickets, open after the setup
    broker: MosquittoServer


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    """The aggregator after one replay (plant time ending a day ago), two tickets resolved
    and one missed failure reported through the API, and one drift condition (sensor_11
    of engine-001 above its training range) from a second agent."""
    tmp_path = tmp_path_factory.mktemp("web")
    broker = MosquittoServer()
    try:
        broker.start()
    except ServerError as exc:
        broker.close()
        pytest.fail(str(exc), pytrace=False)
    port = free_port()
    server = start_service(store_settings(
        tmp_path, mqtt_url=broker.url, mqtt_client_id="agg-web", http_port=port,
        models_dir=ROOT / "models", signing_key_file=keygen(tmp_path / "keys")[0],
        public_url=f"http://127.0.0.1:{port}"))
    api = httpx.Client(base_url=server.url, timeout=30,
                       headers=bearer(api_token(server, "admin", "lead")))
    try:
        start = (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        agent = Agent(agent_cfg(tmp_path, broker.url, agent_id="gw-web",
                                assets=NEAR + FAR, start=start), record=True)
        report = agent.run(drain_timeout_s=60)
        assert report.drained
        wait_until(lambda: api.get("/healthz").json()["counts"]["predictions_stored"]
                   >= len(report.scored), 30, what="every scored window stored")
        maintenance = sorted(api.get("/tickets", params={"kind": "maintenance"}).json(),
                             key=lambda t: t["asset"])
        assert len(maintenance) >= 3, maintenance
        for t, outcome in zip(maintenance[:2], ("confirmed_failure", "no_fault_found"),
                              strict=True):
            done = api.post(f"/tickets/{t['id']}/resolve", json={"outcome": outcome})
            assert done.status_code == 200, done.text
        missed = api.post("/failures", json={
            "site": "plant1", "line": "line1", "asset": "engine-002",
            "at": (NOW - timedelta(days=1)).isoformat(), "note": "no ticket warned"})
        assert missed.status_code == 201, missed.text
        card = json.loads((ROOT / "models" / "cmapss_fd001" / "card.json").read_text())
        model = ModelRef(name="cmapss_fd001", version="1.0.0", sha256=card["sha256"]["model"],
                         threshold=card["threshold"]["value"])
        began = NOW - timedelta(days=1)
        drift = DriftEvent(asset="engine-001", at=began, monitor="sensor_11.mean",
                           detector="envelope", value=5.2, state="start", signal="feature",
                           channels=["sensor_11"], since=began, current=48.6, threshold=4.0,
                           reference=Range(low=47.1, high=48.1, mean=47.5),
                           detail="above its training range")
        with Publisher(broker.host, broker.port, data_topic("gw-drift", "drift", line="line1"),
                       client_id="web-drift") as pub:
            pub.publish(payload("gw-drift", 0, [drift], model))
        wait_until(lambda: api.get("/tickets", params={"asset": "engine-001"}).json(), 30,
                   what="a ticket for the drifting sensor")
        tokens = {"technician": api_token(server, "write", "technician"),
                  "viewer": api_token(server, "read", "viewer")}
        yield Plant(server, api, tokens, maintenance[2:], broker)
    finally:
        api.close()
        server.stop()
        broker.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (which must not fetch its own)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    page: Any
    console: list[str]
    hosts: set[str]


def open_tab(browser: Any, plant: Plant, who: str | None) -> Tab:
    """A fresh browser context at tablet width, signed in as ``who`` (None: not at all),
    recording console errors and the hosts it asks anything of."""
    context = browser.new_context(viewport=TABLET)
    page = context.new_page()
    tab = Tab(page, [], set())
    page.on("console", lambda m: tab.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.console.append(str(e)))
    page.on("request", lambda r: tab.hosts.add(urlsplit(r.url).netloc))
    if who is not None:
        page.goto(f"{plant.server.url}/ui/sign-in")
        page.fill("#token", plant.tokens[who])
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/ui/tickets$"))
    return tab


def no_sideways_scroll(page: Any) -> bool:
    return bool(page.evaluate(
        "document.scrollingElement.scrollWidth <= window.innerWidth"))


def signed_client(plant: Plant, who: str) -> tuple[httpx.Client, str]:
    """An HTTP client signed in through the sign-in form, and its session's CSRF token."""
    client = httpx.Client(base_url=plant.server.url, timeout=30, follow_redirects=False)
    form = client.get("/ui/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    done = client.post("/ui/sign-in", data={"csrf": csrf.group(1), "then": "/ui/fleet",
                                            "token": plant.tokens[who]})
    assert done.status_code == 303 and done.headers["location"] == "/ui/fleet", done.text
    page = client.get("/ui/fleet")
    assert page.status_code == 200
    session_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert session_csrf is not None
    return client, session_csrf.group(1)


def test_every_page_renders_with_the_apis_figures_on_a_tablet(plant: Plant,
                                                              browser: Any) -> None:
    tab = open_tab(browser, plant, "technician")
    page, aggregator = tab.page, urlsplit(plant.server.url).netloc
    open_tickets = [t for t in plant.api.get("/tickets").json() if t["status"] != "resolved"]

    page.goto(f"{plant.server.url}/ui/tickets")
    cards = page.locator("li.card.risk")
    assert cards.count() == len(open_tickets)
    assert {int(x) for x in cards.evaluate_all("els => els.map(e => e.dataset.ticket)")} == {
        t["id"] for t in open_tickets}
    text = page.inner_text("main")
    # The card's chance: the newest evidence score through the card's calibration map,
    # worded with the card's own meaning; similar alerts from the two resolved ones.
    assert re.search(r"(About \d|More than 9|Less than 1) in 10 chance that the engine "
                     r"fails within the next 30 cycles\.", text), text
    assert "1 of the last 2 similar alerts on line1 were confirmed" in text
    assert "Main drivers: not known" in text  # a maintenance ticket holds scores only
    assert "Main drivers: sensor 11 (mean) up." in text  # the drift condition's ticket
    assert no_sideways_scroll(page)

    ticket = plant.tickets[0]
    page.goto(f"{plant.server.url}/ui/tickets/{ticket['id']}")
    page.wait_for_selector(".chart canvas")
    assert ticket["asset"] in page.inner_text("h1")
    newest = max(ticket["evidence"]["scores"], key=lambda s: s["window_end"])["score"]
    assert f"newest score is {newest:.2f}" not in page.inner_text(".risk")  # it is a chance
    assert no_sideways_scroll(page)

    page.goto(f"{plant.server.url}/ui/fleet")
    agent = page.locator("li.agent[data-agent=gw-web]")
    assert agent.count() == 1
    words = agent.inner_text()
    assert "cmapss_fd001 1.0.0" in words and "Outbox backlog" in words
    assert re.search(r"Completeness, last 24 h\s+100\.0 %", words), words
    assert no_sideways_scroll(page)

    figures = plant.api.get("/health/models", params={"period": "30d"}).json()["overall"]
    page.goto(f"{plant.server.url}/ui/health")
    page.wait_for_selector(".chart canvas")
    precision = page.inner_text("[data-figure=precision]")
    assert precision.startswith(f"{100 * figures['precision']['value']:.0f} %"), precision
    assert f"{figures['real']} of {figures['alerts']} alerts" in precision
    assert f"{figures['missed']} missed" in page.inner_text("[data-figure=recall]")
    # The gateway's own estimate, the same figure as the API's, with what it is checked on.
    assert {c["metric"] for c in figures["estimates"]} == {"precision", "recall", "f1"}
    for check in figures["estimates"]:
        said = page.inner_text(f"[data-estimate={check['metric']}]")
        assert f"the gateways estimated {100 * check['estimated']:.0f} %" in said, said
        assert ("the windows judged" if check["basis"] == "windows"
                else "counting machines, not windows") in said, said
    assert "engine-001: sensor_11.mean (envelope)" in page.inner_text("ol.timeline")
    assert no_sideways_scroll(page)
    page.select_option("select[name=group]", "cmapss_fd001@1.0.0")
    page.click(".selector button")
    page.wait_for_url(re.compile(r"group=cmapss_fd001"))
    assert page.inner_text("[data-figure=precision]") == precision  # one model version

    for docs in ("/docs", "/redoc"):
        page.goto(f"{plant.server.url}{docs}")
    assert tab.console == []
    assert tab.hosts == {aggregator}
    page.context.close()


def test_the_models_page_shows_versions_per_agent_and_a_refused_deployments_reason(
        plant: Plant, browser: Any) -> None:
    """Two gateways on an assignment: one runs a candidate as shadow beside the live
    version (its gate figures: windows both scored in the last 24 h), one refused it (in
    red, with its reason). Their models come from their own messages, through Mosquitto."""
    card = json.loads((ROOT / "models" / "cmapss_fd001" / "card.json").read_text())
    live = ModelRef(name="cmapss_fd001", version="1.0.0", sha256=card["sha256"]["model"],
                    threshold=card["threshold"]["value"])
    shadow = live.model_copy(update={"version": "1.1.0", "sha256": "cd" * 32,
                                     "role": "shadow"})
    candidate = shadow.model_copy(update={"role": None})
    reason = "signature does not verify with the trusted key"
    began = NOW - timedelta(hours=3)

    def windows(asset: str, score: float) -> list[Prediction]:
        # Far below the threshold: no ticket for the other tests to meet.
        return [Prediction(asset=asset, window_start=began + timedelta(minutes=i),
                           window_end=began + timedelta(minutes=i + 1), score=score,
                           alert=False) for i in range(30)]

    def report(state: str, why: str = "") -> Health:
        return Health(at=began + timedelta(minutes=40), windows_scored=30, outbox_depth=0,
                      deployment=Deployment(assignment="fd001-1.1.0", state=state,
                                            at=began + timedelta(minutes=1), live=live,
                                            shadow=candidate if state == "applied" else None,
                                            reason=why))

    with Publisher(plant.broker.host, plant.broker.port, data_topic("gw-shadow", line="line1"),
                   client_id="web-models") as pub:
        pub.publish(payload("gw-shadow", 0, windows("engine-101", 0.01), live))
        pub.publish(payload("gw-shadow", 1, windows("engine-101", 0.02), shadow))
        pub.publish(payload("gw-shadow", 2, [report("applied")], live),
                    data_topic("gw-shadow", "health", line="line1"))
        pub.publish(payload("gw-refused", 0, [report("refused", reason)], live),
                    data_topic("gw-refused", "health", line="line1"))
    wait_until(lambda: {a["agent"]: a.get("deployment") for a in
                        plant.api.get("/agents").json()}.get("gw-refused"), 30,
               what="both deployments reported")

    tab = open_tab(browser, plant, "viewer")
    page = tab.page
    page.goto(f"{plant.server.url}/ui/models")
    assert page.locator("nav a[aria-current=page]").inner_text() == "Models"
    on = page.locator("li.agent[data-agent=gw-shadow]").inner_text()
    assert re.search(r"Live model\s+cmapss_fd001 1\.0\.0", on), on
    assert re.search(r"Shadow model\s+cmapss_fd001 1\.1\.0", on), on
    assert "applied" in on and "fd001-1.1.0" in on
    refused = page.locator("li.agent.refused[data-agent=gw-refused]")
    assert refused.count() == 1
    said = refused.locator(".refused-text")
    assert reason in said.inner_text()
    assert said.evaluate("e => getComputedStyle(e).color") == "rgb(180, 35, 24)"  # --red
    assert re.search(r"Shadow model\s+none", refused.inner_text())
    pair = page.locator("li.pair[data-shadow='cmapss_fd001 1.1.0']")
    assert pair.get_attribute("data-live") == "cmapss_fd001 1.0.0"
    assert "on gw-shadow" in pair.inner_text()
    figures = {name: pair.locator(f"[data-figure={name}]").inner_text()
               for name in ("verdict", "windows", "agreement", "alerts", "drift")}
    assert figures == {"verdict": "not yet: 30 of 200 windows", "windows": "30",
                       "agreement": "100.0 %",
                       "alerts": "0 by the shadow, 0 by the version it would replace; "
                                 "scores differ by 0.010 (median)",
                       "drift": "0 conditions on its agents"}, figures
    assert no_sideways_scroll(page)
    assert tab.console == []
    page.context.close()


def test_the_models_page_names_a_canary_and_judges_it_as_the_candidate(
        plant: Plant, browser: Any, tmp_path: Path) -> None:
    """A canary from the registry: the new version is live on its agent and the old one
    runs beside it as shadow. The page must say that the live one is on trial, and judge
    it, not the old one, as the candidate."""
    card = json.loads((ROOT / "models" / "cmapss_fd001" / "card.json").read_text())
    old = ModelRef(name="cmapss_fd001", version="1.0.0", sha256=card["sha256"]["model"],
                   threshold=card["threshold"]["value"])
    new = old.model_copy(update={"version": "1.2.0"})
    began = NOW - timedelta(hours=2)

    def windows(score: float, alert_every: int) -> list[Prediction]:
        # Far below the threshold apart from alerts too few for a maintenance ticket
        # (fewer than its 3 of 5).
        alerts = {i for i in range(20) if alert_every and i % alert_every == 0}
        return [Prediction(asset="engine-201", window_start=began + timedelta(minutes=i),
                           window_end=began + timedelta(minutes=i + 1),
                           score=0.9 if i in alerts else score, alert=i in alerts)
                for i in range(20)]

    health = Health(at=began + timedelta(minutes=30), windows_scored=20, outbox_depth=0,
                    deployment=Deployment(assignment="fd001-1.2.0-canary", state="applied",
                                          at=began, live=new,
                                          shadow=old.model_copy(update={"role": None})))
    with Publisher(plant.broker.host, plant.broker.port, data_topic("gw-canary", "health",
                   line="line2"), client_id="web-canary") as pub:
        pub.publish(payload("gw-canary", 0, [health], new))
    wait_until(lambda: "gw-canary" in {a["agent"] for a in plant.api.get("/agents").json()},
               30, what="the canary's agent")

    copy = Path(shutil.copytree(ROOT / "models" / "cmapss_fd001", tmp_path / "v1.2.0"))
    changed = json.loads((copy / "card.json").read_text()) | {"version": "1.2.0"}
    (copy / "card.json").write_text(json.dumps(changed, indent=2))
    for model_dir in (ROOT / "models" / "cmapss_fd001", copy):
        up = plant.api.post("/registry/versions", content=artifact.pack(model_dir),
                            headers={"Content-Type": "application/gzip"})
        assert up.status_code in (201, 409), up.text  # 1.0.0 may be there from another test
    target = {"agents": ["gw-canary"]}
    live = plant.api.post("/registry/assignments", json={
        "name": "cmapss_fd001", "version": "1.0.0", "stage": "live", "target": target})
    assert live.status_code == 201, live.text
    canary = plant.api.post("/registry/assignments", json={
        "name": "cmapss_fd001", "version": "1.2.0", "stage": "canary", "target": target,
        "share": 1.0})
    assert canary.status_code == 201, canary.text

    def stored() -> int:
        return int(plant.api.get("/healthz").json()["counts"]["predictions_stored"])

    before = stored()
    with Publisher(plant.broker.host, plant.broker.port, data_topic("gw-canary", line="line2"),
                   client_id="web-canary") as pub:
        pub.publish(payload("gw-canary", 1, windows(0.02, 10), new))  # 2 alerts
        pub.publish(payload("gw-canary", 2, windows(0.01, 0),
                            old.model_copy(update={"role": "shadow"})))
    wait_until(lambda: stored() >= before + 40, 30, what="both versions' windows stored")

    tab = open_tab(browser, plant, "viewer")
    page = tab.page
    page.goto(f"{plant.server.url}/ui/models")
    pair = page.locator("li.pair[data-live='cmapss_fd001 1.2.0']")
    assert pair.count() == 1
    assert pair.get_attribute("data-shadow") == "cmapss_fd001 1.0.0"
    head = pair.locator(".head").inner_text()
    assert re.fullmatch(r"cmapss_fd001 1\.2\.0\s+as canary, live on gw-canary, judged "
                        r"against cmapss_fd001 1\.0\.0 running beside it as shadow", head), head
    assert "as shadow beside" not in head
    # The canary is the candidate: its 2 alerts against the old version's none.
    alerts = pair.locator("[data-figure=alerts]").inner_text()
    assert alerts.startswith("2 by the canary, 0 by the version it would replace"), alerts
    assert pair.locator("[data-figure=verdict]").inner_text().startswith(
        "not yet: 20 of 200 windows")
    assert no_sideways_scroll(page)
    assert tab.console == []
    page.context.close()


def test_a_ticket_resolved_from_the_page_shows_its_outcome_through_the_api(
        plant: Plant, browser: Any) -> None:
    ticket = plant.tickets[-1]
    tab = open_tab(browser, plant, "technician")
    page = tab.page
    page.goto(f"{plant.server.url}/ui/tickets/{ticket['id']}")
    page.click("form[action$=ack] button")
    page.wait_for_selector("text=Acknowledged.")
    page.check("input[name=outcome][value=preventive_action]")
    page.fill("#resolve input[name=note]", "bearing replaced before it failed")
    page.click("#resolve button[type=submit]")
    page.wait_for_selector("text=Resolved.")
    assert page.inner_text("[data-outcome]") == "preventive_action"

    after = plant.api.get(f"/tickets/{ticket['id']}").json()
    assert (after["status"], after["outcome"], after["note"]) == (
        "resolved", "preventive_action", "bearing replaced before it failed")
    history = plant.api.get(f"/tickets/{ticket['id']}/history").json()
    assert [(e["actor"], e["action"]) for e in history] == [
        ("technician", "acknowledge"), ("technician", "resolve")]
    assert tab.console == []
    page.context.close()


def test_without_a_session_every_page_leads_to_sign_in(plant: Plant, browser: Any) -> None:
    with httpx.Client(base_url=plant.server.url, follow_redirects=False) as anonymous:
        assert anonymous.get("/").headers["location"] == "/ui/tickets"
        for path in [*PAGES, f"/ui/tickets/{plant.tickets[0]['id']}"]:
            answer = anonymous.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/ui/sign-in?then="), path
        refused = anonymous.post(f"/ui/tickets/{plant.tickets[0]['id']}/ack",
                                 data={"csrf": "x"})
        assert refused.status_code == 303
    # In the browser: to the form, and back to the page once signed in (as a reader, who
    # sees no form to act with).
    tab = open_tab(browser, plant, None)
    page = tab.page
    page.goto(f"{plant.server.url}/ui/fleet")
    assert page.url.startswith(f"{plant.server.url}/ui/sign-in")
    page.fill("#token", "lw_" + "x" * 43)
    page.click("button[type=submit]")
    assert "unknown API token" in page.inner_text(".error")
    page.fill("#token", plant.tokens["viewer"])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/fleet$"))
    page.goto(f"{plant.server.url}/ui/tickets/{plant.tickets[0]['id']}")
    assert page.locator("#resolve").count() == 0
    page.context.close()


def test_forms_need_the_sessions_csrf_token_and_a_write_scope(plant: Plant) -> None:
    ticket = plant.tickets[1]
    before = plant.api.get(f"/tickets/{ticket['id']}").json()
    client, csrf = signed_client(plant, "technician")
    cookie = client.cookies.jar
    (session,) = [c for c in cookie if c.name == "lw_session"]
    assert session.has_nonstandard_attr("HttpOnly")
    try:
        url = f"/ui/tickets/{ticket['id']}/notes"
        for form in ({"text": "forged"}, {"text": "forged", "csrf": "wrong"},
                     {"text": "forged", "csrf": ""}):
            refused = client.post(url, data=form)
            assert refused.status_code == 403, refused.text
            assert "out of date or was not sent from this site" in refused.text
        # The same token as JSON, or a form of another type, is refused too.
        assert client.post(url, json={"text": "x", "csrf": csrf}).status_code == 403
        assert plant.api.get(f"/tickets/{ticket['id']}").json() == before
        assert client.post(url, data={"text": "checked", "csrf": csrf}).status_code == 303
        notes = plant.api.get(f"/tickets/{ticket['id']}").json()["notes"]
        assert [(n["author"], n["text"]) for n in notes] == [("technician", "checked")]
        # The JSON API takes no cookie.
        assert client.get("/tickets").status_code == 401
    finally:
        client.close()

    reader, reader_csrf = signed_client(plant, "viewer")
    try:
        acting = reader.post(f"/ui/tickets/{ticket['id']}/ack", data={"csrf": reader_csrf})
        assert acting.status_code == 403 and "scope write" in acting.text
    finally:
        reader.close()
    assert plant.api.get(f"/tickets/{ticket['id']}").json()["status"] == before["status"]


def test_the_cookie_is_strict_and_a_revoked_token_ends_its_sessions(plant: Plant) -> None:
    name = "shift-b"
    token = api_token(plant.server, "read", name)
    with httpx.Client(base_url=plant.server.url, follow_redirects=False) as client:
        form = client.get("/ui/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        done = client.post("/ui/sign-in", data={"csrf": csrf.group(1), "token": token})
        flags = [h for h in done.headers.get_list("set-cookie") if h.startswith("lw_session=")]
        assert len(flags) == 1
        assert {"httponly", "samesite=strict", "path=/"} <= {
            p.strip().lower() for p in flags[0].split(";")}
        assert "secure" not in flags[0].lower()  # plain http here; https sets it
        assert client.get("/ui/health").status_code == 200
        listed = {t["name"]: t["id"] for t in plant.api.get("/tokens").json()
                  if t["revoked_at"] is None}
        assert plant.api.delete(f"/tokens/{listed[name]}").status_code == 200
        gone = client.get("/ui/health")
        assert gone.status_code == 303 and gone.headers["location"].startswith("/ui/sign-in")
