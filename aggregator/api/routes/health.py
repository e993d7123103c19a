"""``GET /healthz``: is the aggregator receiving and storing, and what has it counted."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator.api.deps import IngestorDep, SeriesDep, SettingsDep, SubscriberDep
from aggregator.api.schemas import CountsOut, HealthOut, MqttHealthOut, SeriesHealthOut

__all__ = ["healthz", "router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(
    settings: SettingsDep, series: SeriesDep, subscriber: SubscriberDep, ingestor: IngestorDep
) -> HealthOut:
    """``ok`` when subscribed to the broker and the series store answers, else ``degraded``.

    Always 200: the body says what is wrong; the process itself is alive.
    """
    sub = subscriber.counts
    series_ok = series.ping()
    counts = ingestor.counts
    return HealthOut(
        status="ok" if sub.subscribed and series_ok else "degraded",
        mqtt=MqttHealthOut(
            connected=sub.connected,
            subscribed=sub.subscribed,
            broker=f"{settings.mqtt.host}:{settings.mqtt.port}",
            embedded=settings.mqtt_url is None,
            received=sub.received,
            acked=sub.acked,
            queued=sub.queued,
            retries=sub.retries,
            overflowed=sub.overflowed,
        ),
        series=SeriesHealthOut(backend=series.name, ok=series_ok),
        counts=CountsOut(
            accepted=counts.accepted,
            predictions_stored=counts.predictions,
            drift_events_stored=counts.drift_events,
            health_reports_stored=counts.health_reports,
            duplicates=counts.duplicates,
            statuses=counts.statuses,
            rejected=counts.rejected,
        ),
    )
