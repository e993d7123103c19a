"""Model health from real tickets (issue #10, "done means"): agents replay FD001 engines
through the shipped model into the aggregator, a technician's scripted outcomes go in
through the API with a write token (confirmed failures, a fix before failing, false
alarms, one failure no ticket warned of), and then

- ``GET /health/models``, the Markdown and the HTML report and ``linewatch report`` show
  the same figures (precision "k of n" with its interval, recall counting the missed
  failure, F1 against the model card's test F1), from the same computation: the two
  reports are byte for byte what the command writes;
- forging an outcome without a write token (no token, a read token) is refused and
  changes nothing;

and the report's wording for no data and for small counts, through the API.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from agent_support import ROOT, agent_cfg
from aggregator_support import api_token, bearer, start_service, store_settings, wait_until
from servers import free_port

from agent.estimate import WINDOW, PerformanceEstimator
from agent.pipeline import Agent, Scored
from aggregator import tickets
from aggregator.figures import f1_interval, wilson
from aggregator.series.sqlite import SqliteSeriesStore
from aggregator.server import ServerThread
from contract.card import ModelCard
from linewatch.cli import main

CARD = ModelCard.load(ROOT / "models" / "cmapss_fd001")

pytestmark = pytest.mark.integration

# FD001 test engines: 8 that end within 30 cycles of failure, 4 far from it.
NEAR = ["engine-018", "engine-020", "engine-024", "engine-031", "engine-034", "engine-035",
        "engine-036", "engine-042"]
FAR = ["engine-001", "engine-002", "engine-003", "engine-004"]
NOW = datetime.now(UTC).replace(microsecond=0)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
CARD_F1 = json.loads((ROOT / "models" / "cmapss_fd001" / "card.json").read_text())[
    "metrics"]["test_last_window_f1"]["value"]
# Remaining cycles after each test engine's record ends (line n: engine-n), one cycle being
# 600 s of plant time in the agent's config; a window is positive within 30 cycles of failing.
RUL = [int(x) for x in (ROOT / "models" / "data" / "cmapss_fd001" / "RUL_FD001.txt")
       .read_text().split()]
CYCLE = timedelta(seconds=600)
HORIZON = 30 * CYCLE


def true_failure(asset: str, scored: list[Scored]) -> datetime:
    """When the engine fails: its record's last window end plus its remaining cycles."""
    last = max(s.window_end for s in scored if s.asset == asset)
    return last + RUL[int(asset.split("-")[1]) - 1] * CYCLE


def pct(value: float) -> str:
    """The report's whole percent (half up, never 100 % or 0 % unless exact)."""
    whole = math.floor(value * 100 + 0.5)
    whole = 99 if value < 1 and whole >= 100 else 1 if value > 0 and whole <= 0 else whole
    return f"{whole} %"


@dataclass
class Plant:
    server: ServerThread
    env: Path
    scored: list[Scored]
    write: httpx.Client
    read: httpx.Client
    anonymous: httpx.Client


