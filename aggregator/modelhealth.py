"""Model health from the aggregator's stores: the facts ``figures.compute`` needs, read from
SQL and the series store, and the figures themselves.

``model_health`` is THE computation: ``GET /health/models`` returns its figures as JSON,
``GET /reports/model-health`` and ``linewatch report`` word the same figures
(``aggregator.report``). Nothing else calls ``figures.compute`` on stored data.

What is read, for the period [since, until)
-------------------------------------------
- **tickets**: maintenance and retraining tickets open at some point of the period
  (opened before ``until``, not resolved before ``since``), each with its failure time
  (``TicketFact.from_ticket(t, failed_at=t.failed_at)``); the first alert comes from its
  evidence. A ticket counts as it stands now: a reopened one is open again;
- **missed failures**: failures reported without a ticket (``db.ReportedFailure``) that
  happened in the period, with the model version they were attributed to (if any);
- **assets**: from the **series store**, the distinct assets each (site, line, model
  version) scored in the period (window ends, plant time): what the model actually
  watched, also the machines that never raised a ticket. If the series store cannot be
  reached the figures are computed without them (no false alarms per machine per month)
  and a warning is logged;
- **drift conditions**: ``db.AssetCondition`` rows overlapping the period, except sensor
  faults (the detectors in ``rules.SENSOR_DETECTORS``: a lying sensor is the sensor's
  fault, it gets a sensor ticket, not the model's inputs moving);
- **target F1**: when the period is about one model version and ``Settings.models_dir``
  holds its card, the card's test F1 (the first of ``CARD_F1_METRICS`` it has: tickets
  judge whole machines, so the per-machine figure comes before the per-window one);
  otherwise ``Settings.target_f1`` (``LINEWATCH_TARGET_F1``);
- ``Settings.visit_cost`` and ``currency`` price the technician visits;
- **gateway estimates**: each agent's newest label-free estimate of the period from the
  series store, combined per group, with the windows judged against the failures reported
  (``gateway_estimates``, ``aggregator.estimates``).

A period is ``period_ending(until, length)``: ``length`` (``parse_period("30d")``) up to
``until`` (default: now).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from aggregator import estimates
from aggregator.db import AssetCondition, ReportedFailure, Ticket
from aggregator.errors import SeriesUnavailableError
from aggregator.figures import (
    AssetCount,
    DriftCondition,
    GatewayEstimate,
    Group,
    HealthFigures,
    MissedFailure,
    TicketFact,
    compute,
)
from aggregator.operations import load_operations
from aggregator.outcomes import REAL_FAULT
from aggregator.rules import SENSOR_DETECTORS
from aggregator.series import HealthPoint, PredictionPoint, SeriesStore, clamp_time
from aggregator.settings import Settings
from contract.card import CARD_FILE, ModelCard
from contract.errors import ContractError

__all__ = [
    "CARD_F1_METRICS",
    "DEFAULT_PERIOD",
    "PERIOD_PATTERN",
    "Facts",
    "Target",
    "card_f1",
    "find_card",
    "gateway_estimates",
    "load_facts",
    "model_health",
    "parse_period",
    "period_ending",
    "target_f1",
]

logger = logging.getLogger(__name__)

DEFAULT_PERIOD = "30d"
# Hours, days or weeks, at most 9999 days' worth (27 years): bounded so that a period
# always starts inside the range Python dates, and every store, can hold.
PERIOD_PATTERN = r"^(?:[1-9][0-9]{0,4}h|[1-9][0-9]{0,3}d|[1-9][0-9]{0,2}w)$"
_PERIOD = re.compile(PERIOD_PATTERN)
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
# A model card's test F1, most telling first for tickets, which judge whole machines.
CARD_F1_METRICS = ("test_f1", "test_last_window_f1", "test_window_f1")
# Alerting windows the per-window check of the estimates reads at most, per period and
# per failure: a bound on one request's work, logged when reached.
WINDOW_READ_LIMIT = 50_000


def parse_period(text: str) -> timedelta:
    """A period's length from its text: a number and ``h`` (hours), ``d`` (days) or ``w``
    (weeks).

    >>> parse_period("30d"), parse_period("12w").days, parse_period("36h").total_seconds()
    (datetime.timedelta(days=30), 84, 129600.0)
    >>> parse_period("30")
    Traceback (most recent call last):
    ...
    ValueError: period '30': a whole number and h, d or w, e.g. 30d (hours at most 99999, ...
    """
    if not _PERIOD.match(text):
        raise ValueError(f"period {text!r}: a whole number and h, d or w, e.g. 30d (hours "
                         "at most 99999, days 9999, weeks 999)")
    return int(text[:-1]) * _UNITS[text[-1]]


def period_ending(until: datetime | None, length: timedelta) -> tuple[datetime, datetime]:
    """(since, until) of a period of ``length`` ending at ``until`` (None: now)."""
    end = datetime.now(UTC) if until is None else until
    if end.tzinfo is None:
        raise ValueError("until must be timezone-aware")
    return end - length, end


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``figures.compute`` is given for a period (see the module docstring)."""

    tickets: tuple[TicketFact, ...]
    missed: tuple[MissedFailure, ...]
    assets: tuple[AssetCount, ...]
    conditions: tuple[DriftCondition, ...]
    estimates: tuple[GatewayEstimate, ...]

    @property
    def model_versions(self) -> set[tuple[str, str]]:
        """Every (model, version) the facts name."""
        found = {(t.model_name, t.model_version) for t in self.tickets}
        found |= {(c.model_name, c.model_version) for c in self.conditions}
        found |= {(a.model_name, a.model_version) for a in self.assets
                  if a.model_name is not None and a.model_version is not None}
        found |= {(m.model_name, m.model_version) for m in self.missed
                  if m.model_name is not None and m.model_version is not None}
        return found


def _tickets(session: Session, since: datetime, until: datetime) -> tuple[TicketFact, ...]:
    query = select(Ticket).where(
        Ticket.kind.in_(("maintenance", "retraining")), Ticket.opened_at < until,
        or_(Ticket.resolved_at.is_(None), Ticket.resolved_at >= since),
    ).order_by(Ticket.id)
    return tuple(TicketFact.from_ticket(t, failed_at=t.failed_at)
                 for t in session.scalars(query))


def _missed(session: Session, since: datetime, until: datetime
            ) -> tuple[MissedFailure, ...]:
    query = select(ReportedFailure).where(
        ReportedFailure.at >= since, ReportedFailure.at < until,
    ).order_by(ReportedFailure.at, ReportedFailure.id)
    return tuple(MissedFailure(asset=f.asset, site=f.site, line=f.line, at=f.at,
                               model_name=f.model_name, model_version=f.model_version,
                               note=f.note or "")
                 for f in session.scalars(query))


def _conditions(session: Session, since: datetime, until: datetime
                ) -> tuple[DriftCondition, ...]:
    query = select(AssetCondition).where(
        AssetCondition.detector.not_in(SENSOR_DETECTORS), AssetCondition.since < until,
        or_(AssetCondition.ended_at.is_(None), AssetCondition.ended_at >= since),
    ).order_by(AssetCondition.id)
    return tuple(DriftCondition(asset=c.asset, site=c.site, line=c.line,
                                model_name=c.model_name, model_version=c.model_version,
                                since=c.since, ended_at=c.ended_at, monitor=c.monitor)
                 for c in session.scalars(query))


def _assets(series: SeriesStore | None, since: datetime, until: datetime
            ) -> tuple[AssetCount, ...]:
    if series is None:
        return ()
    try:
        seen = series.asset_counts(clamp_time(since), clamp_time(until))
    except SeriesUnavailableError as exc:
        logger.warning("model health without asset counts (no false alarms per machine "
                       "per month): %s", exc)
        return ()
    return tuple(AssetCount(s.assets, site=s.site, line=s.line, model_name=s.model,
                            model_version=s.model_version) for s in seen)


def gateway_estimates(session: Session, series: SeriesStore | None, since: datetime,
                      until: datetime) -> tuple[GatewayEstimate, ...]:
    """The agents' label-free precision / recall / F1 estimates, at most one per group
    (all, model version, site, line), which ``figures.compute`` checks against the realised
    figures and the report shows next to them ("The gateways' own estimate").

    Each agent's newest estimate of the period is taken (one per agent, model and version)
    and combined per group (``aggregator.estimates.combine``), with the windows judged
    against reported failures (``aggregator.estimates.tally``). Without a series store, or
    when it cannot be reached, there are none (logged).
    """
    if series is None:
        return ()
    try:
        reports = series.estimates(clamp_time(since), clamp_time(until))
        tallies = _window_truth(session, series, reports, since, until)
    except SeriesUnavailableError as exc:
        logger.warning("model health without the gateways' estimates: %s", exc)
        return ()
    by_group: dict[Group, list[HealthPoint]] = defaultdict(list)
    for r in reports:
        for group in estimates.groups_of(r.site, r.line, r.model, r.model_version):
            by_group[group].append(r)
    found = (estimates.combine(g, rs, tallies.get(g)) for g, rs in by_group.items())
    return tuple(sorted((e for e in found if e is not None), key=lambda e: e.group.key))


def _window_truth(session: Session, series: SeriesStore, reports: list[HealthPoint],
                  since: datetime, until: datetime) -> dict[Group, estimates.WindowTally]:
    horizons = {(r.agent, r.model, r.model_version): r.estimate.horizon_s for r in reports
                if r.estimate is not None and r.estimate.horizon_s is not None}
    if not horizons:
        return {}
    longest = timedelta(seconds=max(horizons.values()))
    # A failure up to a horizon after the period still makes a window of the period right.
    later = until + longest
    failures = [estimates.Failure(t.site, t.asset, t.failed_at) for t in session.scalars(
        select(Ticket).where(Ticket.kind == "maintenance", Ticket.outcome.in_(REAL_FAULT),
                             Ticket.failed_at >= since, Ticket.failed_at < later))]
    failures += [estimates.Failure(t.site, t.asset, None) for t in session.scalars(
        select(Ticket).where(Ticket.kind == "maintenance", Ticket.outcome.in_(REAL_FAULT),
                             Ticket.failed_at.is_(None), Ticket.resolved_at >= since,
                             Ticket.resolved_at < until))]
    failures += [estimates.Failure(f.site, f.asset, f.at) for f in session.scalars(
        select(ReportedFailure).where(ReportedFailure.at >= since,
                                      ReportedFailure.at < later))]
    before: list[PredictionPoint] = []
    for f in failures:
        if f.at is not None and f.at < until:
            before += series.scores(f.asset, site=f.site, since=clamp_time(f.at - longest),
                                    until=clamp_time(f.at), limit=WINDOW_READ_LIMIT)
    alerts = series.alerts(clamp_time(since), clamp_time(until), limit=WINDOW_READ_LIMIT)
    if len(alerts) == WINDOW_READ_LIMIT:
        logger.warning("model health: the window check reads only the first %d alerting "
                       "windows of the period", WINDOW_READ_LIMIT)
    return estimates.tally(alerts, before, failures, horizons, until=until)


def load_facts(session: Session, series: SeriesStore | None, since: datetime,
               until: datetime) -> Facts:
    """Every fact model health needs for [since, until), read now (no asset counts without
    a series store)."""
    return Facts(
        tickets=_tickets(session, since, until),
        missed=_missed(session, since, until),
        assets=_assets(series, since, until),
        conditions=_conditions(session, since, until),
        estimates=gateway_estimates(session, series, since, until),
    )


@dataclass(frozen=True, slots=True)
class Target:
    """The F1 the model is judged against, and where it comes from, in words."""

    f1: float
    source: str


@functools.lru_cache(maxsize=64)
def _card(path: Path, _mtime_ns: int) -> ModelCard | None:
    try:
        return ModelCard.load(path.parent)
    except ContractError as exc:
        logger.warning("model health: skipping %s: %s", path, exc)
        return None


def find_card(models_dir: Path, name: str, version: str) -> ModelCard | None:
    """The card of ``name`` ``version`` among ``models_dir``'s subdirectories
    (``card.json``), or None."""
    try:
        paths = sorted(models_dir.glob(f"*/{CARD_FILE}"))
    except OSError as exc:
        logger.warning("model health: cannot read %s: %s", models_dir, exc)
        return None
    for path in paths:
        try:
            card = _card(path, path.stat().st_mtime_ns)
        except OSError:
            continue
        if card is not None and (card.name, card.version) == (name, version):
            return card
    return None


def card_f1(models_dir: Path, name: str, version: str) -> Target | None:
    """The test F1 in the card of ``name`` ``version`` under ``models_dir`` (its
    subdirectories' ``card.json``), or None without such a card or metric."""
    card = find_card(models_dir, name, version)
    if card is None:
        return None
    for metric in CARD_F1_METRICS:
        found = card.metrics.get(metric)
        if found is not None and 0 < found.value <= 1:
            return Target(found.value, f"the model card's test F1, {metric}")
    return None


def target_f1(settings: Settings, models: Iterable[tuple[str, str]]) -> Target:
    """The card's test F1 of the one model version ``models`` names, if
    ``settings.models_dir`` has it; else ``settings.target_f1``."""
    versions = sorted(set(models))
    configured = "the configured target, LINEWATCH_TARGET_F1"
    if len(versions) > 1:
        return Target(settings.target_f1,
                      f"{configured}: the period has {len(versions)} model versions")
    if len(versions) == 1 and settings.models_dir is not None:
        found = card_f1(settings.models_dir, *versions[0])
        if found is not None:
            return found
    return Target(settings.target_f1, configured)


def model_health(session: Session, series: SeriesStore | None, settings: Settings, *,
                 since: datetime, until: datetime) -> HealthFigures:
    """Model health over [since, until) from what the stores hold now; ``series`` None:
    without asset counts."""
    facts = load_facts(session, series, since, until)
    target = target_f1(settings, facts.model_versions)
    figures = compute(
        facts.tickets, facts.missed, since=since, until=until, target_f1=target.f1,
        target_source=target.source, assets=facts.assets, conditions=facts.conditions,
        estimates=facts.estimates, visit_cost=settings.visit_cost, currency=settings.currency)
    return replace(figures, operations=load_operations(
        session, series, settings, facts.model_versions, since=since, until=until))
