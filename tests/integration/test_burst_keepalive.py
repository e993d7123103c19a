"""Under a burst at one prediction per message, the aggregator's link to the broker holds:
no disconnect, nothing lost (issue 13, "find the cause and prove it gone").

How the link could be lost: when the ingest queue is full, paho's network thread waits in
``on_message`` for room (backpressure); while it waits it neither reads nor writes, so the
worker's PUBACKs and paho's PINGREQs stay unsent. Mosquitto closes a connection from which
it heard nothing for 1.5 x keepalive. Room comes back each time the worker takes a batch,
so the silence lasts one batch's handling; the link is lost only if that exceeds 1.5 x
keepalive (a store that stalls, see ``aggregator.subscriber``), never from the load
itself. Before the backpressure, the overflow and the 16-bit packet ids (test_burst.py)
lost messages; the disconnects of the issue's table came with them.

Here the keepalive is cut from 30 s to ``KEEPALIVE_S`` and the queue to ``QUEUE``, so the
network thread waits for room many times per second for the whole burst, published at QoS
1 much faster than the aggregator stores it: any starvation of paho's loop longer than
1.5 x keepalive would show as a disconnect in ``/healthz``. Real Mosquitto, the aggregator
as in production (``ServerThread``), embedded SQLite stores.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from aggregator_support import broker_settings, start_service
from servers import MosquittoServer
from test_burst import BurstPublisher, burst, wait_for_progress

from aggregator import subscriber

pytestmark = pytest.mark.integration

MESSAGES = int(os.environ.get("LINEWATCH_BURST_MESSAGES", 10_000))
# The broker drops us after 7.5 s without a packet. At 2 s (3 s), one batch's handling
# on a CI machine loaded by another suite's worker and a benchmark took longer once: that
# is the stalled-store case, not the starvation this test looks for.
KEEPALIVE_S = 5
QUEUE = 200


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_burst_at_one_item_per_message_keeps_the_broker_link(
    tmp_path: Path, mosquitto: MosquittoServer, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber, "KEEPALIVE_S", KEEPALIVE_S)
    messages = burst(MESSAGES)
    settings = broker_settings(tmp_path, mosquitto, mqtt_protocol=protocol,
                               ingest_queue_size=QUEUE, mqtt_client_id=f"agg-ka-{protocol}")
    server = start_service(settings)
    publisher = BurstPublisher(mosquitto, protocol)
    try:
        publisher.publish(messages)
        series = server.app.state.series
        wait_for_progress(series.count, MESSAGES, "points stored")
        sub = server.app.state.subscriber
        wait_for_progress(lambda: sub.counts.acked, MESSAGES, "acks")
        with httpx.Client(base_url=server.url, timeout=5) as http:
            health = http.get("/healthz").json()
        counts = sub.counts
        # Held back by the queue over and over, yet never cut off.
        assert counts.waits > 0
        assert (health["mqtt"]["disconnects"], health["mqtt"]["connect_failures"]) == (0, 0)
        assert (counts.disconnects, counts.overflowed, counts.retries) == (0, 0, 0)
        assert series.count() == MESSAGES
        assert health["counts"]["accepted"] == MESSAGES
        assert health["counts"]["rejected"] == {}
    finally:
        publisher.close()
        server.stop()
