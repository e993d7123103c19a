"""``GET /metrics``: Prometheus metrics (``aggregator.metrics``), read scope.

A token is required like on every route that holds data (counts per site, ticket kinds,
target names): Prometheus sends one with ``authorization: {credentials_file: ...}`` in the
scrape config (README, "Metrics")."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from aggregator.api.responses import AUTH
from aggregator.api.security import READ
from aggregator.metrics import CONTENT_TYPE, Metrics

__all__ = ["metrics", "router"]

router = APIRouter(tags=["health"], responses=AUTH)


@router.get(
    "/metrics",
    dependencies=[READ],
    response_class=Response,
    responses={200: {"description": "Prometheus text format 0.0.4",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    """Ingest counters, rejects by reason, delivery gaps, series store write latency, queue
    depth, tickets by kind and status, notifications by target and status. Figures of this
    replica and of the fleet (from SQL) are told apart in each metric's help text."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
