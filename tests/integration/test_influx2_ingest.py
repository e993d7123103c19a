"""The aggregator on InfluxDB 2.x/3.x (influx2), end to end: real Mosquitto, the real
aggregator (uvicorn, lifespan, subscriber, ingestor) and a real server of the v2 write API
(victoria-metrics), which is stopped while messages stream in.

An outage reaches the ingestor as SeriesUnavailableError: the batch is kept unacked and
retried, ``/readyz`` says the store does not answer, the failure is logged once (the
client's per-retry warnings are not), and once the server is back every prediction is
stored, once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from aggregator_support import (
    Publisher,
    broker_settings,
    data_topic,
    payload,
    predictions,
    start_service,
    wait_until,
)
from servers import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

MESSAGES = 40  # of 5 predictions each


def test_outage_mid_stream_is_retried_by_the_ingestor_and_loses_nothing(
    tmp_path: Path, mosquitto: MosquittoServer, victoria_metrics: VictoriaMetricsServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggregator.subscriber")
    settings = broker_settings(
        tmp_path, mosquitto, influx_url=victoria_metrics.url, influx_version="2",
        influx_org="plant", influx_bucket="linewatch", influx_token="a-token",
        influx_write_retry_s=0.5,
    )
    server = start_service(settings)
    api = httpx.Client(base_url=server.url, timeout=10)
    try:
        ingestor, subscriber = server.app.state.ingestor, server.app.state.subscriber
        assert api.get("/readyz").status_code == 200
        with Publisher(mosquitto.host, mosquitto.port, data_topic("gw-1")) as pub:
            for seq in range(MESSAGES):
                if seq == MESSAGES // 2:
                    wait_until(lambda: ingestor.counts.accepted >= 10, 30, what="10 stored")
                    victoria_metrics.stop()
                pub.publish(payload("gw-1", seq, predictions(
                    f"pump-{seq % 3}", [0.1, 0.2, 0.3, 0.4, 0.5], start=5 * seq)))
        wait_until(lambda: subscriber.counts.retries >= 2, 30, what="the batch retried")
        assert api.get("/readyz").json()["problems"][-1] == \
            "the series store (influx2) does not answer"
        victoria_metrics.start()
        wait_until(lambda: ingestor.counts.accepted == MESSAGES, 60, what="all stored")
        wait_until(lambda: api.get("/readyz").status_code == 200, 10, what="ready again")
    finally:
        api.close()
        server.stop()

    # One sample per window of every asset: nothing lost, nothing doubled.
    exported = victoria_metrics.export('{__name__="prediction_score"}')
    windows = [(series["metric"]["asset"], t) for series in exported
               for t in series["timestamps"]]
    assert len(windows) == len(set(windows)) == 5 * MESSAGES
    failing = [r for r in caplog.records if r.name == "aggregator.subscriber"
               and "cannot store" in r.getMessage()]
    told = [r.getMessage() for r in failing if r.levelno >= logging.WARNING]
    assert len(told) == 1 and f"InfluxDB at {victoria_metrics.url}" in told[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name in
                ("influxdb_client.client.write.retry", "urllib3.connectionpool")]
