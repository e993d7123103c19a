"""The state of the agent's windows and monitors, kept on disk with the source's position,
so that a restarted agent goes on monitoring where it stopped instead of starting every
CUSUM, run counter and step test from zero.

A checkpoint holds, per asset, the samples waiting for their window, the quality checks'
state (last values and runs, the step test's recent samples, the usual interval, the
conditions on), each feature's envelope CUSUM, the alert-rate CUSUM (a River detector) and
the performance estimate's recent windows. It is pickled and saved by
``agent.position.PositionStore`` in the same transaction as the position (right after a
full flush: every output of the ticks up to it is in the outbox), so the two always agree.

It applies only to the same model, monitor thresholds and replay: its *identity* (model
sha256 and version, window, channels, every threshold the budget gave, the estimate's
settings and the source's fingerprint) must equal the running agent's, or it is ignored
with a log line and the agent refills its windows from the source as before.

The file is the agent's own (next to its outbox); pickle is used because River detectors
are made to be pickled, and nothing else writes there.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zlib
from typing import Any

__all__ = ["PARTS", "identity", "restore", "snapshot"]

# Which attributes of which part of the agent make its state.
PARTS: dict[str, tuple[str, ...]] = {
    "windower": ("_rows", "_names", "_values", "_times", "_pos", "_n", "_skip"),
    "quality": ("rejected_readings", "_active", "_rows", "_flagged", "_last", "_run",
                "_began", "_tail", "_tail_t", "_tail_n", "_armed", "_last_t", "_iv",
                "_iv_n", "_iv_at"),
    "envelope": ("_rows", "_s", "_onset", "_sum", "_count", "_alarm", "alarms"),
    "score_monitor": ("_cusum", "_times", "_alerts", "_windows"),
    "estimator": ("_p", "_alert", "_next", "_count"),
}


def identity(facts: dict[str, Any]) -> str:
    """A short digest of what a checkpoint must match.

    >>> identity({"a": 1}) == identity({"a": 1}), identity({"a": 1}) == identity({"a": 2})
    (True, False)
    """
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def snapshot(agent: object) -> bytes:
    """The state of every part of ``agent`` named in :data:`PARTS`."""
    state = {}
    for part, names in PARTS.items():
        obj = getattr(agent, part, None)
        if obj is not None:
            state[part] = {n: getattr(obj, n) for n in names}
    # Level 1: most of it is window samples, which compress little; the buffers' spare
    # rows are zeros, which compress a lot.
    return zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1)


def restore(agent: object, blob: bytes) -> None:
    """Put a :func:`snapshot` back; raises ValueError when it does not fit ``agent``."""
    try:
        state = pickle.loads(zlib.decompress(blob))  # noqa: S301 - the agent's own file
    except Exception as exc:  # an unpickling error can be of almost any type
        raise ValueError(f"unreadable: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError("unreadable: not a checkpoint")
    for part, names in PARTS.items():
        obj = getattr(agent, part, None)
        saved = state.get(part)
        if (obj is None) != (saved is None) or (
                saved is not None and set(saved) != set(names)):
            raise ValueError(f"it does not fit this agent's {part}")
    for part, saved in state.items():
        vars(getattr(agent, part)).update(saved)
