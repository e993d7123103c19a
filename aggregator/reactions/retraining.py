"""Retraining tickets: the model itself can no longer be trusted on part of the fleet.

Per model version and site (or line, ``retraining_scope``), over the last
``retraining_window_s`` of plant time: how many assets had drift conditions (features out
of the training envelope, not explained by a sensor fault), against how many the agents'
false-alarm budgets allow. A ticket opens when there are at least
``retraining_min_assets`` of them *and* the budget makes that many improbable
(``P(N >= observed) < retraining_p`` for N Poisson with the budget's mean): drift beyond
what chance explains. Agents whose alert rate left the reference's count as well.

One ticket per model version and scope (its ``asset`` is ``model:<name>@<version>``, with
``/<line>`` for a line scope); later evidence updates it, and after it is resolved the
cooldown applies. Its evidence is the bundle a data scientist starts from: the time range,
the agents, lines and assets affected, the signals that moved (reference against current),
how many assets the model is blind on, and which data to retrain on.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator import conditions, tickets
from aggregator.db import AgentRecord, AssetCondition, RuleState, Ticket
from aggregator.reactions import Batch
from aggregator.rules import ConditionLike, ScoredWindow, poisson_tail
from aggregator.settings import Settings
from contract.wire import DriftEvent

__all__ = ["DEFAULT_BUDGET_PER_DAY", "RetrainingReaction", "scope_key"]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_PER_DAY = 1 / 90  # an agent that has not reported its budget yet
# An open ticket's evidence is recomputed when new assets move, and otherwise at most this
# often: the recount reads every recent condition of the scope.
_REFRESH = timedelta(seconds=60)


def scope_key(model: str, version: str, line: str | None) -> str:
    """The ``asset`` a retraining ticket is kept under.

    >>> scope_key("cmapss_fd001", "1.0.0", None), scope_key("m", "2", "line3")
    ('model:cmapss_fd001@1.0.0', 'model:m@2/line3')
    """
    return f"model:{model}@{version}" + ("" if line is None else f"/{line}")


class RetrainingReaction:
    """Opens or updates one retraining ticket per model version and site (or line)."""

    name = "retraining"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.window = timedelta(seconds=settings.retraining_window_s)
        self.cooldown = timedelta(seconds=settings.retraining_cooldown_s)

    def react(self, session: Session, batch: Batch) -> None:
        # Scope -> (threshold, what started in this batch: assets, and agents for the rate).
        scopes: dict[tuple[str, str, str, str | None], tuple[float, set[str]]] = {}
        for item in batch.data:
            if not item.drift:  # most messages carry predictions only
                continue
            started = {e.asset or f"agent:{item.envelope.agent}" for e in item.envelope.items
                       if isinstance(e, DriftEvent) and e.state == "start"
                       and e.detector in ("envelope", "alert_rate")}
            if started:
                env = item.envelope
                line = item.parts.line if self.settings.retraining_scope == "line" else None
                key = (item.parts.site, env.model.name, env.model.version, line)
                scopes.setdefault(key, (env.model.threshold, set()))[1].update(started)
        for (site, model, version, line), (threshold, started) in sorted(scopes.items(),
                                                                         key=str):
            ticket = tickets.open_ticket(session, site, scope_key(model, version, line),
                                         "retraining")
            if ticket is not None and started <= _known(ticket) \
                    and batch.now - ticket.updated_at < _REFRESH:
                continue  # nothing the open ticket does not already say, and it is fresh
            self._scope(session, site, model, version, line, threshold, batch.now)

    def _scope(self, session: Session, site: str, model: str, version: str, line: str | None,
               threshold: float, now: datetime) -> None:
        where = [AssetCondition.site == site, AssetCondition.model_name == model,
                 AssetCondition.model_version == version]
        if line is not None:
            where.append(AssetCondition.line == line)
        latest = session.scalar(select(func.max(AssetCondition.detected_at)).where(*where))
        if latest is None:
            return
        recent = list(session.scalars(select(AssetCondition).where(
            *where, AssetCondition.since >= latest - self.window)))
        if not recent:
            return
        moved = _moved(recent)
        rate_agents = sorted({r.agent for r in recent if r.detector == "alert_rate"})
        agents = _agents(session, site, line, {r.agent for r in recent})
        budget = sum(a.alarm_budget_per_day or DEFAULT_BUDGET_PER_DAY for a in agents)
        expected = budget * self.window.total_seconds() / 86_400
        p = min(poisson_tail(len(moved), expected),
                poisson_tail(len(rate_agents), expected) if len(rate_agents) > 1 else 1.0)
        if max(len(moved), len(rate_agents)) < self.settings.retraining_min_assets \
                and len(rate_agents) < 2:
            return
        if p >= self.settings.retraining_p:
            return
        blind = conditions.foreign_assets(session, site, model, version,
                                          self.settings.triage_sensor_channels)
        evidence = _bundle(session, site, recent, moved, rate_agents, blind, expected, p,
                           len(agents))
        subject = tickets.Subject(
            asset=scope_key(model, version, line), site=site, line=line or "*",
            agent=",".join(sorted({r.agent for r in recent}))[:128] or "*", model_name=model,
            model_version=version, threshold=threshold)
        # Event time: the latest detection (plant time) of the scope's conditions.
        tickets.open_or_escalate(session, subject, "retraining", evidence, now=now,
                                 at=latest, cooldown=self.cooldown)


def _known(ticket: Ticket) -> set[str]:
    """Assets and agents (``agent:<id>``) an open retraining ticket already names."""
    ev = ticket.evidence
    return set(ev.get("assets", [])) | {f"agent:{a}" for a in ev.get("alert_rate_agents", [])}


def _moved(rows: list[AssetCondition]) -> dict[str, list[AssetCondition]]:
    """Assets with envelope conditions not explained by a sensor fault of theirs."""
    by_asset: dict[str, list[AssetCondition]] = defaultdict(list)
    for r in rows:
        if r.asset != conditions.FLEET:
            by_asset[r.asset].append(r)
    out = {}
    for asset, rs in by_asset.items():
        sensors = {c for r in rs if r.detector in conditions.SENSOR_DETECTORS for c in r.channels}
        if any(r.detector == "envelope" and set(r.channels) - sensors for r in rs):
            out[asset] = rs
    return out


def _agents(session: Session, site: str, line: str | None,
            names: set[str]) -> list[AgentRecord]:
    query = select(AgentRecord).where(AgentRecord.site == site)
    if line is not None:
        query = query.where(AgentRecord.line == line)
    return [a for a in session.scalars(query) if a.agent_id in names]


def _bundle(session: Session, site: str, recent: list[AssetCondition],
            moved: dict[str, list[AssetCondition]], rate_agents: list[str],
            blind: dict[str, list[ConditionLike]], expected: float, p: float,
            n_agents: int) -> dict[str, Any]:
    start = min(r.since for r in recent)
    end = max(r.detected_at for r in recent)
    signals: dict[str, list[AssetCondition]] = defaultdict(list)
    for rs in moved.values():
        for r in rs:
            if r.detector == "envelope":
                signals[r.monitor].append(r)
    ranked = sorted(signals.items(), key=lambda kv: (-len({r.asset for r in kv[1]}), kv[0]))
    assets = sorted(moved)
    alerting = _alerting(session, site, sorted(blind))
    return {
        "action": "retrain or recalibrate the model on data that covers how these machines "
                  "run now; until then its risk scores for the assets below are not trusted",
        "from": start.isoformat(), "to": end.isoformat(),
        "agents": sorted({r.agent for r in recent}), "lines": sorted({r.line for r in recent}),
        "assets": assets,
        "assets_moved": len(moved), "agents_reporting": n_agents,
        "expected_by_budget": round(expected, 4), "p_value": p,
        "blind": {"assets": len(blind),
                  "scoring_healthy": len(blind) - len(alerting),
                  "alerting_not_trusted": len(alerting)},
        "alert_rate_agents": rate_agents,
        "signals": [_signal(name, rs) for name, rs in ranked[:20]],
        "retrain_on": {
            "from": start.isoformat(), "to": end.isoformat(), "assets": assets,
            "note": "the inputs of these assets over this period (plant time) from the "
                    "plant historian, labelled with the outcomes of their tickets; keep the "
                    "original training data so the old regime stays covered",
        },
        "top_channels": [c for c, _ in Counter(
            c for rs in moved.values() for r in rs for c in r.channels).most_common(10)],
    }


def _signal(name: str, rows: list[AssetCondition]) -> dict[str, Any]:
    ref = next((r.reference for r in rows if r.reference), None)
    currents = [r.current for r in rows if r.current is not None]
    return {"signal": name, "assets": len({r.asset for r in rows}), "reference": ref,
            "current_median": statistics.median(currents) if currents else None,
            "detail": rows[0].detail}


def _alerting(session: Session, site: str, assets: list[str]) -> list[str]:
    """Assets whose latest windows alert (their risk is the untrusted kind)."""
    if not assets:
        return []
    states = session.scalars(select(RuleState).where(
        RuleState.site == site, RuleState.rule == "maintenance", RuleState.asset.in_(assets)))
    return sorted(s.asset for s in states
                  if any(ScoredWindow.from_json(w).alert for w in s.windows))
