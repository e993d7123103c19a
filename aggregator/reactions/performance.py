"""Retraining tickets from performance: the model's F1, estimated by the gateways or
realised from outcomes, stays below what its card says it does.

- **Estimated** (``EstimateReaction``, on health reports): an agent's label-free F1 (per
  scored window, ``agent.estimate``) whose whole 95 % interval lies below the card's
  per-window test F1 (``WINDOW_F1_METRICS``) in ``retraining_estimate_reports``
  consecutive reports. One report below could be a bad hour; several in a row, each
  confidently below, is the model no longer doing on this line what it did in testing.
  Reports without an F1 (no alerts, uncalibrated) neither count nor break the run.
- **Realised** (``check_realised``, after an outcome or a failure report): model health of
  the model version over the last ``retraining_f1_period`` whose F1, with enough outcomes,
  has its whole 95 % interval below the target (``modelhealth.target_f1``): the verdict's
  "retrain" for F1, the same computation the API and the report show.

Both open, or add their evidence to, THE retraining ticket of the model version and site
(``retraining.scope_key``) that drift tickets use too: one ticket says everything known
about that model version there. Its evidence names the figure, the target and where the
target comes from, and after the ticket is resolved the cooldown applies.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from aggregator import modelhealth, tickets
from aggregator.db import RuleState
from aggregator.figures import Group
from aggregator.reactions import Batch
from aggregator.reactions.retraining import scope_key
from aggregator.series import SeriesStore
from aggregator.settings import Settings
from contract.wire import Health

__all__ = ["RULE", "WINDOW_F1_METRICS", "EstimateReaction", "check_realised", "window_f1"]

logger = logging.getLogger(__name__)

RULE = "estimate_f1"  # rule_state rows, one per agent (asset "agent:<id>")
# The card's F1 per scored window, what the agents estimate, most telling first.
WINDOW_F1_METRICS = ("test_window_f1", "cv_window_f1")


def window_f1(models_dir: Path | None, name: str, version: str) -> tuple[float, str] | None:
    """The card's per-window test F1 of ``name`` ``version`` and its metric's name, or None
    without a card or such a metric (then estimates open no ticket)."""
    if models_dir is None:
        return None
    card = modelhealth.find_card(models_dir, name, version)
    if card is None:
        return None
    for metric in WINDOW_F1_METRICS:
        found = card.metrics.get(metric)
        if found is not None and 0 < found.value <= 1:
            return found.value, metric
    return None


class EstimateReaction:
    """Counts each agent's consecutive health reports whose F1 estimate lies wholly below
    the card's; at ``retraining_estimate_reports`` of them, a retraining ticket."""

    name = "estimate_f1"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.needed = settings.retraining_estimate_reports

    def react(self, session: Session, batch: Batch) -> None:
        for item in batch.data:
            env = item.envelope
            for health in (i for i in env.items if isinstance(i, Health)):
                e = health.estimate
                if e is None or e.f1 is None:
                    continue
                target = window_f1(self.settings.models_dir, env.model.name,
                                   env.model.version)
                if target is None:
                    continue
                run = self._count(session, item.parts.site, env.agent, health.at,
                                  e.f1.high < target[0], batch.now)
                if run < self.needed:
                    continue
                line = item.parts.line if self.settings.retraining_scope == "line" else None
                evidence = {"performance": {
                    "source": "estimate", "agent": env.agent, "at": health.at.isoformat(),
                    "estimated_f1": e.f1.value, "low": e.f1.low, "high": e.f1.high,
                    "windows": e.windows, "reports_below": run, "target": target[0],
                    "target_source": f"the model card's {target[1]}",
                    "reason": f"the gateway {env.agent} estimated F1 per window at "
                              f"{e.f1.value:.2f} (at most {e.f1.high:.2f}, 95 % interval) "
                              f"in {run} reports in a row, below the card's {target[1]} "
                              f"of {target[0]:.2f}",
                }}
                subject = tickets.Subject(
                    asset=scope_key(env.model.name, env.model.version, line),
                    site=item.parts.site, line=line or "*", agent=env.agent,
                    model_name=env.model.name, model_version=env.model.version,
                    threshold=env.model.threshold)
                tickets.open_or_escalate(
                    session, subject, "retraining", evidence, now=batch.now, at=health.at,
                    cooldown=_cooldown(self.settings))

    def _count(self, session: Session, site: str, agent: str, at: datetime, below: bool,
               now: datetime) -> int:
        """The run of reports below so far, this one counted (0 when it is not below)."""
        key = {"rule": RULE, "site": site, "asset": f"agent:{agent}"}
        state = session.get(RuleState, key, with_for_update=True)
        if state is None:
            state = RuleState(**key, windows=[], updated_at=now)
            session.add(state)
        last: dict[str, Any] = state.windows[-1] if state.windows else {}
        if last.get("at", "") >= at.isoformat():
            return 0  # a report seen before (a resend) or older: the run stands as it was
        run = int(last.get("run", 0)) + 1 if below else 0
        state.windows = [{"at": at.isoformat(), "run": run}]
        state.updated_at = now
        return run


def _cooldown(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.retraining_cooldown_s)


def check_realised(session: Session, series: SeriesStore | None, settings: Settings, *,
                   site: str, model_name: str | None, model_version: str | None,
                   now: datetime) -> None:
    """After an outcome or a failure report for (site, model version): open or escalate
    its retraining ticket when the realised F1 over the last ``retraining_f1_period`` is
    confidently below the target."""
    if model_name is None or model_version is None:
        return
    length = modelhealth.parse_period(settings.retraining_f1_period)
    figures = modelhealth.model_health(session, series, settings, since=now - length,
                                       until=now)
    group = next((g for g in figures.by_model
                  if g.group == Group.of_model(model_name, model_version)), None)
    if group is None:
        return
    f1 = group.f1
    target = modelhealth.target_f1(settings, [(model_name, model_version)])
    if not (f1.enough and f1.value is not None and f1.high is not None
            and f1.high < target.f1):
        return
    evidence = {"performance": {
        "source": "outcomes", "realised_f1": f1.value, "low": f1.low, "high": f1.high,
        "outcomes": f1.n, "real": group.real, "false_alarms": group.false_alarms,
        "missed": group.missed, "period": settings.retraining_f1_period,
        "target": target.f1, "target_source": target.source,
        "reason": f"over the last {settings.retraining_f1_period}, {group.real} of "
                  f"{group.alerts} alerts were real and {group.missed} failures were "
                  f"missed: F1 {f1.value:.2f}, at most {f1.high:.2f} (95 % interval), "
                  f"below the target {target.f1:.2f} ({target.source})",
    }}
    card = (None if settings.models_dir is None
            else modelhealth.find_card(settings.models_dir, model_name, model_version))
    # Outcomes are judged per model version and site, whatever the drift tickets' scope.
    subject = tickets.Subject(
        asset=scope_key(model_name, model_version, None), site=site, line="*", agent="*",
        model_name=model_name, model_version=model_version,
        threshold=0.0 if card is None else card.threshold.value)
    ticket, opened = tickets.open_or_escalate(session, subject, "retraining", evidence,
                                              now=now, cooldown=_cooldown(settings))
    if ticket is not None:
        logger.info("%s retraining ticket %s for %s@%s at %s: realised F1 %.2f below %.2f",
                    "opened" if opened else "escalated", ticket.id, model_name,
                    model_version, site, f1.value, target.f1)
