"""Event time, not arrival time (issue 13): the same plant history gives the same tickets
whether the aggregator received it live or as a backlog after an outage.

Real parts only: the fixtures' Mosquitto and InfluxDB, the real agent replaying FD001
engines through the shipped model, the real aggregator. The agent first runs paced, with
the aggregator up (messages of a few windows, handled as they come); then the same replay
runs with the aggregator down, the broker keeping everything in the aggregator's session,
and the aggregator comes back to the whole backlog at once (messages of 100 windows,
handled in a few batches). Both give the same tickets: same assets, opened at the window
that completed k of n, with one escalation per later trigger; only ``received_at`` tells
the backlog's tickets apart.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from agent_support import agent_cfg, running_aggregator
from aggregator_support import wait_until

from agent.pipeline import Agent, RunReport, Scored

pytestmark = pytest.mark.integration

K, N = 3, 5  # running_aggregator's rule


def expected_tickets(scored: list[Scored], threshold: float) -> dict[str, tuple[str, int]]:
    """Per asset: the window end that first completed k of n (the ticket's opened_at) and
    the later triggers (its escalations), computed from what the agent scored."""
    out: dict[str, tuple[str, int]] = {}
    recent: dict[str, deque[bool]] = {}
    for s in sorted(scored, key=lambda s: (s.asset, s.window_end)):
        window = recent.setdefault(s.asset, deque(maxlen=N))
        window.append(s.score >= threshold)
        if sum(window) >= K:
            if s.asset in out:
                opened, escalations = out[s.asset]
                out[s.asset] = (opened, escalations + 1)
            else:
                out[s.asset] = (s.window_end.isoformat(), 0)
    return out


def maintenance_tickets(api: Any) -> dict[str, dict[str, Any]]:
    found = api.get("/tickets", params={"kind": "maintenance", "limit": 100}).json()
    return {t["asset"]: t for t in found}


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_backlog_after_an_outage_gives_the_tickets_the_live_stream_gave(
    tmp_path: Path, mosquitto, influxdb
) -> None:
    live_dir, late_dir = tmp_path / "live", tmp_path / "late"
    # Live: paced (20,000 x plant time), so messages of a few windows, handled as they come.
    live_agent = Agent(agent_cfg(live_dir, mosquitto.url, agent_id="gw-time", speed=20000),
                       record=True)
    with running_aggregator(live_dir, mosquitto.url, influxdb) as api:
        report = live_agent.run(drain_timeout_s=60)
        assert report.drained
        live = maintenance_tickets(api)
    expected = expected_tickets(report.scored, live_agent.threshold)
    assert len(expected) >= 2 and any(e > 0 for _, e in expected.values())

    # The outage: the aggregator is down (its broker session keeps what comes), the same
    # replay runs as fast as it can, then the aggregator comes back to the whole backlog.
    late_agent = Agent(agent_cfg(late_dir, mosquitto.url, agent_id="gw-time"), record=True)
    reports: list[RunReport] = []
    runner = threading.Thread(target=lambda: reports.append(late_agent.run(
        drain_timeout_s=120)), daemon=True)
    runner.start()
    wait_until(lambda: late_agent.progress.ticks == late_agent.progress.total_ticks
               and late_agent.publisher.connected and late_agent.outbox.unsent == 0, 60,
               what="the whole replay handed to the broker")
    back = datetime.now(UTC)
    with running_aggregator(late_dir, mosquitto.url, influxdb) as api:
        runner.join(120)
        assert reports and reports[0].drained, "the aggregator confirmed the whole backlog"
        late = maintenance_tickets(api)
    assert expected_tickets(reports[0].scored, late_agent.threshold) == expected

    for name, tickets in (("live", live), ("after the outage", late)):
        got = {a: (at(t["opened_at"]).isoformat(), t["escalations"]) for a, t in tickets.items()}
        assert got == expected, name
    for asset, ticket in late.items():
        assert ticket["evidence"] == live[asset]["evidence"]
        # Received after the outage, hours of plant time after the window that opened it.
        assert at(ticket["received_at"]) >= back > at(ticket["opened_at"])
        assert at(live[asset]["received_at"]) < back


def test_the_event_time_revision_gives_existing_tickets_their_arrival_as_received_at(
    tmp_path: Path,
) -> None:
    """Revision 0008: a ticket written before it keeps its opened_at (then the arrival)
    and gets the same instant as received_at; a downgrade drops the column, even with
    ticket notes pointing at the table."""
    from alembic import command
    from sqlalchemy import inspect, text

    from aggregator import migrations
    from aggregator.db import open_engine

    engine = open_engine(f"sqlite:///{tmp_path / 'old.db'}", create=False)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "0006")
            conn.execute(text(
                "INSERT INTO tickets (id, kind, asset, agent, site, line, status, opened_at, "
                "updated_at, model_name, model_version, threshold, escalations, evidence) "
                "VALUES (1, 'maintenance', 'pump-1', 'gw-1', 'plant1', 'line3', 'open', "
                "'2026-03-01 12:00:00.000000', '2026-03-01 12:05:00.000000', 'm', '1', 0.7, "
                "2, '{}')"))
            conn.execute(text("INSERT INTO ticket_notes (ticket_id, at, author, text) VALUES "
                              "(1, '2026-03-01 12:06:00.000000', 'alice', 'checked')"))
            command.upgrade(migrations.alembic_config(conn), "0008")
            assert conn.execute(text("SELECT opened_at, received_at FROM tickets")).one() == (
                "2026-03-01 12:00:00.000000", "2026-03-01 12:00:00.000000")
            command.downgrade(migrations.alembic_config(conn), "-1")
        columns = {c["name"] for c in inspect(engine).get_columns("tickets")}
        assert "received_at" not in columns and "opened_at" in columns
    finally:
        engine.dispose()
