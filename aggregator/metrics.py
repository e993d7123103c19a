"""Prometheus metrics (``GET /metrics``), in Prometheus' text format (prometheus_client).

Two kinds of figures, told apart by their help text:

- **this replica's**, counted in memory since it started (a restart starts them at 0,
  which Prometheus' ``rate()`` handles): messages ingested by outcome, items by kind,
  rejects by reason, MQTT receipts and disconnects, the ingest queue's depth, the series
  store's write latency, notification attempts by target and outcome. Sum them over
  replicas.
- **the fleet's**, read from SQL at each scrape (a few cheap aggregate queries on the raw
  connection, so a scrape never waits for SQLite's write lock): delivery gaps, reorders,
  duplicates and outstanding messages, tickets by kind and status, notifications by target
  and status. Every replica reports the same values: take ``max``, not ``sum``.

Read from the counters the aggregator keeps anyway (``Ingestor.counts``,
``Subscriber.counts``, ``Notifier.outcomes``) by a custom collector at scrape time; only
the latency histogram is observed on the ingest path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

if TYPE_CHECKING:
    from aggregator.ingest import Ingestor
    from aggregator.notify.worker import Notifier
    from aggregator.subscriber import Subscriber

__all__ = ["CONTENT_TYPE", "Metrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DELIVERY_COLUMNS = ("gaps_opened", "reorders", "duplicates", "resets", "resend_requests",
                     "dropped_messages", "gone_messages", "outstanding")


class Metrics:
    """The aggregator's metrics registry; one per app (tests build several in a process)."""

    def __init__(self, ingestor: Ingestor, subscriber: Subscriber, notifier: Notifier,
                 engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.store_write = Histogram(
            "linewatch_series_write_seconds",
            "Time to write one ingest batch to the series store (this replica).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        ingestor.on_series_write = self.store_write.observe
        self.registry.register(_Collector(ingestor, subscriber, notifier, engine))

    def render(self) -> bytes:
        """Every metric, in the text format."""
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, ingestor: Ingestor, subscriber: Subscriber, notifier: Notifier,
                 engine: Engine) -> None:
        self.ingestor = ingestor
        self.subscriber = subscriber
        self.notifier = notifier
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        yield from self._mqtt()
        yield from self._notifier()
        yield from self._fleet()

    def _ingest(self) -> Iterable[Metric]:
        c = self.ingestor.counts
        messages = CounterMetricFamily(
            "linewatch_ingest_messages", "MQTT messages handled, by outcome (this replica).",
            labels=["status"])
        messages.add_metric(["accepted"], c.accepted)
        messages.add_metric(["duplicate"], c.duplicates)
        messages.add_metric(["rejected"], sum(c.rejected.values()))
        items = CounterMetricFamily(
            "linewatch_ingest_items", "Items stored from accepted messages, by kind (this "
            "replica).", labels=["kind"])
        items.add_metric(["prediction"], c.predictions)
        items.add_metric(["drift"], c.drift_events)
        items.add_metric(["health"], c.health_reports)
        items.add_metric(["status"], c.statuses)
        rejected = CounterMetricFamily(
            "linewatch_ingest_rejected", "Rejected (quarantined) messages by reason (this "
            "replica).", labels=["reason"])
        for reason, n in sorted(c.rejected.items()):
            rejected.add_metric([reason], n)
        return [messages, items, rejected]

    def _mqtt(self) -> Iterable[Metric]:
        s = self.subscriber.counts
        out: list[Metric] = []
        for name, value, what in (
                ("received", s.received, "MQTT messages received"),
                ("acked", s.acked, "MQTT messages acknowledged after they were stored"),
                ("batches", s.batches, "ingest batches stored"),
                ("batch_retries", s.retries, "ingest batches retried after a failure"),
                ("disconnects", s.disconnects, "connections to the broker lost"),
                ("queue_waits", s.waits, "times the ingest queue was full and the broker "
                 "was held back")):
            metric = CounterMetricFamily(f"linewatch_mqtt_{name}", f"{what} (this replica).")
            metric.add_metric([], value)
            out.append(metric)
        depth = GaugeMetricFamily("linewatch_ingest_queue_depth",
                                  "Received messages waiting to be handled (this replica).")
        depth.add_metric([], s.queued)
        capacity = GaugeMetricFamily("linewatch_ingest_queue_capacity",
                                     "Size of the ingest queue (LINEWATCH_INGEST_QUEUE_SIZE).")
        capacity.add_metric([], self.ingestor.settings.ingest_queue_size)
        up = GaugeMetricFamily("linewatch_mqtt_subscribed",
                               "1 while subscribed to the broker (this replica).")
        up.add_metric([], 1 if s.subscribed else 0)
        return [*out, depth, capacity, up]

    def _notifier(self) -> Iterable[Metric]:
        attempts = CounterMetricFamily(
            "linewatch_notification_attempts", "Attempts to send a notification, by target "
            "and outcome: sent, error (retried), failed (given up) (this replica).",
            labels=["target", "status"])
        for (target, status), n in sorted(self.notifier.outcomes.items()):
            attempts.add_metric([target, status], n)
        return [attempts]

    def _fleet(self) -> Iterable[Metric]:
        try:
            rows = _query(self.engine, {
                "delivery": f"SELECT {', '.join(_DELIVERY_COLUMNS)} FROM agent_delivery",
                "tickets": "SELECT kind, status, COUNT(*) FROM tickets GROUP BY kind, status",
                "notifications": "SELECT target, status, COUNT(*) FROM notifications "
                                 "GROUP BY target, status",
            })
        except Exception as exc:  # a scrape reports what it can; /readyz says why
            logger.debug("no fleet metrics: %s", exc)
            up = GaugeMetricFamily("linewatch_sql_up", "1 when the SQL database answered "
                                   "this scrape.")
            up.add_metric([], 0)
            return [up]
        up = GaugeMetricFamily("linewatch_sql_up", "1 when the SQL database answered this "
                               "scrape.")
        up.add_metric([], 1)
        out: list[Metric] = [up]
        # Summed in Python: an agent that jumped its seqs may hold a count near 2**63.
        sums = [sum(int(r[i]) for r in rows["delivery"]) for i in range(len(_DELIVERY_COLUMNS))]
        for name, total in zip(_DELIVERY_COLUMNS, sums, strict=True):
            if name == "outstanding":
                metric: Metric = GaugeMetricFamily(
                    "linewatch_delivery_outstanding_messages", "Messages in the agents' open "
                    "gaps, not received yet (fleet, from SQL).")
            else:
                metric = CounterMetricFamily(
                    f"linewatch_delivery_{name}", f"Agents' {name.replace('_', ' ')} since "
                    "the aggregator first heard of them (fleet, from SQL).")
            metric.add_metric([], total)  # type: ignore[attr-defined]
            out.append(metric)
        tickets = GaugeMetricFamily("linewatch_tickets", "Tickets by kind and status (fleet, "
                                    "from SQL).", labels=["kind", "status"])
        for kind, status, n in sorted(rows["tickets"]):
            tickets.add_metric([kind, status], n)
        notes = GaugeMetricFamily(
            "linewatch_notifications", "Notifications by target and status: pending, sent, "
            "failed, suppressed (fleet, from SQL).", labels=["target", "status"])
        for target, status, n in sorted(rows["notifications"]):
            notes.add_metric([target, status], n)
        return [*out, tickets, notes]


def _query(engine: Engine, queries: dict[str, str]) -> dict[str, list[Any]]:
    """Run read-only queries on a raw DBAPI connection (on SQLite a SQLAlchemy connection
    would BEGIN IMMEDIATE, taking the write lock)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        out = {}
        for name, sql in queries.items():
            cursor.execute(sql)
            out[name] = list(cursor.fetchall())
        cursor.close()
        return out
    finally:
        raw.close()
