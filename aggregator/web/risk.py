"""A ticket's risk card in plain words, from what the ticket and the model card hold.

Three sentences a technician reads at arm's length, each made only from stored facts, and
saying so in words when a fact is missing (nothing is guessed):

- **the chance**: the newest score in the ticket's evidence, read as a probability only
  when the model card says the model's scores can be (``output.name`` is
  ``probabilities`` and the card's ``calibration`` vouches for them), through the card's
  calibration map when it has one, as the agents read it (``agent.estimate``). The event
  is the card's own ``output.meaning`` ("the engine fails within the next 30 cycles");
- **similar alerts**: of the last ``SIMILAR`` resolved tickets of the same kind on the
  same line, how many were confirmed (for maintenance and inspect tickets a real fault,
  ``outcomes.REAL_FAULT``; for sensor tickets a ``sensor_fault``); outcomes that count
  for nothing (``other``, ``superseded``) are left out;
- **main drivers**: the signals the agents' conditions in the evidence name, the furthest
  out of their training range first, with the direction they moved.

Pure functions on plain values: the page reads the ticket, the card and the outcomes and
passes them in.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.outcomes import NOT_COUNTED, REAL_FAULT
from contract.card import CARD_FILE, ModelCard
from contract.errors import ContractError

__all__ = [
    "DRIVERS",
    "SIMILAR",
    "Chance",
    "RiskCard",
    "Score",
    "card_of",
    "chance",
    "confirmed",
    "drivers",
    "latest_score",
    "risk_card",
    "similar",
    "tenths",
]

logger = logging.getLogger(__name__)

SIMILAR = 10  # resolved tickets "similar alerts" looks back over
DRIVERS = 3  # signals named as main drivers


@dataclass(frozen=True, slots=True)
class Score:
    """One scored window from a ticket's evidence."""

    window_end: datetime
    score: float
    alert: bool


@dataclass(frozen=True, slots=True)
class Chance:
    """The newest score read as a probability (``probability`` None: it cannot be), and
    the sentence that says so."""

    probability: float | None
    words: str


@dataclass(frozen=True, slots=True)
class RiskCard:
    """What the ticket page shows first."""

    score: Score | None
    chance: Chance
    similar: str
    drivers: str


