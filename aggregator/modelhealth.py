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
- **gateway estimates**: none yet (``gateway_estimates``, the hook for the agents'
  label-free estimates once the wire carries them).

A period is ``period_ending(until, length)``: ``length`` (``parse_period("30d")``) up to
``until`` (default: now).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from aggregator.db import AssetCondition, ReportedFailure, Ticket
from aggregator.errors import SeriesUnavailableError
from aggregator.figures import (
    AssetCount,
    DriftCondition,
    GatewayEstimate,
    HealthFigures,
    MissedFailure,
    TicketFact,
    compute,
)
from aggregator.operations import load_operations
from aggregator.rules import SENSOR_DETECTORS
from aggregator.series import SeriesStore, clamp_time
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
    """The agents' label-free precision / recall / F1 estimates for the period, at most one
    per group (``figures.Group``), which ``figures.compute`` checks against the realised
    figures and the report shows next to them ("The gateways' own estimate").

    None yet: this is the hook. Once the wire contract carries ``Health.estimate`` (an
    ``Estimate`` over the agent's last ``windows`` scored windows, with ``precision``,
    ``recall`` and ``f1`` as value/low/high intervals, absent when undefined or
    uncalibrated), the series store must keep it with each health report (``HealthPoint``
    and both backends, in the contract test); then read here each agent's newest
    estimate in [since, until), map the agent to its site, line and model version
    (``HealthPoint`` has them), and combine the estimates of each group (all, model
    version, site, line) weighted by ``windows`` into one ``GatewayEstimate`` (``at``: the
    newest, ``windows``: the sum). Mind that the agents estimate per scored window while
    tickets judge whole machines: say so where the two are compared.
    """
    return ()


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


def card_f1(models_dir: Path, name: str, version: str) -> Target | None:
    """The test F1 in the card of ``name`` ``version`` under ``models_dir`` (its
    subdirectories' ``card.json``), or None without such a card or metric."""
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
        if card is None or (card.name, card.version) != (name, version):
            continue
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
