"""Predictions to wire bytes without a pydantic object per window.

Building a :class:`contract.wire.Prediction` per window and validating it cost more than
scoring the window. :func:`predictions_payload` writes the same bytes as
``wire.encode(wire.Envelope.build(...))`` over those objects, from the columns the agent
computes: the envelope is built and validated once per message with its first prediction,
the other items are checked with whole-array operations (finite scores in [0, 1], windows
in order, alerts that follow the threshold, asset names checked once each), and every
value is written by pydantic's own JSON serializer, so the text is the same to the byte.
Anything that would not validate goes through the pydantic models, which raise as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import numpy as np
import pydantic_core
from pydantic import TypeAdapter, ValidationError

from contract import wire

__all__ = ["predictions_payload"]

_NAME: TypeAdapter[str] = TypeAdapter(wire.Name)
_ITEMS = b'"items":['
_names: dict[str, bytes] = {}  # asset name -> its JSON string, once validated


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _name(asset: str) -> bytes | None:
    out = _names.get(asset)
    if out is None:
        try:
            _NAME.validate_python(asset)
        except ValidationError:
            return None
        out = _names[asset] = pydantic_core.to_json(asset)
    return out


def _models(assets: Sequence[str], start: np.ndarray, end: np.ndarray, score: np.ndarray,
            alert: np.ndarray) -> list[wire.Item]:
    return [wire.Prediction(asset=a, window_start=_dt(s0), window_end=_dt(s1), score=float(s),
                            alert=bool(al))
            for a, s0, s1, s, al in zip(assets, start.tolist(), end.tolist(), score.tolist(),
                                        alert.tolist(), strict=True)]


def predictions_payload(
    agent: str, seq: int, model: wire.ModelRef, assets: Sequence[str], start: np.ndarray,
    end: np.ndarray, score: np.ndarray, alert: np.ndarray,
) -> tuple[UUID, datetime, bytes]:
    """(msg_id, ts, payload) of an envelope of predictions; raises what ``wire.encode`` and
    the wire models raise (``WireError("too_large")`` for an oversized payload)."""
    score = np.asarray(score, dtype=np.float64)
    alert = np.asarray(alert, dtype=bool)
    names = [_name(a) for a in dict.fromkeys(assets)]
    usable = (
        len(score) > 0 and None not in names
        and bool(np.isfinite(score).all() and (score >= 0).all() and (score <= 1).all())
        and bool((start <= end).all()) and bool((alert == (score >= model.threshold)).all())
    )
    if not usable:  # raises the models' own ValidationError
        env = wire.Envelope.build(agent, seq, model, _models(assets, start, end, score, alert))
        return env.msg_id, env.ts, wire.encode(env)
    first = _models(assets[:1], start[:1], end[:1], score[:1], alert[:1])
    env = wire.Envelope.build(agent, seq, model, first)
    shell = wire.encode(env)
    shell = shell[:shell.rindex(_ITEMS) + len(_ITEMS)]
    epochs, where = np.unique(np.concatenate([start, end]), return_inverse=True)
    times = pydantic_core.to_json([_dt(e) for e in epochs.tolist()])[1:-1].split(b",")
    scores = pydantic_core.to_json(score.tolist())[1:-1].split(b",")
    n = len(score)
    items = b",".join(
        b'{"kind":"prediction","asset":%s,"window_start":%s,"window_end":%s,"score":%s,'
        b'"alert":%s}' % (_names[a], times[s0], times[s1], s, b"true" if al else b"false")
        for a, s0, s1, s, al in zip(assets, where[:n].tolist(), where[n:].tolist(), scores,
                                    alert.tolist(), strict=True))
    payload = shell + items + b"]}"
    if len(payload) > wire.MAX_PAYLOAD_BYTES:
        raise wire.WireError("too_large", f"{len(payload)} bytes > {wire.MAX_PAYLOAD_BYTES}")
    return env.msg_id, env.ts, payload