def _scores(evidence: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Scored windows of the evidence: the ticket's own, those a sensor or inspect ticket
    keeps as untrusted risk, and those of the ticket it was reclassified from."""
    found: list[Mapping[str, Any]] = []
    for holder in (evidence, evidence.get("untrusted_risk"), evidence.get("reclassified_from")):
        if isinstance(holder, Mapping):
            found.extend(s for s in holder.get("scores") or [] if isinstance(s, Mapping))
    return found


def latest_score(evidence: Mapping[str, Any]) -> Score | None:
    """The newest scored window in a ticket's evidence, or None without one.

    >>> latest_score({"scores": [{"window_end": "2026-01-01T10:00:00+00:00", "score": 0.4,
    ...                           "alert": False},
    ...                          {"window_end": "2026-01-01T11:00:00+00:00", "score": 0.9,
    ...                           "alert": True}]}).score
    0.9
    >>> latest_score({"verdict": "sensor"}) is None
    True
    """
    newest: Score | None = None
    for s in _scores(evidence):
        try:
            point = Score(datetime.fromisoformat(str(s["window_end"])), float(s["score"]),
                          bool(s.get("alert")))
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isfinite(point.score):
            continue
        if newest is None or point.window_end > newest.window_end:
            newest = point
    return newest


def tenths(p: float) -> str:
    """A probability as "about N in 10", never 0 or 10 in 10: a calibration map may reach
    0 or 1 at its ends, but a model's chance is never a certainty.

    >>> tenths(0.68), tenths(0.02), tenths(0.97), tenths(1.0)
    ('about 7 in 10', 'less than 1 in 10', 'more than 9 in 10', 'more than 9 in 10')
    """
    n = math.floor(min(max(p, 0.0), 1.0) * 10 + 0.5)
    if n == 0:
        return "less than 1 in 10"
    if n == 10:
        return "more than 9 in 10"
    return f"about {n} in 10"


def _event(meaning: str) -> str:
    """The card's output meaning as the event a chance is of."""
    text = meaning.strip().rstrip(".")
    for lead in ("probability that ", "Probability that "):
        if text.startswith(lead):
            return "that " + text[len(lead):]
    return f"({text})"


def chance(score: Score | None, card: ModelCard | None, *, kind: str, threshold: float
           ) -> Chance:
    """The newest score as a chance in words (see the module docstring)."""
    if kind == "retraining":
        return Chance(None, "This ticket is about the model, not one machine: no chance of "
                      "failure is given.")
    if score is None:
        return Chance(None, "No risk score is in this ticket's evidence.")
    seen = f"The model's newest score is {score.score:.2f} (alert threshold {threshold:.2f})"
    if kind in ("sensor", "inspect"):
        why = ("a sensor is suspect" if kind == "sensor"
               else "its inputs are outside what the model was trained on")
        return Chance(None, f"{seen}, but it is not trusted while {why}: no chance is given.")
    if card is None:
        return Chance(None, f"{seen}; the model card is not available here, so it is not "
                      "read as a chance.")
    if card.output.name != "probabilities":
        return Chance(None, f"{seen}; this model's score is not a probability "
                      f"({card.output.meaning}).")
    cal = card.calibration
    if cal is None or not cal.calibrated:
        return Chance(None, f"{seen}; the model card does not vouch for its scores as "
                      "probabilities, so it is not read as a chance.")
    p = score.score if cal.map is None else float(np.interp(score.score, cal.map.x, cal.map.y))
    return Chance(p, f"{tenths(p).capitalize()} chance {_event(card.output.meaning)}.")


def confirmed(kind: str, outcome: str | None) -> bool | None:
    """Whether a resolved ticket of ``kind`` confirmed its alert; None when its outcome
    counts for nothing (or it has none).

    >>> confirmed("maintenance", "preventive_action"), confirmed("sensor", "sensor_fault")
    (True, True)
    >>> confirmed("maintenance", "sensor_fault"), confirmed("maintenance", "other")
    (False, None)
    """
    if outcome is None or outcome in NOT_COUNTED:
        return None
    if kind == "sensor":
        return outcome == "sensor_fault"
    return outcome in REAL_FAULT


def similar(kind: str, line: str, outcomes: Sequence[str | None]) -> str:
    """"K of the last M similar alerts on this line were confirmed", from the outcomes of
    the line's resolved tickets of ``kind``, newest first.

    >>> similar("maintenance", "line1", ["confirmed_failure", "other", "no_fault_found"])
    '1 of the last 2 similar alerts on line1 were confirmed (1 was not).'
    >>> similar("sensor", "line1", [])
    'No similar alert on line1 has been resolved with an outcome yet.'
    """
    if kind == "retraining":
        return "Retraining tickets are judged by the model's health: see Model health."
    judged = [c for c in (confirmed(kind, o) for o in outcomes) if c is not None][:SIMILAR]
    if not judged:
        return f"No similar alert on {line} has been resolved with an outcome yet."
    k, m = sum(judged), len(judged)
    what = "alert" if m == 1 else "alerts"
    verb = "was" if m == 1 else "were"
    if m == 1:
        return f"The last similar alert on {line} {'was' if k else 'was not'} confirmed."
    return (f"{k} of the last {m} similar {what} on {line} {verb} confirmed "
            f"({m - k} {'was' if m - k == 1 else 'were'} not).")


def _name(monitor: str) -> str:
    """``sensor_11.mean`` -> ``sensor 11 (mean)``."""
    base, _, stat = monitor.partition(".")
    base = base.replace("_", " ")
    return f"{base} ({stat})" if stat else base


def _driver(c: Mapping[str, Any]) -> tuple[float, str] | None:
    monitor = str(c.get("monitor") or "")
    if not monitor:
        return None
    detector = str(c.get("detector") or "")
    if detector == "stuck":
        return math.inf, f"{_name(monitor)} stuck"
    if detector == "nan":
        return math.inf, f"{_name(monitor)} unreadable"
    ref = c.get("reference")
    current = c.get("current")
    if not isinstance(ref, Mapping) or not isinstance(current, int | float):
        return 0.0, f"{_name(monitor)} ({detector or 'changed'})"
    low, high = ref.get("low"), ref.get("high")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        return 0.0, f"{_name(monitor)} ({detector or 'changed'})"
    width = max(float(high) - float(low), 1e-12)
    if current > high:
        return (current - high) / width, f"{_name(monitor)} up"
    if current < low:
        return (low - current) / width, f"{_name(monitor)} down"
    mean = ref.get("mean")
    side = "up" if isinstance(mean, int | float) and current >= mean else "down"
    return 0.0, f"{_name(monitor)} {side}"


def drivers(evidence: Mapping[str, Any]) -> str:
    """The main drivers in words, from the conditions in the evidence.

    >>> drivers({"conditions": [
    ...     {"monitor": "sensor_4.mean", "detector": "envelope", "current": 1440,
    ...      "reference": {"low": 1380, "high": 1420}},
    ...     {"monitor": "sensor_11.mean", "detector": "envelope", "current": 48.6,
    ...      "reference": {"low": 47.1, "high": 48.1}}]})
    'Main drivers: sensor 11 (mean) up, sensor 4 (mean) up.'
    >>> drivers({"scores": []})
    'Main drivers: not known: the evidence holds risk scores only, not the inputs behind them.'
    """
    found: list[Mapping[str, Any]] = []
    for holder in (evidence, evidence.get("reclassified_from")):
        if isinstance(holder, Mapping):
            found.extend(c for c in holder.get("conditions") or [] if isinstance(c, Mapping))
    ranked: dict[str, float] = {}
    for c in found:
        got = _driver(c)
        if got is not None:
            weight, words = got
            ranked[words] = max(weight, ranked.get(words, -1.0))
    if not ranked and isinstance(evidence.get("signals"), list):
        # A retraining ticket: the signals that moved, on the most assets first.
        names = [str(s.get("signal")) for s in evidence["signals"]
                 if isinstance(s, Mapping) and s.get("signal")]
        ranked = {_name(n): -i for i, n in enumerate(names)}
    if not ranked:
        return ("Main drivers: not known: the evidence holds risk scores only, not the "
                "inputs behind them.")
    top = sorted(ranked, key=lambda w: (-ranked[w], w))[:DRIVERS]
    return f"Main drivers: {', '.join(top)}."


@functools.lru_cache(maxsize=64)
def _load(path: Path, _mtime_ns: int) -> ModelCard | None:
    try:
        return ModelCard.load(path.parent)
    except ContractError as exc:
        logger.warning("risk card: skipping %s: %s", path, exc)
        return None


def card_of(models_dir: Path | None, name: str, version: str) -> ModelCard | None:
    """The card of model ``name`` ``version`` under ``models_dir`` (its subdirectories'
    ``card.json``), or None."""
    if models_dir is None:
        return None
    try:
        paths = sorted(models_dir.glob(f"*/{CARD_FILE}"))
    except OSError:
        return None
    for path in paths:
        try:
            card = _load(path, path.stat().st_mtime_ns)
        except OSError:
            continue
        if card is not None and (card.name, card.version) == (name, version):
            return card
    return None


def risk_card(kind: str, line: str, threshold: float, evidence: Mapping[str, Any],
              card: ModelCard | None, outcomes: Iterable[str | None]) -> RiskCard:
    """The risk card of a ticket; ``outcomes``: of the line's resolved tickets of the same
    kind, newest first."""
    score = latest_score(evidence)
    return RiskCard(score, chance(score, card, kind=kind, threshold=threshold),
                    similar(kind, line, list(outcomes)), drivers(evidence))
