"""Helpers for tests that run real agents: the replay config, the scored-window keys, and a
real aggregator (`running_aggregator`) on the fixtures' Mosquitto and InfluxDB.

Importable as ``agent_support`` (``tests/`` is on ``sys.path``, like ``servers``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from servers import free_port

from agent import config as agent_config
from agent.pipeline import Scored

__all__ = ["MODEL", "ROOT", "TEST_FILE", "WITH_AGGREGATOR", "agent_cfg", "as_key",
           "free_port", "running_aggregator"]

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cmapss_fd001"
TEST_FILE = ROOT / "models" / "data" / "cmapss_fd001" / "test_FD001.txt.gz"
# Engines 31 and 34 end 8 and 7 cycles before failure; engine 1 ends 112 cycles before.
ASSETS = ["engine-001", "engine-031", "engine-034"]
# publish.confirm for an agent next to `running_aggregator`: released only by the
# aggregator's confirmation (a retained Delivery on the agent's cmd/delivery topic).
WITH_AGGREGATOR = "aggregator"


def agent_cfg(
    tmp_path: Path, mqtt_url: str, agent_id: str = "gw-e2e", *, confirm: str = "aggregator",
    **source
) -> agent_config.AgentConfig:
    """A replay of `ASSETS` from the FD001 test file, as fast as possible unless told.

    ``confirm`` is ``publish.confirm``: "broker" for an agent with no aggregator to confirm
    its messages, `WITH_AGGREGATOR` for one next to the real aggregator."""
    return agent_config.parse({
        "agent": {"id": agent_id, "site": "plant1", "line": "line1"},
        "model": {"dir": str(MODEL)},
        "source": {"type": "replay", "path": str(TEST_FILE), "assets": ASSETS, "speed": 0,
                   "step_s": 600, "start": "2026-01-01T00:00:00Z", **source},
        "mqtt": {"url": mqtt_url},
        "outbox": {"path": str(tmp_path / agent_id / "outbox.db")},
        "publish": {"max_items": 100, "flush_interval_s": 0.2, "health_interval_s": 1,
                    "confirm": confirm},
    })


def as_key(s: Scored) -> tuple[str, int]:
    """(asset, window end in ns): how a scored window is identified in InfluxDB."""
    return s.asset, int(round(s.window_end.timestamp() * 1e9))


@contextlib.contextmanager
def running_aggregator(
    tmp_path: Path, mqtt_url: str, influx=None, **extra: Any
) -> Iterator[httpx.Client]:
    """The real aggregator (ServerThread) on the given broker; InfluxDB when given.

    ``extra`` are further ``Settings`` fields, e.g. ``mqtt_username`` and ``mqtt_password``.
    The client sends an admin token.
    """
    from aggregator_support import api_token, bearer

    from aggregator.server import ServerThread
    from aggregator.settings import Settings

    port = free_port()
    settings = Settings(
        mqtt_url=mqtt_url,
        influx_url=None if influx is None else influx.url,
        influx_database="linewatch" if influx is None else influx.database,
        db_url=f"sqlite:///{tmp_path / 'agg.db'}", series_path=tmp_path / "series.db",
        http_port=port, rule_k=3, rule_n=5, mqtt_client_id="agg-test", **extra,
    )
    server = ServerThread(settings)
    server.start()
    try:
        token = api_token(server, "admin")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          headers=bearer(token)) as api:
            yield api
    finally:
        server.stop()
