"""Maintenance tickets: k of an asset's last n windows over the model's threshold.

Windows are fed per (site, asset) in ``window_end`` order; asset names are only unique
within a site, so the same name at two sites has two windows and two tickets. One
escalation per (site, asset) and batch, carrying the last trigger's evidence.

A trigger is trusted only while the asset's inputs are what the model was trained on:
while a sensor fault or an excursion out of the training envelope is active on the asset
(and began before the trigger), the risk is not trusted and opens no maintenance ticket;
it is added to the asset's sensor or inspect ticket as evidence instead.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from aggregator import conditions, tickets
from aggregator.reactions import Batch
from aggregator.reactions.state import locked_state
from aggregator.rules import MaintenanceRule, ScoredWindow, triage
from aggregator.series import PredictionPoint
from aggregator.settings import Settings

__all__ = ["MaintenanceReaction"]

logger = logging.getLogger(__name__)


class MaintenanceReaction:
    """Feeds every prediction to the k-of-n rule and opens or escalates tickets."""

    name = "maintenance"

    def __init__(self, settings: Settings) -> None:
        self.k = settings.rule_k
        self.n = settings.rule_n
        self.cooldown = timedelta(seconds=settings.rule_cooldown_s)
        self.sensor_channels = settings.triage_sensor_channels

    def react(self, session: Session, batch: Batch) -> None:
        rule = MaintenanceRule(self.k, self.n)
        by_key: dict[tuple[str, str], list[tuple[PredictionPoint, float]]] = defaultdict(list)
        for item in batch.data:
            for point in item.points:
                by_key[point.site, point.asset].append((point, item.envelope.model.threshold))
        for key in sorted(by_key):  # a fixed order: replicas lock rows alike, no deadlock
            site, asset = key
            state = locked_state(session, rule.name, site, asset, batch.now)
            rule.restore(key, (ScoredWindow.from_json(w) for w in state.windows))
            trigger: tuple[PredictionPoint, float, list[ScoredWindow]] | None = None
            for point, threshold in sorted(by_key[key], key=lambda pt: pt[0].window_end):
                if rule.update(key, ScoredWindow(point.window_end, point.score, point.alert)):
                    trigger = (point, threshold, rule.windows(key))
            state.windows = [w.to_json() for w in rule.windows(key)]
            state.updated_at = batch.now
            if trigger is None:
                continue
            point, threshold, windows = trigger
            evidence = {"k": rule.k, "n": rule.n, "scores": [w.to_json() for w in windows]}
            if self._untrusted(session, site, asset, point, evidence, batch):
                continue
            tickets.open_or_escalate(
                session, tickets.Subject.of(point, threshold), "maintenance", evidence,
                now=batch.now, cooldown=self.cooldown,
            )

    def _untrusted(self, session: Session, site: str, asset: str, point: PredictionPoint,
                   evidence: dict[str, Any], batch: Batch) -> bool:
        active = conditions.active(session, site, [asset]).get(asset, [])
        verdict = triage(active, self.sensor_channels)
        if verdict.kind is None or verdict.since is None or verdict.since > point.window_end:
            return False
        kind: tickets.Kind = "sensor" if verdict.kind == "sensor" else "inspect"
        ticket = tickets.open_ticket(session, site, asset, kind)
        if ticket is not None:
            ticket.evidence = {**ticket.evidence, "untrusted_risk": evidence}
            ticket.updated_at = batch.now
        logger.info("%s/%s: risk over the threshold in %s of %s windows, not trusted: %s "
                    "since %s (%s)", site, asset, sum(s["alert"] for s in evidence["scores"]),
                    len(evidence["scores"]), verdict.kind, verdict.since.isoformat(),
                    ", ".join(verdict.channels))
        return True
