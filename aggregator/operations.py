"""How each model version ran in a period: its agents, their inference time, its scores
against the model card's reference, and the drift and data-quality findings.

Pure functions over facts read from the stores (``tally``, ``score_shift``, ``agents``,
``latency``, ``operations``), and one loader that reads them (``load_operations``).
``modelhealth.model_health`` attaches the result to the health figures
(``HealthFigures.operations``), so ``GET /health/models``, the report and ``linewatch
report`` show the same numbers.

What is computed, per model version, over [since, until)
--------------------------------------------------------
- **drift and data quality**: the conditions the agents reported (``db.AssetCondition``
  rows overlapping the period) and the events they sent (the series store's drift events,
  a condition's start and its end each being one), counted per kind, detector and
  monitor, with the assets they were on. *Data quality* is what a sensor or its wiring
  does: the detectors in ``rules.SENSOR_DETECTORS`` and ``gap`` (samples missing); every
  other detector (envelope, alert_rate, ...) is *input drift*. Events are read newest
  first in pages of ``EVENT_PAGE``, at most ``MAX_EVENTS`` per period (``truncated`` says
  when there were more);
- **scores against the reference**: the card's ``reference.score`` quantiles (p01 ..
  p99) cut the score range into bins whose expected shares are the differences of the
  quantiles' levels (1 %, 4 %, 20 %, ... for p01, p05, p25, ...; tied quantiles are
  merged, and an edge at or above the reference's maximum holds everything). The store
  counts every scored window of the period into them (an aggregate read, no sample), and
  the **population stability index** PSI = sum (o - e) ln(o / e) over the bins' observed
  and expected shares (each floored at ``PSI_FLOOR``, so an empty bin counts as nearly
  empty) is read with the usual rule of thumb: below 0.1 stable, 0.1 to 0.25 moderate,
  above 0.25 shifted. Upwards or downwards: whether the windows' mean bin lies above or
  below the reference's. With fewer than ``MIN_WINDOWS`` windows nothing is said ("not
  enough data"): PSI is biased upwards on small samples. The **alert rate** (windows at or
  above the threshold) gets a Wilson interval (``figures.wilson``) and is compared with the
  card's ``reference.monitoring.alert_rate``; the interval treats windows as independent,
  which windows of one machine are not, so it is too narrow: read "higher" or "lower" as
  a hint;
- **agents reporting**: agents with a health report in the period on this model version,
  and their **completeness**: windows received against windows they reported
  undeliverable, from the hourly delivery ledger (``db.DeliveryHour``, the hours that
  overlap the period, as ``GET /agents/{id}/completeness`` counts them: ``delivered``).
  An agent is *complete* when none of its windows of the period was lost;
- **inference latency**: each agent's median ``inference_ms_median`` over its health
  reports of the period; the figure is the median over the agents (the typical
  gateway) and the highest any report gave.

If the series store cannot be reached, the SQL facts are still given and
``series_available`` is False.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from aggregator.db import AssetCondition, DeliveryHour
from aggregator.errors import SeriesUnavailableError
from aggregator.figures import Figure, proportion
from aggregator.rules import SENSOR_DETECTORS
from aggregator.series import HealthSummary, ScoreCounts, SeriesStore, clamp_time
from aggregator.settings import Settings
from contract.card import CARD_FILE, ModelCard, Stats
from contract.errors import ContractError

__all__ = [
    "EVENT_PAGE",
    "MAX_EVENTS",
    "MIN_WINDOWS",
    "PSI_FLOOR",
    "PSI_MODERATE",
    "PSI_SHIFTED",
    "QUALITY_DETECTORS",
    "AgentsReporting",
    "ConditionFact",
    "EventFact",
    "Finding",
    "Findings",
    "Kind",
    "Latency",
    "ModelOperations",
    "ScoreBin",
    "ScoreReference",
    "ScoreShift",
    "agents",
    "delivered",
    "find_card",
    "kind_of",
    "latency",
    "load_operations",
    "operations",
    "score_shift",
    "tally",
]

logger = logging.getLogger(__name__)

QUALITY_DETECTORS = (*SENSOR_DETECTORS, "gap")
EVENT_PAGE = 1000
MAX_EVENTS = 20_000
MIN_WINDOWS = 100
PSI_FLOOR = 1e-4
PSI_MODERATE = 0.1
PSI_SHIFTED = 0.25
_HOUR = timedelta(hours=1)

Kind = Literal["drift", "quality"]
Reading = Literal["stable", "moderate", "shifted", "not_enough_data"]


def kind_of(detector: str) -> Kind:
    """``quality`` for what a sensor does (``QUALITY_DETECTORS``), else ``drift``.

    >>> kind_of("stuck"), kind_of("envelope")
    ('quality', 'drift')
    """
    return "quality" if detector in QUALITY_DETECTORS else "drift"


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True, slots=True)
class Finding:
    """``count`` conditions (or events) of one detector on one monitor, on ``assets``
    distinct assets (a fleet-wide one counts as none)."""

    kind: Kind
    monitor: str
    detector: str
    count: int
    assets: int


@dataclass(frozen=True, slots=True)
class Findings:
    """Conditions or events of one model version: totals per kind, then per monitor and
    detector, most frequent first."""

    drift: int
    quality: int
    items: tuple[Finding, ...]


def tally(found: Iterable[tuple[str, str, str | None]]) -> Findings:
    """Count (monitor, detector, asset) facts; asset None or ``""`` is fleet-wide.

    >>> f = tally([("sensor_4", "stuck", "e1"), ("sensor_4", "stuck", "e2"),
    ...            ("score", "alert_rate", None)])
    >>> f.drift, f.quality, f.items[0]
    (1, 2, Finding(kind='quality', monitor='sensor_4', detector='stuck', count=2, assets=2))
    """
    counts: dict[tuple[str, str], int] = {}
    assets: dict[tuple[str, str], set[str]] = {}
    for monitor, detector, asset in found:
        key = (monitor, detector)
        counts[key] = counts.get(key, 0) + 1
        if asset:
            assets.setdefault(key, set()).add(asset)
    items = tuple(sorted(
        (Finding(kind_of(d), m, d, n, len(assets.get((m, d), ()))) for (m, d), n in
         counts.items()),
        key=lambda f: (-f.count, f.kind, f.monitor, f.detector)))
    return Findings(sum(f.count for f in items if f.kind == "drift"),
                    sum(f.count for f in items if f.kind == "quality"), items)


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True, slots=True)
class ScoreReference:
    """The reference's score distribution as bins: ``edges`` strictly increasing,
    ``levels[i]`` the share of reference windows with a score at most ``edges[i]``,
    ``names[i]`` the quantile(s) the edge comes from; ``p95`` the 95th percentile's index
    in ``edges`` (None without one); ``alert_rate`` the card's reference alert rate."""

    edges: tuple[float, ...]
    levels: tuple[float, ...]
    names: tuple[str, ...]
    p95: int | None
    alert_rate: float | None

    @classmethod
    def from_stats(cls, score: Stats, alert_rate: float | None = None
                   ) -> ScoreReference | None:
        """Bins from a card's ``reference.score``; None without usable quantiles.

        >>> from contract.card import Stats
        >>> s = Stats(mean=0.1, std=0.2, min=0.0, max=1.0,
        ...           quantiles={"p25": 0.0, "p50": 0.0, "p95": 0.5, "p99": 1.0})
        >>> r = ScoreReference.from_stats(s)
        >>> r.edges, r.levels, r.names, r.p95
        ((0.0, 0.5, 1.0), (0.5, 0.95, 1.0), ('p25-p50', 'p95', 'p99'), 1)
        """
        found = []
        for name, value in score.quantiles.items():
            if len(name) == 3 and name[0] == "p" and name[1:].isdigit() and \
                    math.isfinite(value):
                found.append((value, int(name[1:]) / 100, name))
        if not found:
            return None
        found.sort()
        edges: list[float] = []
        levels: list[float] = []
        names: list[list[str]] = []
        for value, level, name in found:
            # Past the reference's maximum nothing was seen: the edge holds everything.
            level = 1.0 if value >= score.max else level
            if edges and value == edges[-1]:
                levels[-1] = max(levels[-1], level)
                names[-1].append(name)
            else:
                edges.append(value)
                levels.append(max(level, levels[-1] if levels else 0.0))
                names.append([name])
        label = tuple(n[0] if len(n) == 1 else f"{n[0]}-{n[-1]}" for n in names)
        p95 = next((i for i, n in enumerate(names) if "p95" in n), None)
        return cls(tuple(edges), tuple(levels), label, p95, alert_rate)


