"""``Annotated`` dependency aliases: what a route may ask for, all read from ``app.state``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from aggregator.ingest import Ingestor
from aggregator.series import SeriesStore
from aggregator.settings import Settings
from aggregator.subscriber import Subscriber

__all__ = [
    "IngestorDep",
    "SeriesDep",
    "SessionDep",
    "SettingsDep",
    "SubscriberDep",
    "get_ingestor",
    "get_series",
    "get_session",
    "get_settings",
    "get_subscriber",
]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_series(request: Request) -> SeriesStore:
    series: SeriesStore = request.app.state.series
    return series


def get_ingestor(request: Request) -> Ingestor:
    ingestor: Ingestor = request.app.state.ingestor
    return ingestor


def get_subscriber(request: Request) -> Subscriber:
    subscriber: Subscriber = request.app.state.subscriber
    return subscriber


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; routes that write call ``session.commit()`` themselves."""
    with request.app.state.session_factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SeriesDep = Annotated[SeriesStore, Depends(get_series)]
IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]
SubscriberDep = Annotated[Subscriber, Depends(get_subscriber)]
SessionDep = Annotated[Session, Depends(get_session)]
