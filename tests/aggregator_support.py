"""Helpers shared by the aggregator's tests: payload builders, the points the aggregator
should store for them, settings on scratch stores, a running service, a raw MQTT publisher
and bounded waiting.

Importable as ``aggregator_support`` because pytest puts ``tests/`` on ``sys.path`` for
``tests/conftest.py`` (rootdir "prepend" import mode), like ``servers``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.series import (
    DriftPoint,
    HealthPoint,
    PredictionPoint,
    drift_order,
    health_order,
)
from aggregator.server import ServerThread
from aggregator.settings import Settings
from contract.wire import DriftEvent, Envelope, Health, ModelRef, Prediction, encode, topic

__all__ = [
    "T0",
    "MODEL",
    "Publisher",
    "api_token",
    "bearer",
    "broker_settings",
    "data_topic",
    "drop_schema",
    "drift_events",
    "envelope",
    "health_report",
    "payload",
    "predictions",
    "rewritten",
    "start_service",
    "store_settings",
    "stored_drift",
    "stored_health",
    "stored_points",
    "wait_until",
]

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
MODEL = ModelRef(name="bearing-gbt", version="1.2.0", sha256="ab" * 32, threshold=0.7)


def predictions(
    asset: str, scores: list[float], *, start: int = 0, threshold: float = MODEL.threshold
) -> list[Prediction]:
    """One prediction per score, on consecutive one-minute windows from ``T0 + start``."""
    return [
        Prediction(
            asset=asset,
            window_start=T0 + timedelta(minutes=start + i),
            window_end=T0 + timedelta(minutes=start + i + 1),
            score=score,
            alert=score >= threshold,
        )
        for i, score in enumerate(scores)
    ]


def drift_events(
    asset: str | None, n: int, *, start: int = 0, detector: str = "range",
    monitor: str = "s2.mean", detail: str = "outside training range",
) -> list[DriftEvent]:
    """n events of one monitor, a minute apart from ``T0 + start`` minutes; a value on
    each unless the event is about the whole stream (``asset`` None)."""
    return [
        DriftEvent(
            asset=asset,
            at=T0 + timedelta(minutes=start + i),
            monitor=monitor,
            detector=detector,
            value=None if asset is None else 640.5 + i,
            detail=detail,
        )
        for i in range(n)
    ]


def health_report(
    minute: int, windows_scored: int, *, outbox_depth: int = 0, **counters: Any
) -> Health:
    """A health report at ``T0 + minute``; the other counters default to 0 / None."""
    return Health(
        at=T0 + timedelta(minutes=minute), windows_scored=windows_scored,
        outbox_depth=outbox_depth, **counters,
    )


def envelope(agent: str, seq: int, items: list[Any], model: ModelRef = MODEL) -> Envelope:
    return Envelope.build(agent, seq, model, items)


def payload(agent: str, seq: int, items: list[Any], model: ModelRef = MODEL) -> bytes:
    return encode(envelope(agent, seq, items, model))


def data_topic(
    agent: str, kind: str = "predictions", site: str = "plant1", line: str = "line3"
) -> str:
    return topic(site, line, agent, kind)


def rewritten(raw: bytes, edit: Callable[[dict[str, Any]], object]) -> bytes:
    """``raw`` decoded, changed in place by ``edit`` and encoded again with ``json.dumps``
    (which writes a NaN as the bare ``NaN`` token): payloads the wire models refuse to
    build, as a foreign producer might send them."""
    data = json.loads(raw)
    edit(data)
    return json.dumps(data).encode()


def stored_points(
    envelopes: list[Envelope], *, asset: str | None = None, site: str = "plant1",
    line: str = "line3",
) -> list[PredictionPoint]:
    """The points the aggregator must store for ``envelopes`` (published on ``site``/``line``
    topics), only ``asset``'s if given, in the series stores' order (window end, agent,
    asset, model)."""
    points = [
        PredictionPoint(
            site=site,
            line=line,
            agent=env.agent,
            asset=p.asset,
            model=env.model.name,
            model_version=env.model.version,
            window_start=p.window_start,
            window_end=p.window_end,
            score=p.score,
            alert=p.alert,
            seq=env.seq,
        )
        for env in envelopes
        for p in env.items
        if isinstance(p, Prediction) and asset in (None, p.asset)
    ]
    return sorted(points, key=lambda p: (p.window_end, p.agent, p.asset, p.model))


def stored_drift(
    envelopes: list[Envelope], *, site: str = "plant1", line: str = "line3"
) -> list[DriftPoint]:
    """The drift events the aggregator must store for ``envelopes``, newest first."""
    points = [
        DriftPoint(
            site=site, line=line, agent=env.agent, asset=e.asset, at=e.at, monitor=e.monitor,
            detector=e.detector, value=e.value, detail=e.detail, model=env.model.name,
            model_version=env.model.version, seq=env.seq,
        )
        for env in envelopes
        for e in env.items
        if isinstance(e, DriftEvent)
    ]
    return sorted(points, key=drift_order)


def stored_health(
    envelopes: list[Envelope], *, site: str = "plant1", line: str = "line3"
) -> list[HealthPoint]:
    """The health reports the aggregator must store for ``envelopes``, newest first."""
    points = [
        HealthPoint(
            site=site, line=line, agent=env.agent, at=h.at, windows_scored=h.windows_scored,
            outbox_depth=h.outbox_depth, outbox_dropped=h.outbox_dropped,
            rejected_readings=h.rejected_readings, inference_ms_median=h.inference_ms_median,
            model=env.model.name, model_version=env.model.version, seq=env.seq,
        )
        for env in envelopes
        for h in env.items
        if isinstance(h, Health)
    ]
    return sorted(points, key=health_order)


# -- API tokens -----------------------------------------------------------------------------
_TOKEN_NAMES = itertools.count(1)


def api_token(where: Any, scope: str = "write", name: str | None = None) -> str:
    """A new API token of ``scope`` in an aggregator's database: ``where`` is a running
    ``ServerThread``, an app (``TestClient(...).app``), a session factory or a database URL.
    Named ``test-<scope>-<n>`` unless ``name`` is given."""
    from aggregator import audit, auth
    from aggregator.db import open_engine, open_sessions

    name = name or f"test-{scope}-{next(_TOKEN_NAMES)}"
    engine = None
    if isinstance(where, str):
        engine = open_engine(where)
        sessions = open_sessions(engine)
    else:
        app = getattr(where, "app", where)
        sessions = app.state.session_factory if hasattr(app, "state") else where
    try:
        with sessions() as session:
            _, token = auth.create_token(session, name, scope, audit.Actor("tests"))
            session.commit()
    finally:
        if engine is not None:
            engine.dispose()
    return token


def bearer(token: str) -> dict[str, str]:
    """The header that carries ``token``."""
    return {"Authorization": f"Bearer {token}"}


# -- a running aggregator and a publisher -------------------------------------------------
def store_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Settings with the embedded stores in ``tmp_path`` (``series.db``, ``linewatch.db``)."""
    values: dict[str, Any] = {
        "series_path": tmp_path / "series.db",
        "db_url": f"sqlite:///{tmp_path}/linewatch.db",
    }
    return Settings(**(values | changes))