@dataclass(frozen=True, slots=True)
class ScoreBin:
    """Scores in (``low``, ``high``] (None: unbounded) named ``label``: the share the
    reference expects, and how many windows of the period fell there."""

    label: str
    low: float | None
    high: float | None
    expected: float
    windows: int
    share: float | None


@dataclass(frozen=True, slots=True)
class ScoreShift:
    """The period's scores against the card's reference (see the module docstring).

    ``reading`` is None without a reference (``reason`` says why); ``above_p95`` is the
    share of windows above the reference's 95th percentile, ``above_p95_expected`` what
    the reference expects there; ``alert_rate`` has a Wilson interval over ``windows``;
    ``alert_rate_reading`` compares it with ``reference_alert_rate``.
    """

    windows: int
    reading: Reading | None
    reason: str
    psi: float | None
    direction: Literal["upwards", "downwards"] | None
    bins: tuple[ScoreBin, ...]
    above_p95: float | None
    above_p95_expected: float | None
    alert_rate: Figure
    reference_alert_rate: float | None
    alert_rate_reading: Literal["higher", "lower", "in_line"] | None


def _psi(observed: Sequence[float], expected: Sequence[float]) -> float:
    o = np.maximum(np.asarray(observed, dtype=float), PSI_FLOOR)
    e = np.maximum(np.asarray(expected, dtype=float), PSI_FLOOR)
    return float(np.sum((o - e) * np.log(o / e)))


