"""Maintenance tickets: k of an asset's last n windows over the model's threshold.

Windows are fed per (site, asset) in ``window_end`` order; asset names are only unique
within a site, so the same name at two sites has two windows and two tickets. One
escalation per (site, asset) and batch, carrying the last trigger's evidence.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from sqlalchemy.orm import Session

from aggregator import tickets
from aggregator.reactions import Batch
from aggregator.reactions.state import locked_state
from aggregator.rules import MaintenanceRule, ScoredWindow
from aggregator.series import PredictionPoint
from aggregator.settings import Settings

__all__ = ["MaintenanceReaction"]


class MaintenanceReaction:
    """Feeds every prediction to the k-of-n rule and opens or escalates tickets."""

    name = "maintenance"

    def __init__(self, settings: Settings) -> None:
        self.k = settings.rule_k
        self.n = settings.rule_n
        self.cooldown = timedelta(seconds=settings.rule_cooldown_s)

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
            if trigger is not None:
                point, threshold, windows = trigger
                tickets.open_or_escalate(
                    session, tickets.Subject.of(point, threshold), "maintenance",
                    {"k": rule.k, "n": rule.n, "scores": [w.to_json() for w in windows]},
                    now=batch.now, cooldown=self.cooldown,
                )