@pytest.fixture
def plant(tmp_path: Path, mosquitto: Any) -> Iterator[Plant]:
    """The aggregator on Mosquitto (embedded SQLite stores), judged against the model
    cards in models/, after one agent replayed the 12 engines (plant time ending a day ago,
    so the scored windows fall in the report's period)."""
    changes = dict(mqtt_url=mosquitto.url, mqtt_client_id="agg-health", http_port=0,
                   models_dir=ROOT / "models", visit_cost=350.0, currency="EUR")
    settings = store_settings(tmp_path, **changes)
    server = start_service(settings)
    env = tmp_path / "aggregator.env"
    env.write_text("".join(f"LINEWATCH_{k.upper()}={v}\n" for k, v in {
        "db_url": settings.db_url, "series_path": settings.series_path,
        "models_dir": settings.models_dir, "visit_cost": 350, "currency": "EUR"}.items()))
    clients = [httpx.Client(base_url=server.url, timeout=30, headers=headers) for headers in (
        bearer(api_token(server, "write", "technician")), bearer(api_token(server, "read")), {})]
    try:
        start = (NOW - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        agent = Agent(agent_cfg(tmp_path, mosquitto.url, agent_id="gw-health",
                                assets=NEAR + FAR, start=start), record=True)
        report = agent.run(drain_timeout_s=60)
        assert report.drained
        scored = len(report.scored)
        read = clients[1]
        wait_until(lambda: read.get("/healthz").json()["counts"]["predictions_stored"]
                   >= scored, 30, what="every scored window stored")
        yield Plant(server, env, report.scored, *clients)
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_api_reports_and_command_show_the_same_figures_and_forgery_is_refused(
    plant: Plant, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    maintenance = sorted(plant.read.get("/tickets", params={"kind": "maintenance"}).json(),
                         key=lambda t: t["asset"])
    assert len(maintenance) >= 6 and {t["asset"] for t in maintenance} <= set(NEAR)
    assert all(t["status"] == "open" for t in maintenance)

    # The technician's outcomes: the last two were false alarms, one was fixed before it
    # failed, the rest failed (two with a known failure time).
    script: list[dict[str, Any]] = []
    for i, t in enumerate(maintenance):
        body: dict[str, Any] = {"outcome": "confirmed_failure", "note": f"{t['asset']} failed"}
        if i < 2:
            body["failed_at"] = true_failure(t["asset"], plant.scored).isoformat()
        if i == len(maintenance) - 3:
            body = {"outcome": "preventive_action", "note": "bearing replaced in time"}
        if i >= len(maintenance) - 2:
            body = {"outcome": "no_fault_found", "note": "checked, all fine"}
        done = plant.write.post(f"/tickets/{t['id']}/resolve", json=body)
        assert done.status_code == 200, done.text
        script.append(body)
    missed_at = NOW - timedelta(days=2, hours=5)
    missed = plant.write.post("/failures", json={
        "site": "plant1", "line": "line1", "asset": "engine-002", "at": missed_at.isoformat(),
        "note": "seized: no ticket warned of it"})
    assert missed.status_code == 201, missed.text
    assert (missed.json()["model_name"], missed.json()["model_version"]) == (
        "cmapss_fd001", "1.0.0")  # the one model its line runs

    alerts = len(maintenance)
    real, false = alerts - 2, 2
    # One period for every form: 30 days to an hour from now.
    until = (NOW + timedelta(hours=1)).isoformat()
    period = {"period": "30d", "until": until}
    figures = plant.read.get("/health/models", params=period)
    assert figures.status_code == 200, figures.text
    f = figures.json()
    g = f["overall"]
    assert (g["alerts"], g["real"], g["false_alarms"], g["missed"]) == (alerts, real, false, 1)
    p_low, p_high = wilson(real, alerts)
    r_low, r_high = wilson(real, real + 1)
    f_low, f_high = f1_interval(real, false, 1)
    assert g["precision"] == pytest.approx(
        {"value": real / alerts, "low": p_low, "high": p_high, "n": alerts, "enough": True})
    assert g["recall"] == pytest.approx(
        {"value": real / (real + 1), "low": r_low, "high": r_high, "n": real + 1,
         "enough": True})
    assert g["f1"]["value"] == pytest.approx(2 * real / (2 * real + false + 1))
    assert (g["f1"]["low"], g["f1"]["high"]) == (pytest.approx(f_low), pytest.approx(f_high))
    assert [m["asset"] for m in g["missed_failures"]] == ["engine-002"]
    assert g["lead_time"]["n"] == real and g["lead_time"]["from_resolution"] == real - 2
    assert g["assets"] == len(NEAR + FAR)  # what the series store saw scored
    assert g["cost"] == pytest.approx({"visits": alerts, "wasted_visits": 2,
                                       "visit_cost": 350.0, "currency": "EUR",
                                       "total": 350.0 * alerts, "wasted": 700.0})
    assert (f["target_f1"], f["target_source"]) == (
        CARD_F1, "the model card's test F1, test_last_window_f1")
    assert [m["group"]["key"] for m in f["by_model"]] == ["cmapss_fd001@1.0.0"]
    assert [line["group"]["key"] for line in f["by_line"]] == ["plant1/line1"]

    # The gateway's own estimate beside the outcomes: its newest estimate (one agent: as it
    # sent it), checked per window against the failures with a known time.
    estimator = PerformanceEstimator(CARD, window=WINDOW, horizon_s=HORIZON.total_seconds())
    estimator.update(np.array([s.score for s in plant.scored]))
    sent = estimator.estimate()
    timed = {t["asset"]: true_failure(t["asset"], plant.scored) for t in maintenance[:2]}
    timed["engine-002"] = missed_at
    unknown = {t["asset"] for t in maintenance[2:-2]}  # real faults of unknown time
    hit = wrong = missed_windows = 0
    for s in plant.scored:
        if s.asset in unknown:
            continue
        fails = timed.get(s.asset)
        positive = fails is not None and s.window_end < fails <= s.window_end + HORIZON
        alert = s.score >= CARD.threshold.value
        hit += alert and positive
        wrong += alert and not positive
        missed_windows += positive and not alert
    checks = {c["metric"]: c for c in g["estimates"]}
    assert set(checks) == {"precision", "recall", "f1"}
    for metric in ("precision", "recall", "f1"):
        interval = getattr(sent, metric)
        assert (checks[metric]["estimated"], checks[metric]["low"], checks[metric]["high"]) \
            == pytest.approx((interval.value, interval.low, interval.high))
        assert checks[metric]["basis"] == "windows"
    assert checks["precision"]["realised"]["n"] == hit + wrong
    assert checks["recall"]["realised"]["n"] == hit + missed_windows
    assert checks["f1"]["realised"]["value"] == pytest.approx(
        2 * hit / (2 * hit + wrong + missed_windows))

    markdown = plant.read.get("/reports/model-health", params=period | {"format": "markdown"})
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    page = plant.read.get("/reports/model-health", params=period)
    assert page.headers["content-type"].startswith("text/html")
    day = f"{missed_at.day} {MONTHS[missed_at.month - 1]}"
    sentences = [
        f"{real} of {alerts} alerts were real faults: {pct(real / alerts)}, likely between "
        f"{pct(p_low)} and {pct(p_high)}.",
        f"The model caught {real} of {real + 1} failures ({pct(real / (real + 1))}, likely "
        f"between {pct(r_low)} and {pct(r_high)}); it missed 1: engine-002 ({day}).",
        f"F1 is {g['f1']['value']:.2f}, likely between {f_low:.2f} and {f_high:.2f}.",
        f"The target is {CARD_F1:.2f} (the model card's test F1, test_last_window_f1).",
        f"{alerts} alerts meant {alerts} technician visits; 2 false alarms cost 2 technician "
        "visits",
        f"At 350 EUR a visit: {350 * alerts:,} EUR in all, 700 EUR of it on false alarms.",
        f"The gateways estimated the share of alerts that are right per scored window at "
        f"{pct(sent.precision.value)} (likely between {pct(sent.precision.low)} and "
        f"{pct(sent.precision.high)}) without waiting for outcomes; the windows judged "
        f"against the failures reported give {pct(hit / (hit + wrong))}",
    ]
    for sentence in sentences:
        assert sentence in markdown.text, f"{sentence!r} not in:\n{markdown.text}"
        assert html.escape(sentence) in page.text, sentence

    # linewatch report: the same computation, so the same bytes.
    assert main(["report", "--period", "30d", "--until", until, "--format", "markdown",
                 "-c", str(plant.env)]) == 0
    assert capsys.readouterr().out == markdown.text
    out = tmp_path / "health.html"
    assert main(["report", "--period", "30d", "--until", until, "--format", "html",
                 "--out", str(out), "-c", str(plant.env)]) == 0
    assert out.read_text() == page.text

    # Forging an outcome without a write token: refused, and nothing changes.
    first = maintenance[0]["id"]
    state = {
        "figures": figures.json(), "tickets": plant.read.get("/tickets").json(),
        "failures": plant.read.get("/failures").json(),
        "history": plant.read.get(f"/tickets/{first}/history").json(),
    }
    forgeries: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", f"/tickets/{first}/reopen", None),
        ("POST", f"/tickets/{maintenance[-1]['id']}/resolve", {"outcome": "confirmed_failure"}),
        ("POST", f"/tickets/{first}/notes", {"text": "it was fine really"}),
        ("POST", f"/tickets/{first}/assign", {"assignee": "mallory"}),
        ("POST", "/failures", {"site": "plant1", "line": "line1", "asset": "engine-003",
                               "at": NOW.isoformat()}),
    ]
    for method, url, body in forgeries:
        assert plant.anonymous.request(method, url, json=body).status_code == 401, url
        refused = plant.read.request(method, url, json=body)
        assert refused.status_code == 403, url
        assert "needs a token with scope write" in refused.json()["detail"]
    assert state == {
        "figures": plant.read.get("/health/models", params=period).json(),
        "tickets": plant.read.get("/tickets").json(),
        "failures": plant.read.get("/failures").json(),
        "history": plant.read.get(f"/tickets/{first}/history").json(),
    }
    assert [e["actor"] for e in state["history"]] == ["technician"]


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[tuple[ServerThread, httpx.Client, httpx.Client]]:
    """An aggregator with no data (embedded stores), a read and a write client."""
    server = start_service(store_settings(tmp_path, embedded_broker_port=free_port(),
                                          http_port=0, target_f1=0.75))
    read = httpx.Client(base_url=server.url, timeout=10, headers=bearer(api_token(server, "read")))
    write = httpx.Client(base_url=server.url, timeout=10,
                         headers=bearer(api_token(server, "write")))
    try:
        yield server, read, write
    finally:
        read.close()
        write.close()
        server.stop()


def markdown(read: httpx.Client, **params: str) -> str:
    answer = read.get("/reports/model-health", params={"format": "markdown", **params})
    assert answer.status_code == 200, answer.text
    return answer.text


def test_no_data_and_small_counts_are_worded_as_such(
    empty: tuple[ServerThread, httpx.Client, httpx.Client],
) -> None:
    server, read, write = empty
    nothing = read.get("/health/models").json()
    assert nothing["overall"]["precision"] == {"value": None, "low": None, "high": None,
                                               "n": 0, "enough": False}
    assert nothing["overall"]["verdict"]["action"] == "not_enough_data"
    assert (nothing["target_f1"], nothing["target_source"]) == (
        0.75, "the configured target, LINEWATCH_TARGET_F1")
    text = markdown(read)
    for sentence in (
        "**Too early to say: not enough outcomes yet.**",
        "Not enough outcomes yet to say: no alerts resolved so far; at least 5 are needed "
        "for a useful figure.",
        "Not enough outcomes yet to say: no failures known (caught or missed) so far",
        "No real faults yet, so no warning time to measure.",
        "The target is 0.75 (the configured target, LINEWATCH_TARGET_F1).",
    ):
        assert sentence in text, f"{sentence!r} not in:\n{text}"
    assert "0 %" not in text and "100 %" not in text

    # Three alerts resolved: figures shown, flagged as too few.
    ids = []
    with server.app.state.session_factory() as session:
        for asset in ("pump-1", "pump-2", "pump-3"):
            subject = tickets.Subject(asset, "plant1", "line3", "gw-1", "m", "1", 0.7)
            ticket, _ = tickets.open_or_escalate(session, subject, "maintenance",
                                                 {"k": 3, "n": 5, "scores": []})
            assert ticket is not None
            ids.append(ticket.id)
        session.commit()
    for tid, outcome in zip(ids, ("confirmed_failure", "confirmed_failure", "no_fault_found"),
                            strict=True):
        assert write.post(f"/tickets/{tid}/resolve", json={"outcome": outcome}).status_code == 200
    few = read.get("/health/models").json()["overall"]
    assert (few["precision"]["n"], few["precision"]["enough"]) == (3, False)
    low, high = wilson(2, 3)
    text = markdown(read)
    for sentence in (
        "Not enough outcomes yet to say: 3 alerts resolved so far; at least 5 are needed "
        "for a useful figure.",
        f"So far 2 of 3 were real faults (67 %, likely between {pct(low)} and {pct(high)}).",
        "Not enough outcomes yet to say: 2 failures known (caught or missed) so far",
        "**Too early to say: not enough outcomes yet.**",
    ):
        assert sentence in text, f"{sentence!r} not in:\n{text}"
    # A period before any of it: no data again.
    before = markdown(read, period="1d", until="2020-01-01T00:00:00Z")
    assert "Period: 31 Dec 2019 to 31 Dec 2019." in before
    assert "no alerts resolved so far" in before


def test_period_and_format_outside_the_contract_are_422(
    empty: tuple[ServerThread, httpx.Client, httpx.Client],
) -> None:
    _, read, _ = empty
    for params in ({"period": "30"}, {"period": "0d"}, {"period": "10000d"}, {"period": "1m"},
                   {"until": "tomorrow"}, {"format": "pdf"}):
        assert read.get("/reports/model-health", params=params).status_code == 422, params
    assert read.get("/health/models", params={"period": "1000w"}).status_code == 422
    for params in ({"period": "9999d"}, {"period": "99999h", "until": "1678-01-01T00:00:00Z"},
                   {"period": "999w", "until": "2261-12-31T23:59:59Z"}):
        assert read.get("/health/models", params=params).status_code == 200, params


def test_report_command_changes_nothing_and_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    env = tmp_path / "aggregator.env"
    db = tmp_path / "linewatch.db"
    env.write_text(f"LINEWATCH_DB_URL=sqlite:///{db}\n"
                   f"LINEWATCH_SERIES_PATH={tmp_path / 'series.db'}\n")
    assert main(["report", "-c", str(env)]) == 3
    assert "no database file at" in capsys.readouterr().err
    assert not db.exists()  # not created by asking
    for bad in (["--period", "30"], ["--until", "2026-03-01T00:00:00"]):
        with pytest.raises(SystemExit) as usage:  # argparse's usage error
            main(["report", *bad, "-c", str(env)])
        assert usage.value.code == 2
    assert "has no time zone" in capsys.readouterr().err

    from sqlalchemy import text

    from aggregator.db import open_engine

    engine = open_engine(f"sqlite:///{db}", create=False)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0005')"))
    engine.dispose()
    assert main(["report", "-c", str(env)]) == 3
    assert "schema revision 0005" in capsys.readouterr().err

    db.unlink()
    open_engine(f"sqlite:///{db}").dispose()  # a fresh database at this release's schema
    assert main(["report", "--format", "markdown", "-c", str(env)]) == 0
    out, err = capsys.readouterr()
    assert "Too early to say: not enough outcomes yet." in out
    assert "no series store at" in err and not (tmp_path / "series.db").exists()



def test_how_each_model_version_ran_is_the_same_in_the_api_and_the_reports(
    plant: Plant, capsys: pytest.CaptureFixture[str],
) -> None:
    until = NOW + timedelta(hours=1)
    since = until - timedelta(days=30)
    period = {"period": "30d", "until": until.isoformat()}
    (op,) = plant.read.get("/health/models", params=period).json()["operations"]
    assert op["key"] == "cmapss_fd001@1.0.0" and op["series_available"]

    # What the stores hold, read apart from the computation.
    env = dict(line.split("=", 1) for line in plant.env.read_text().splitlines())
    store = SqliteSeriesStore(env["LINEWATCH_SERIES_PATH"])
    try:
        scored = [p for p in store.predictions() if since <= p.window_end < until]
        scores, alerts = [p.score for p in scored], sum(p.alert for p in scored)
        reports = [h for h in store.health(limit=10_000) if since <= h.at < until]
    finally:
        store.close()
    delivery = plant.read.get("/agents/gw-health/completeness", params={
        "since": since.isoformat(), "until": until.isoformat()}).json()
    assert op["agents"] == {
        "reporting": 1, "complete": 1, "windows_received": delivery["windows_received"],
        "windows_undeliverable": 0, "completeness": 1.0, "incomplete": []}
    assert delivery["windows_received"] == len(scores)
    ms = [h.inference_ms_median for h in reports if h.inference_ms_median is not None]
    assert ms and op["latency"] == pytest.approx({
        "reports": len(reports), "agents": 1, "median_ms": float(np.median(ms)),
        "max_ms": max(ms)})

    card = json.loads((ROOT / "models" / "cmapss_fd001" / "card.json").read_text())
    quantiles = sorted((v, int(k[1:]) / 100) for k, v in card["reference"]["score"][
        "quantiles"].items())
    edges = [v for v, _ in quantiles]
    counts = [sum(s <= e for s in scores) for e in edges] + [len(scores)]
    observed = np.diff([0, *counts]) / len(scores)
    expected = np.diff([0, *(level for _, level in quantiles), 1])
    o, e = np.maximum(observed, 1e-4), np.maximum(expected, 1e-4)
    psi = float(np.sum((o - e) * np.log(o / e)))
    s = op["scores"]
    assert s["windows"] == len(scores) >= 100
    assert [b["windows"] for b in s["bins"]] == list(np.diff([0, *counts]))
    assert s["psi"] == pytest.approx(psi)
    assert s["reading"] == ("stable" if psi < 0.1 else "moderate" if psi <= 0.25
                            else "shifted")
    above = 1 - counts[edges.index(card["reference"]["score"]["quantiles"]["p95"])] / len(
        scores)
    assert s["above_p95"] == pytest.approx(above)
    low, high = wilson(alerts, len(scores))
    assert s["alert_rate"] == pytest.approx({"value": alerts / len(scores), "low": low,
                                             "high": high, "n": len(scores),
                                             "enough": True})
    assert s["reference_alert_rate"] == card["reference"]["monitoring"]["alert_rate"]
    assert op["conditions"]["items"] == [] and op["events"]["items"] == []

    # The same figures, in words, in both reports and from the command.
    way = "" if s["reading"] == "stable" else f" {s['direction']}"
    reading = {"stable": "stable", "moderate": "moderately shifted",
               "shifted": "shifted"}[s["reading"]]
    sentences = [
        f"1 agent reported, 1 complete (100.0 % of {len(scores):,} windows arrived); "
        f"inference {float(np.median(ms)):.2g} ms median",
        f"Scores of {len(scores):,} windows: {pct(above)} above the reference's 95th "
        f"percentile (5 % expected); PSI {psi:.2f} against the card's reference: "
        f"{reading}{way}",
        f"Alerts on {pct(alerts / len(scores))} of windows (likely between {pct(low)} and "
        f"{pct(high)}), against {pct(s['reference_alert_rate'])} in training",
        "No drift or data-quality condition was active.",
    ]
    text = plant.read.get("/reports/model-health", params=period | {"format": "markdown"}).text
    page = plant.read.get("/reports/model-health", params=period).text
    assert main(["report", "--period", "30d", "--until", period["until"], "--format",
                 "markdown", "-c", str(plant.env)]) == 0
    command = capsys.readouterr().out
    for sentence in sentences:
        assert sentence in text, f"{sentence!r} not in:\n{text}"
        assert html.escape(sentence) in page, sentence
        assert sentence in command, sentence
