"""Helpers shared by the aggregator's tests: payload builders and bounded waiting.

Importable as ``aggregator_support`` because pytest puts ``tests/`` on ``sys.path`` for
``tests/conftest.py`` (rootdir "prepend" import mode), like ``servers``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.wire import Envelope, ModelRef, Prediction, encode, topic

__all__ = ["T0", "MODEL", "envelope", "payload", "predictions", "wait_until", "data_topic"]

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


def envelope(agent: str, seq: int, items: list[Any], model: ModelRef = MODEL) -> Envelope:
    return Envelope.build(agent, seq, model, items)


def payload(agent: str, seq: int, items: list[Any], model: ModelRef = MODEL) -> bytes:
    return encode(envelope(agent, seq, items, model))


def data_topic(
    agent: str, kind: str = "predictions", site: str = "plant1", line: str = "line3"
) -> str:
    return topic(site, line, agent, kind)


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