def score_shift(counts: ScoreCounts | None, reference: ScoreReference | None, *,
                min_windows: int = MIN_WINDOWS) -> ScoreShift:
    """The shift of ``counts`` (read with ``reference.edges``) against ``reference``.

    >>> from contract.card import Stats
    >>> ref = ScoreReference.from_stats(Stats(mean=0.5, std=0.3, min=0.0, max=1.0,
    ...                                       quantiles={"p50": 0.5}), 0.5)
    >>> s = score_shift(ScoreCounts(200, 100, (100,)), ref)
    >>> s.reading, s.psi, s.alert_rate_reading
    ('stable', 0.0, 'in_line')
    """
    windows = 0 if counts is None else counts.windows
    alerts = 0 if counts is None else counts.alerts
    rate = proportion(alerts, windows, min_windows)
    ref_rate = None if reference is None else reference.alert_rate
    rate_reading: Literal["higher", "lower", "in_line"] | None = None
    if ref_rate is not None and rate.enough and rate.low is not None \
            and rate.high is not None:
        rate_reading = ("higher" if rate.low > ref_rate else "lower" if rate.high < ref_rate
                        else "in_line")

    def empty(reading: Reading | None, reason: str) -> ScoreShift:
        return ScoreShift(windows, reading, reason, None, None, (), None, None, rate,
                          ref_rate, rate_reading)

    if reference is None:
        return empty(None, "no model card with a score reference for this version")
    if counts is None:
        return empty(None, "the series store could not be read")
    if len(counts.at_most) != len(reference.edges):
        raise ValueError(f"{len(counts.at_most)} counts for {len(reference.edges)} edges")
    cumulative = (*counts.at_most, windows)
    levels = (*reference.levels, 1.0)
    bins = []
    for i, (n_at_most, level) in enumerate(zip(cumulative, levels, strict=True)):
        n = n_at_most - (cumulative[i - 1] if i else 0)
        expected = level - (levels[i - 1] if i else 0.0)
        low = reference.edges[i - 1] if i else None
        high = reference.edges[i] if i < len(reference.edges) else None
        label = (f"at most {reference.names[0]}" if i == 0
                 else f"above {reference.names[-1]}" if high is None
                 else f"{reference.names[i - 1]} to {reference.names[i]}")
        bins.append(ScoreBin(label, low, high, expected, n,
                             n / windows if windows else None))
    above = above_expected = None
    if reference.p95 is not None:
        above_expected = 1.0 - reference.levels[reference.p95]
        if windows:
            above = (windows - counts.at_most[reference.p95]) / windows
    if windows < min_windows:
        return ScoreShift(windows, "not_enough_data",
                          f"{windows} scored windows; at least {min_windows} are needed",
                          None, None, tuple(bins), above, above_expected, rate, ref_rate,
                          rate_reading)
    observed = [b.windows / windows for b in bins]
    shares = [b.expected for b in bins]
    psi = _psi(observed, shares)
    reading: Reading = ("stable" if psi < PSI_MODERATE else "moderate"
                        if psi <= PSI_SHIFTED else "shifted")
    index = np.arange(len(bins))
    mean_seen, mean_expected = float(index @ observed), float(index @ shares)
    direction: Literal["upwards", "downwards"] | None = (
        None if math.isclose(mean_seen, mean_expected, abs_tol=1e-12)
        else "upwards" if mean_seen > mean_expected else "downwards")
    return ScoreShift(windows, reading, "", psi, direction, tuple(bins), above,
                      above_expected, rate, ref_rate, rate_reading)


