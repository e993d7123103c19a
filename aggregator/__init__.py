"""linewatch aggregator: the central service.

It subscribes to every agent's MQTT topics, validates each message against the wire
contract (``contract.wire``), stores predictions, drift events and health reports in a series
store (InfluxDB 1.x or an embedded SQLite file), opens and escalates maintenance tickets in
SQL (SQLite or PostgreSQL), and serves a REST API. ``linewatch aggregator`` runs it
(``python -m aggregator serve`` is the same command; README.md, "Running the parts yourself").

Heavy imports (FastAPI, paho, amqtt, SQLAlchemy) live in the submodules; this package
only names the public entry points, imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AggregatorError",
    "Ingestor",
    "ServerThread",
    "Settings",
    "create_app",
    "load_settings",
    "open_series",
    "serve",
]

_WHERE = {
    "AggregatorError": "aggregator.errors",
    "Ingestor": "aggregator.ingest",
    "ServerThread": "aggregator.server",
    "Settings": "aggregator.settings",
    "create_app": "aggregator.api.app",
    "load_settings": "aggregator.settings",
    "open_series": "aggregator.series",
    "serve": "aggregator.server",
}


def __getattr__(name: str) -> Any:
    # PEP 562: `from aggregator import create_app` works without importing FastAPI (and
    # paho, amqtt, ...) for someone who only needs `aggregator.settings`.
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'aggregator' has no attribute {name!r}")