def broker_settings(tmp_path: Path, broker: Any, **changes: Any) -> Settings:
    """:func:`store_settings` for an aggregator subscribed to ``broker`` (a running
    ``servers.MosquittoServer``), its HTTP API on a free port."""
    values: dict[str, Any] = {
        "mqtt_url": broker.url,
        "mqtt_client_id": "aggregator-test",
        "http_port": 0,
    }
    return store_settings(tmp_path, **(values | changes))


def start_service(settings: Settings) -> ServerThread:
    """The aggregator as in production (uvicorn, lifespan, subscriber), subscribed."""
    server = ServerThread(settings)
    server.start()
    assert server.app.state.subscriber.wait_ready(10)
    return server


class Publisher:
    """A raw paho client that publishes at QoS 1, by default to ``topic``; a context
    manager that disconnects on exit."""

    def __init__(self, host: str, port: int, topic: str, client_id: str = "test-publisher"):
        self.topic = topic
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, raw: bytes, topic: str | None = None) -> None:
        """Publish and wait (5 s at most) until the broker has it."""
        info = self.client.publish(topic or self.topic, raw, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def wait_until(
    condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(interval_s)


def drop_schema(url: str) -> None:
    """Leave a database the session shares (the PostgreSQL fixture) empty for the next
    test: every table and the migration history, or the next start would find it "at head"
    and create nothing."""
    from sqlalchemy import text

    from aggregator.db import Base, open_engine

    engine = open_engine(url, create=False)
    try:
        Base.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        engine.dispose()