# --------------------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class AgentsReporting:
    """Agents with a health report in the period, and their windows: received and
    reported undeliverable (``completeness`` = received / both, None without any);
    ``incomplete``: the agents that lost windows."""

    reporting: int
    complete: int
    windows_received: int
    windows_undeliverable: int
    completeness: float | None
    incomplete: tuple[str, ...]


def agents(names: Iterable[str], delivery: Mapping[str, tuple[int, int]]
           ) -> AgentsReporting:
    """The agents ``names`` with their (received, undeliverable) windows.

    >>> a = agents(["gw-1", "gw-2"], {"gw-1": (99, 1), "gw-2": (100, 0)})
    >>> a.complete, a.completeness, a.incomplete
    (1, 0.995, ('gw-1',))
    """
    seen = sorted(set(names))
    received = lost = 0
    incomplete = []
    for name in seen:
        got, gone = delivery.get(name, (0, 0))
        received, lost = received + got, lost + gone
        if gone:
            incomplete.append(name)
    total = received + lost
    return AgentsReporting(len(seen), len(seen) - len(incomplete), received, lost,
                           received / total if total else None, tuple(incomplete))


@dataclass(frozen=True, slots=True)
class Latency:
    """Inference time from the agents' health reports: the median over ``agents`` of each
    agent's median, and the highest any of the ``reports`` gave (None: none said)."""

    reports: int
    agents: int
    median_ms: float | None
    max_ms: float | None


def latency(summaries: Iterable[HealthSummary]) -> Latency:
    """>>> from aggregator.series import HealthSummary
    >>> h = [HealthSummary("p", "l", a, "m", "1", 10, ms, top)
    ...      for a, ms, top in (("a", 0.5, 2.0), ("b", 1.0, 1.5), ("c", None, None))]
    >>> latency(h)
    Latency(reports=30, agents=2, median_ms=0.75, max_ms=2.0)
    """
    rows = list(summaries)
    medians = [h.inference_ms_median for h in rows if h.inference_ms_median is not None]
    tops = [h.inference_ms_max for h in rows if h.inference_ms_max is not None]
    return Latency(sum(h.reports for h in rows), len(medians),
                   float(np.median(medians)) if medians else None,
                   max(tops) if tops else None)


