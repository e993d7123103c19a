"""Versions per agent through a real broker and the real service: the live model from
live envelopes only, the shadow model and the latest deployment's outcome from the
agent's health reports, all in ``GET /agents``; a shadow's scores stored apart."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aggregator_support import (
    MODEL,
    T0,
    Publisher,
    api_token,
    bearer,
    data_topic,
    health_report,
    payload,
    predictions,
    store_settings,
    wait_until,
)
from servers import free_port
from starlette.exceptions import StarletteDeprecationWarning

from aggregator.api.app import create_app
from aggregator.series.sqlite import SqliteSeriesStore
from contract.wire import Deployment, ModelRef

with warnings.catch_warnings():
    # As in test_aggregator_api: Starlette's TestClient warns once, at import, about httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`",
                            category=StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

CANDIDATE = MODEL.model_copy(update={"version": "1.3.0", "sha256": "cd" * 32})
SHADOW = CANDIDATE.model_copy(update={"role": "shadow"})


def deployed(minute: int, state: str, shadow: ModelRef | None, reason: str = "",
             assignment: str = "a-1") -> Deployment:
    return Deployment(assignment=assignment, state=state, at=T0 + timedelta(minutes=minute),
                      live=MODEL, shadow=shadow, reason=reason)  # type: ignore[arg-type]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, int, Path]]:
    port = free_port()
    settings = store_settings(tmp_path, embedded_broker_port=port)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.subscriber.wait_ready(10)  # type: ignore[attr-defined]
        client.headers.update(bearer(api_token(client.app, "read", "viewer")))
        yield client, port, tmp_path


def accepted(client: TestClient, n: int) -> None:
    wait_until(lambda: client.get("/healthz").json()["counts"]["accepted"] >= n, 10)


def test_live_and_shadow_versions_and_the_latest_deployment(
        api: tuple[TestClient, int, Path]) -> None:
    client, port, tmp_path = api
    topic, health = data_topic("gw-1"), data_topic("gw-1", "health")
    with Publisher("127.0.0.1", port, topic) as pub:
        pub.publish(payload("gw-1", 0, predictions("pump-1", [0.1, 0.2])))
        pub.publish(payload("gw-1", 1, [health_report(
            3, 2, deployment=deployed(2, "applied", CANDIDATE))]), health)
        # The shadow's own envelope, newer than every live one: it must not become the
        # agent's live model nor add to its count.
        pub.publish(payload("gw-1", 2, predictions("pump-1", [0.15, 0.25]), SHADOW))
        accepted(client, 3)
    (agent,) = client.get("/agents").json()
    assert (agent["model_name"], agent["model_version"]) == ("bearing-gbt", "1.2.0")
    assert (agent["shadow_model_name"], agent["shadow_model_version"]) == \
        ("bearing-gbt", "1.3.0")
    assert agent["deployment"] == {"assignment": "a-1", "state": "applied", "reason": None,
                                   "at": "2026-03-01T08:02:00Z"}
    assert (agent["last_seq"], agent["predictions_count"]) == (2, 2)

    store = SqliteSeriesStore(tmp_path / "series.db")
    try:
        got = store.predictions()
    finally:
        store.close()
    assert [(p.role, p.model_version, p.score) for p in got] == [
        ("live", "1.2.0", 0.1), ("shadow", "1.3.0", 0.15),
        ("live", "1.2.0", 0.2), ("shadow", "1.3.0", 0.25)]

    # A refused assignment: nothing changed on the agent, and the reason is kept; an older
    # report arriving late changes nothing.
    with Publisher("127.0.0.1", port, health) as pub:
        reason = "signature does not verify with the trusted key"
        pub.publish(payload("gw-1", 3, [health_report(
            9, 2, deployment=deployed(8, "refused", CANDIDATE, reason, "a-2"))]))
        pub.publish(payload("gw-1", 4, [health_report(
            10, 2, deployment=deployed(2, "applied", None))]))
        accepted(client, 5)
    (agent,) = client.get("/agents").json()
    assert agent["deployment"] == {"assignment": "a-2", "state": "refused", "reason": reason,
                                   "at": "2026-03-01T08:08:00Z"}
    assert agent["shadow_model_version"] == "1.3.0"
