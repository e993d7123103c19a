"""Triage: every drift or data-quality condition, and every alert, ends up as the ticket
that says what a person should do.

Per asset whose conditions changed in the batch (``rules.triage`` decides):

- **sensor**: a few channels misbehave while the others agree: check the sensor. A
  maintenance ticket the fault caused (its alerts began after the fault did) becomes this
  sensor ticket: a sensor fault must not send a technician to the machine.
- **inspect**: the asset behaves unlike anything the model was trained on; a person should
  look at it, the model cannot judge it. Its maintenance ticket, if the alerts began after
  the asset left the envelope, becomes this inspect ticket.
- when so many of a site's assets are foreign at once that it is the model, not the
  assets (``triage_fleet_share``): no inspect ticket per asset; the retraining reaction
  opens one ticket for the model, and open inspect and maintenance tickets of those assets
  are closed as superseded, pointing there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator import conditions, tickets
from aggregator.db import AssetCondition, RuleState, Ticket
from aggregator.reactions import Batch
from aggregator.rules import SENSOR_DETECTORS, ConditionLike, Verdict, triage
from aggregator.settings import Settings
from contract.wire import DriftEvent

__all__ = ["TriageReaction", "condition_json", "fleet_wide", "first_alert"]

logger = logging.getLogger(__name__)


def condition_json(row: AssetCondition) -> dict[str, Any]:
    """One condition as ticket evidence."""
    return {
        "monitor": row.monitor, "detector": row.detector, "signal": row.signal,
        "channels": row.channels, "agent": row.agent, "since": row.since.isoformat(),
        "detected_at": row.detected_at.isoformat(), "reference": row.reference,
        "current": row.current, "statistic": row.statistic, "threshold": row.threshold,
        "detail": row.detail,
    }


def first_alert(ticket: Ticket) -> datetime | None:
    """When the alerts behind a maintenance ticket began (plant time)."""
    ends = [datetime.fromisoformat(s["window_end"])
            for s in ticket.evidence.get("scores", []) if s.get("alert")]
    return min(ends, default=None)


def fleet_wide(session: Session, site: str, model: str, version: str,
               settings: Settings) -> dict[str, list[ConditionLike]] | None:
    """The site's foreign assets when they are too many to be the assets' fault."""
    foreign = conditions.foreign_assets(session, site, model, version,
                                        settings.triage_sensor_channels)
    if len(foreign) < settings.retraining_min_assets:
        return None
    known = session.scalar(select(func.count()).select_from(RuleState).where(
        RuleState.site == site, RuleState.rule == "maintenance")) or 0
    share = len(foreign) / max(known, len(foreign))
    return foreign if share >= settings.triage_fleet_share else None


class TriageReaction:
    """Opens sensor and inspect tickets, and reclassifies maintenance tickets they explain."""

    name = "triage"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cooldown = timedelta(seconds=settings.rule_cooldown_s)

    def react(self, session: Session, batch: Batch) -> None:
        touched: dict[tuple[str, str], tuple[str, str, float]] = {}
        for item in batch.data:
            if not item.drift:  # most messages carry predictions only
                continue
            events = [e for e in item.envelope.items if isinstance(e, DriftEvent)]
            if not events:
                continue
            env = item.envelope
            for site, asset in conditions.apply(session, item.parts, env, events):
                if asset != conditions.FLEET:
                    touched[site, asset] = (env.model.name, env.model.version,
                                            env.model.threshold)
        for site in sorted({site for site, _ in touched}):
            assets = sorted(a for s, a in touched if s == site)
            active = conditions.active(session, site, assets)
            fleets: dict[tuple[str, str], dict[str, list[ConditionLike]] | None] = {}
            for asset in assets:
                model, version, threshold = touched[site, asset]
                if (model, version) not in fleets:
                    fleets[model, version] = fleet_wide(session, site, model, version,
                                                        self.settings)
                self._asset(session, site, asset, active.get(asset, []), model, version,
                            threshold, fleets[model, version], batch.now)
            for fleet in fleets.values():
                if fleet is not None:
                    _supersede(session, site, fleet, batch.now)

    def _asset(self, session: Session, site: str, asset: str, rows: list[AssetCondition],
               model: str, version: str, threshold: float,
               fleet: dict[str, list[ConditionLike]] | None, now: datetime) -> None:
        verdict = triage(rows, self.settings.triage_sensor_channels)
        if verdict.kind is None:
            return
        relevant = [r for r in rows if set(r.channels) & set(verdict.channels)]
        subject = tickets.Subject(asset=asset, site=site, line=relevant[0].line,
                                  agent=relevant[0].agent, model_name=model,
                                  model_version=version, threshold=threshold)
        evidence = _evidence(verdict, relevant)
        # Event time: the detection (plant time) of the newest condition behind the verdict.
        at = max(r.detected_at for r in relevant)
        if verdict.kind == "sensor":
            self._ticket(session, subject, "sensor", evidence, verdict, now, at)
        elif fleet is None:
            self._ticket(session, subject, "inspect", evidence, verdict, now, at)

    def _ticket(self, session: Session, subject: tickets.Subject, kind: tickets.Kind,
                evidence: dict[str, Any], verdict: Verdict, now: datetime,
                at: datetime) -> None:
        if kind == "inspect":
            sensor = tickets.open_ticket(session, subject.site, subject.asset, "sensor")
            if sensor is not None and not _sensor_fault(sensor):
                # It looked like one channel drifting; now many have: the machine moved.
                tickets.reclassify(session, sensor, "inspect", evidence,
                                   f"more channels left the training range "
                                   f"({', '.join(verdict.channels)}): not a sensor fault",
                                   now=now)
                return
        maintenance = tickets.open_ticket(session, subject.site, subject.asset, "maintenance")
        began = None if maintenance is None else first_alert(maintenance)
        if maintenance is not None and began is not None and verdict.since is not None \
                and began >= verdict.since:
            what = "a sensor fault" if kind == "sensor" else "inputs the model was not trained on"
            tickets.reclassify(
                session, maintenance, kind, evidence,
                f"the alerts began {began.isoformat()}, after {what} "
                f"({', '.join(verdict.channels)}) began {verdict.since.isoformat()}", now=now)
            return
        tickets.open_or_escalate(session, subject, kind, evidence, now=now, at=at,
                                 cooldown=self.cooldown)


def _sensor_fault(ticket: Ticket) -> bool:
    """Whether a sensor ticket rests on what only a sensor does (not just a range)."""
    return any(c.get("detector") in SENSOR_DETECTORS
               for c in ticket.evidence.get("conditions", []))


def _evidence(verdict: Verdict, rows: Iterable[AssetCondition]) -> dict[str, Any]:
    if verdict.kind == "sensor":
        action = (f"check the sensor{'s' if len(verdict.channels) > 1 else ''} "
                  f"{', '.join(verdict.channels)}: the other channels agree the machine is as "
                  "usual; the model's risk for this asset is not trusted meanwhile")
    else:
        action = ("look at this machine: its inputs are outside anything the model was "
                  "trained on, so the model cannot judge it (a low risk score means nothing)")
    return {
        "verdict": verdict.kind, "action": action, "channels": list(verdict.channels),
        "since": None if verdict.since is None else verdict.since.isoformat(),
        "conditions": [condition_json(r) for r in rows][:50],
    }


def _supersede(session: Session, site: str, fleet: dict[str, list[ConditionLike]],
               now: datetime) -> None:
    """Close the open inspect tickets of a fleet-wide shift's assets, the sensor tickets
    that only a range suggested, and the maintenance tickets whose alerts began after the
    asset left the envelope."""
    query = select(Ticket).where(
        Ticket.site == site, Ticket.kind.in_(("inspect", "maintenance", "sensor")),
        Ticket.status != "resolved", Ticket.asset.in_(sorted(fleet)))
    for ticket in session.scalars(query.with_for_update()).all():
        since = min(r.since for r in fleet[ticket.asset])
        if ticket.kind == "sensor" and _sensor_fault(ticket):
            continue  # a real sensor fault stays a job for the technician
        if ticket.kind == "maintenance":
            began = first_alert(ticket)
            if began is None or began < since:
                continue  # alerts from before the asset left the envelope still stand
        tickets.supersede(session, ticket, "most of the site's assets left the model's "
                          "training envelope together: the model, not this asset, needs "
                          "attention (see the retraining ticket)", now=now)
