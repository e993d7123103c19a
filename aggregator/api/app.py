"""``create_app(settings)``: the one function that wires the aggregator together.

Read top to bottom, the lifespan is the whole service: series store, SQL, (embedded)
broker, ingestor, subscriber; shutdown runs the same steps in reverse. Every route but
the probes and the docs needs an API token (``api/security.py`` says who may do what).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from aggregator import auth
from aggregator.api.routes import (
    agents,
    assets,
    docs,
    drift,
    failures,
    health,
    metrics,
    model_health,
    notifications,
    registry,
    tickets,
    tokens,
)
from aggregator.api.schemas import ErrorOut
from aggregator.auth import TokenNameTakenError, TokenNotFoundError
from aggregator.broker import EmbeddedBroker
from aggregator.db import open_engine, open_sessions
from aggregator.errors import (
    FailureTicketedError,
    TicketNotFoundError,
    TicketStateError,
    UnavailableError,
)
from aggregator.ingest import Ingestor
from aggregator.metrics import Metrics
from aggregator.notify import intents as notify
from aggregator.notify.worker import Notifier
from aggregator.reactions import standard as standard_reactions
from aggregator.registry.lifecycle import gate_judge
from aggregator.registry.publisher import ModelPublisher
from aggregator.series import open_series
from aggregator.settings import Settings
from aggregator.subscriber import Subscriber
from aggregator.web import install as install_web

__all__ = ["STATIC_DIR", "create_app"]

logger = logging.getLogger(__name__)

_NO_TOKEN = ("no API token yet: create one with `linewatch token create --scope admin --name "
             "you` (every route but /healthz, /readyz and the docs needs one)")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # ExitStack: whatever started is stopped, in reverse order, also when a later step
    # fails during startup.
    with ExitStack() as stack:
        series = open_series(settings)
        stack.callback(series.close)
        engine = open_engine(settings.db_url)
        stack.callback(engine.dispose)
        if settings.mqtt_url is None:
            broker = EmbeddedBroker(settings.embedded_broker_host, settings.embedded_broker_port)
            broker.start()
            stack.callback(broker.stop)
        # What follows every stored batch, in order: agent registry, maintenance rule, ...
        sessions = open_sessions(engine)
        ingestor = Ingestor(series, sessions, settings, reactions=standard_reactions(settings))
        subscriber = Subscriber(settings, ingestor)
        # Sends the notification outbox; the andon publishes on the subscriber's client.
        notifier = Notifier(settings, sessions, subscriber.confirmer.client)
        notify.install(sessions, notify.policy(settings), notifier.wake)
        notifier.start()
        stack.callback(notifier.stop)
        subscriber.start()
        stack.callback(subscriber.stop)
        # Model assignments, on the same client; canaries judged by the promotion gate.
        app.state.registry_judge = gate_judge(series, settings.gate_policy())
        publisher = ModelPublisher(settings, ingestor.session_factory,
                                   subscriber.confirmer.client,
                                   judge=lambda s, q: app.state.registry_judge(s, q))
        publisher.start()
        stack.callback(publisher.stop)
        app.state.model_publisher = publisher

        with ingestor.session_factory() as session:
            if not auth.count_active(session):
                logger.warning(_NO_TOKEN)
        app.state.series = series
        app.state.session_factory = ingestor.session_factory
        app.state.ingestor = ingestor
        app.state.subscriber = subscriber
        app.state.notifier = notifier
        app.state.metrics = Metrics(ingestor, subscriber, notifier, engine)
        logger.info(
            "aggregator up: broker %s:%d%s, series %s, db %s",
            *settings.mqtt[:2], " (embedded)" if settings.mqtt_url is None else "",
            series.name, engine.url.render_as_string(hide_password=True),
        )
        yield
        logger.info("aggregator shutting down")


# Every handler answers ErrorOut, the body the routes declare for these statuses.
def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(ErrorOut(detail=detail).model_dump(), status_code=status)


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return _error(404, str(exc))


async def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    return _error(409, str(exc))


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    return _error(503, str(exc))


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Connection refused, database gone, SQLite locked: transient, like UnavailableError.
    # The driver's text stays in the log; it may name hosts and users.
    logger.warning("%s %s: SQL database unavailable: %s", request.method, request.url.path, exc)
    return _error(503, "the SQL database cannot be reached right now; retry later")


STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings) -> FastAPI:
    """The aggregator as an ASGI app; nothing starts until its lifespan runs."""
    app = FastAPI(
        title="linewatch aggregator",
        version="0.1.0",
        lifespan=_lifespan,
        # Served by routes/docs.py from STATIC_DIR instead of FastAPI's CDN-backed pages.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(agents.router)
    app.include_router(drift.router)
    app.include_router(tickets.router)
    app.include_router(failures.router)
    app.include_router(assets.router)
    app.include_router(model_health.router)
    app.include_router(tokens.router)
    app.include_router(docs.router)
    app.include_router(notifications.router)
    app.include_router(metrics.router)
    app.include_router(registry.router)
    app.mount(docs.STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(TicketNotFoundError, _not_found)
    app.add_exception_handler(TicketStateError, _conflict)
    app.add_exception_handler(FailureTicketedError, _conflict)
    app.add_exception_handler(TokenNotFoundError, _not_found)
    app.add_exception_handler(TokenNameTakenError, _conflict)
    app.add_exception_handler(UnavailableError, _unavailable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    # The web pages under /ui (and / leading there): sessions, not bearer tokens.
    install_web(app)
    return app