# --------------------------------------------------------------------------- together


@dataclass(frozen=True, slots=True)
class ModelOperations:
    """How one model version ran over [since, until) (see the module docstring)."""

    model_name: str
    model_version: str
    key: str  # "model@version", as figures.Group's
    series_available: bool
    agents: AgentsReporting
    latency: Latency
    scores: ScoreShift
    conditions: Findings
    events: Findings
    events_truncated: bool


@dataclass(frozen=True, slots=True)
class ConditionFact:
    """A condition (``db.AssetCondition``) as ``operations`` counts it."""

    model_name: str
    model_version: str
    monitor: str
    detector: str
    asset: str


@dataclass(frozen=True, slots=True)
class EventFact:
    """A drift or data-quality event (``series.DriftPoint``) as ``operations`` counts it."""

    model_name: str
    model_version: str
    monitor: str
    detector: str
    asset: str | None


def operations(
    models: Iterable[tuple[str, str]],
    *,
    summaries: Sequence[HealthSummary] | None,
    delivery: Mapping[str, tuple[int, int]],
    conditions: Sequence[ConditionFact],
    events: Sequence[EventFact] | None,
    events_truncated: bool,
    scores: Mapping[tuple[str, str], ScoreCounts],
    references: Mapping[tuple[str, str], ScoreReference],
    min_windows: int = MIN_WINDOWS,
) -> tuple[ModelOperations, ...]:
    """Every model version in ``models`` or the facts, by key; ``summaries`` and
    ``events`` None: the series store could not be read."""
    found = set(models)
    found |= {(h.model, h.model_version) for h in summaries or ()}
    found |= {(c.model_name, c.model_version) for c in conditions}
    found |= {(e.model_name, e.model_version) for e in events or ()}
    out = []
    for name, version in sorted(found, key=lambda m: f"{m[0]}@{m[1]}"):
        mine = [h for h in summaries or () if (h.model, h.model_version) == (name, version)]
        reference = references.get((name, version))
        counts = scores.get((name, version))
        if counts is None and summaries is not None and reference is not None:
            counts = ScoreCounts(0, 0, (0,) * len(reference.edges))
        out.append(ModelOperations(
            model_name=name, model_version=version, key=f"{name}@{version}",
            series_available=summaries is not None and events is not None,
            agents=agents((h.agent for h in mine), delivery),
            latency=latency(mine),
            scores=score_shift(counts, reference, min_windows=min_windows),
            conditions=tally((c.monitor, c.detector, c.asset) for c in conditions
                             if (c.model_name, c.model_version) == (name, version)),
            events=tally((e.monitor, e.detector, e.asset) for e in events or ()
                         if (e.model_name, e.model_version) == (name, version)),
            events_truncated=events_truncated))
    return tuple(out)


# --------------------------------------------------------------------------- reading


@functools.lru_cache(maxsize=64)
def _load_card(path: Path, _mtime_ns: int) -> ModelCard | None:
    try:
        return ModelCard.load(path.parent)
    except ContractError as exc:
        logger.warning("model operations: skipping %s: %s", path, exc)
        return None


def find_card(models_dir: Path, name: str, version: str) -> ModelCard | None:
    """The card of ``name`` ``version`` among ``models_dir``'s subdirectories, or None."""
    try:
        paths = sorted(models_dir.glob(f"*/{CARD_FILE}"))
    except OSError as exc:
        logger.warning("model operations: cannot read %s: %s", models_dir, exc)
        return None
    for path in paths:
        try:
            card = _load_card(path, path.stat().st_mtime_ns)
        except OSError:
            continue
        if card is not None and (card.name, card.version) == (name, version):
            return card
    return None


