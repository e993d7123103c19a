"""Acceptance: bad input of every kind, end to end through a real Mosquitto.

The aggregator runs as it does in production (``ServerThread``: uvicorn + lifespan +
paho subscriber) against the ``mosquitto`` fixture, with the embedded SQLite series store.
A raw paho client publishes good and bad messages in one stream; the good ones must be
stored exactly, each bad one rejected with its reason (counted, quarantined with its raw
bytes, logged once), and the subscriber must keep going.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aggregator_support import (
    Publisher,
    broker_settings,
    data_topic,
    envelope,
    payload,
    predictions,
    rewritten,
    start_service,
    stored_points,
    wait_until,
)
from sqlalchemy import select

from aggregator.db import QUARANTINE_MAX_BYTES, QuarantinedMessage
from aggregator.server import ServerThread
from contract.wire import MAX_PAYLOAD_BYTES, encode

pytestmark = pytest.mark.integration

AGENT = "gw-1"
TOPIC = data_topic(AGENT)


@pytest.fixture
def aggregator(mosquitto, tmp_path: Path) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    server = start_service(
        broker_settings(tmp_path, mosquitto, mqtt_client_id="aggregator-bad-input")
    )
    yield server
    server.stop()


@pytest.fixture
def publisher(mosquitto) -> Iterator[Publisher]:  # type: ignore[no-untyped-def]
    with Publisher(mosquitto.host, mosquitto.port, TOPIC, client_id="raw-publisher") as client:
        yield client


def test_bad_input_end_to_end(
    aggregator: ServerThread, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    env_a = envelope(AGENT, 0, predictions("pump-1", [0.125, 0.5, 0.875]))
    env_b = envelope(AGENT, 1, predictions("pump-2", [0.25, 0.75], start=3))
    good = payload(AGENT, 9, predictions("pump-9", [0.5]))
    bad = {
        "malformed": b'{"schema": 1, "msg_id": ',
        "unknown_schema": rewritten(good, lambda data: data.update(schema=2)),
        "too_large": b'{"schema": 1, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}',
        "invalid": good.replace(b'"score":0.5', b'"score":NaN'),  # the bare NaN token
    }
    assert b"NaN" in bad["invalid"]
    for raw in [encode(env_a), *bad.values(), encode(env_b)]:
        publisher.publish(raw)

    with httpx.Client(base_url=aggregator.url, timeout=5) as http:

        def handled() -> dict[str, Any]:
            counts: dict[str, Any] = http.get("/healthz").json()["counts"]
            return counts if counts["accepted"] + sum(counts["rejected"].values()) >= 6 else {}

        counts = wait_until(handled, 15, what="all six messages handled")
        assert (counts["accepted"], counts["predictions_stored"], counts["duplicates"]) == (2, 5, 0)
        assert counts["rejected"] == {reason: 1 for reason in bad}

        # A's and B's predictions, exactly.
        series = aggregator.app.state.series
        assert series.predictions() == stored_points([env_a, env_b])

        # Each bad one quarantined with its raw bytes (cut at 64 KiB, length kept).
        with aggregator.app.state.session_factory() as session:
            rows = {r.reason: r for r in session.scalars(select(QuarantinedMessage))}
        assert set(rows) == set(bad)
        for reason, raw in bad.items():
            assert (rows[reason].topic, rows[reason].payload_len) == (TOPIC, len(raw))
            assert rows[reason].payload == raw[:QUARANTINE_MAX_BYTES]
        assert "NaN" in rows["invalid"].error

        # Logged at WARNING once per reason; a second malformed one is not.
        publisher.publish(b"{still not json")
        wait_until(lambda: http.get("/healthz").json()["counts"]["rejected"]["malformed"] == 2, 10)
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.name == "aggregator.quarantine" and r.levelno == logging.WARNING
        ]
        assert len(warned) == len(bad)
        for reason in bad:
            assert sum(f": {reason}: " in m for m in warned) == 1, (reason, warned)

        # The subscriber kept going: a later message is stored and the service is healthy.
        publisher.publish(payload(AGENT, 2, predictions("pump-3", [0.5])))
        wait_until(lambda: series.count(asset="pump-3") == 1, 10, what="C stored")
        # Rejected messages are acked too: quarantined means handled.
        wait_until(lambda: http.get("/healthz").json()["mqtt"]["acked"] == 8, 10, what="8 acks")
        health = http.get("/healthz").json()
        assert (health["status"], health["mqtt"]["connected"]) == ("ok", True)