def delivered(session: Session, since: datetime, until: datetime,
              agent: str | None = None) -> dict[str, tuple[int, int]]:
    """Windows (received, reported undeliverable) per agent in the delivery hours that
    overlap [since, until) (of ``agent`` only, if given)."""
    where = [DeliveryHour.hour > since - _HOUR, DeliveryHour.hour < until]
    if agent is not None:
        where.append(DeliveryHour.agent_id == agent)
    rows = session.execute(
        select(DeliveryHour.agent_id, func.sum(DeliveryHour.windows_received),
               func.sum(DeliveryHour.windows_undeliverable))
        .where(*where).group_by(DeliveryHour.agent_id))
    return {a: (int(got or 0), int(gone or 0)) for a, got, gone in rows}


def _conditions(session: Session, since: datetime, until: datetime) -> list[ConditionFact]:
    query = select(AssetCondition).where(
        AssetCondition.since < until,
        or_(AssetCondition.ended_at.is_(None), AssetCondition.ended_at >= since),
    ).order_by(AssetCondition.id)
    return [ConditionFact(c.model_name, c.model_version, c.monitor, c.detector, c.asset)
            for c in session.scalars(query)]


def _events(series: SeriesStore, since: datetime, until: datetime
            ) -> tuple[list[EventFact], bool]:
    out: list[EventFact] = []
    while len(out) < MAX_EVENTS:
        page = series.drift_events(since=since, until=until, limit=EVENT_PAGE,
                                   offset=len(out))
        out += [EventFact(p.model, p.model_version, p.monitor, p.detector, p.asset)
                for p in page]
        if len(page) < EVENT_PAGE:
            return out, False
    more = series.drift_events(since=since, until=until, limit=1, offset=len(out))
    return out, bool(more)


def load_operations(session: Session, series: SeriesStore | None, settings: Settings,
                    models: Iterable[tuple[str, str]], *, since: datetime,
                    until: datetime) -> tuple[ModelOperations, ...]:
    """How every model version (those in ``models`` and those the stores name) ran over
    [since, until), read now. Cards come from ``settings.models_dir``."""
    start, end = clamp_time(since), clamp_time(until)
    conditions = _conditions(session, since, until)
    delivery = delivered(session, since, until)
    summaries: list[HealthSummary] | None = None
    events: list[EventFact] | None = None
    truncated = False
    found = set(models) | {(c.model_name, c.model_version) for c in conditions}
    if series is not None:
        try:
            summaries = series.health_summary(start, end)
            events, truncated = _events(series, start, end)
        except SeriesUnavailableError as exc:
            logger.warning("model operations without the series store: %s", exc)
            summaries = events = None
    if summaries is not None and events is not None:
        found |= {(h.model, h.model_version) for h in summaries}
        found |= {(e.model_name, e.model_version) for e in events}
    references: dict[tuple[str, str], ScoreReference] = {}
    if settings.models_dir is not None:
        for name, version in found:
            card = find_card(settings.models_dir, name, version)
            if card is None or card.reference.score is None:
                continue  # no card, or a card without a score reference: nothing to compare
            monitoring = card.reference.monitoring
            reference = ScoreReference.from_stats(
                card.reference.score, None if monitoring is None else monitoring.alert_rate)
            if reference is not None:
                references[(name, version)] = reference
    scores: dict[tuple[str, str], ScoreCounts] = {}
    if series is not None and summaries is not None:
        try:
            for (name, version), reference in references.items():
                scores[(name, version)] = series.score_counts(name, version, start, end,
                                                              reference.edges)
        except SeriesUnavailableError as exc:
            logger.warning("model operations without score counts: %s", exc)
            summaries = events = None
            scores = {}
    return operations(found, summaries=summaries, delivery=delivery, conditions=conditions,
                      events=events, events_truncated=truncated, scores=scores,
                      references=references)
