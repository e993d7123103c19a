"""Agent registry: what the aggregator last heard from each agent.

Data messages bump ``last_seen``, ``last_seq``, the live model and the predictions count;
a shadow model's envelopes (``ModelRef.role`` shadow) never set the live model nor add to
the count. Health items carry the agent's latest model deployment (``Health.deployment``):
the shadow model it runs and whether its latest assignment was applied or refused, and
why, the newest by the agent's own ``at`` winning. Retained status messages (``online``,
or ``offline`` from the last will) set the state. State changes are ordered by the
agent's own timestamps, never by arrival: a broker delivers a retained status or a last
will late (after a reconnect, or from a session older than the agent's current one), and
the newest fact must win.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db import AgentRecord
from aggregator.reactions import Batch
from aggregator.reactions.state import locked_agents
from aggregator.validate import DataMessage
from contract.wire import Deployment, Health, TopicParts

__all__ = ["AgentRegistry"]


class AgentRegistry:
    """Keeps one ``agents`` row per agent up to date."""

    name = "agents"

    def react(self, session: Session, batch: Batch) -> None:
        by_agent: dict[str, list[DataMessage]] = {}
        for item in batch.data:
            by_agent.setdefault(item.envelope.agent, []).append(item)
        rows = locked_agents(session, AgentRecord,
                             {*by_agent, *(s.parts.agent for s in batch.statuses)})
        for agent in sorted(by_agent):
            # One write per field and agent: what the newest message (by seq) says.
            items = sorted(by_agent[agent], key=lambda d: d.envelope.seq)
            newest = items[-1]
            row = _agent(session, newest.parts, rows)
            live = [d for d in items if not d.envelope.model.shadow]
            row.site, row.line, row.last_seen = newest.parts.site, newest.parts.line, batch.now
            if live and (row.last_seq is None or live[-1].envelope.seq >= row.last_seq):
                model = live[-1].envelope.model
                row.model_name, row.model_version = model.name, model.version
            if row.last_seq is None or newest.envelope.seq >= row.last_seq:
                row.last_seq = newest.envelope.seq
            row.predictions_count += sum(len(d.points) for d in live)
            for item in live:
                if item.health:
                    for report in item.envelope.items:
                        if not isinstance(report, Health):
                            continue
                        if report.monitoring is not None:
                            b = report.monitoring.budget
                            row.alarm_budget_per_day = b.alarms / b.per_days
                        if report.deployment is not None:
                            _deployed(row, report.deployment)
            _seen_alive(row, max(d.envelope.ts for d in items))
        for update in sorted(batch.statuses, key=lambda s: _order(s.status.state, s.status.ts)):
            row = _agent(session, update.parts, rows)
            status = update.status
            if row.state_at is None or _order(status.state, status.ts) >= _order(
                row.state, row.state_at
            ):
                row.state, row.state_at, row.last_seen = status.state, status.ts, batch.now
                if status.model is not None:
                    row.model_name, row.model_version = status.model.name, status.model.version


def _deployed(row: AgentRecord, d: Deployment) -> None:
    """The agent's newest deployment report (by its ``at``) onto its row. Applied or
    refused, ``shadow`` is what scores beside the live model now."""
    if row.deployment_at is not None and d.at < row.deployment_at:
        return
    row.deployment_at, row.deployment_state = d.at, d.state
    row.deployment_assignment, row.deployment_reason = d.assignment, d.reason or None
    row.shadow_model_name = None if d.shadow is None else d.shadow.name
    row.shadow_model_version = None if d.shadow is None else d.shadow.version


def _order(state: str, ts: datetime) -> tuple[datetime, int]:
    """Sort key of a state change: the agent's timestamp, and at equal timestamps the
    ``offline`` last will after the ``online`` it ends (an agent stamps both alike)."""
    return ts, state == "offline"


def _seen_alive(row: AgentRecord, sent_at: datetime) -> None:
    """A data message sent after the agent's last known state change proves it online.

    Without this, a stale ``offline`` (a last will from an earlier session, delivered
    after the agent came back) would stand while the agent is plainly sending.
    """
    if row.state == "unknown" or (
        row.state == "offline" and row.state_at is not None and sent_at > row.state_at
    ):
        row.state, row.state_at = "online", sent_at


def _agent(session: Session, parts: TopicParts, rows: dict[str, AgentRecord]) -> AgentRecord:
    """The agent's row, locked for this transaction (created on first contact)."""
    row = rows.get(parts.agent) or session.get(AgentRecord, parts.agent, with_for_update=True)
    if row is None:
        row = AgentRecord(
            agent_id=parts.agent, site=parts.site, line=parts.line, state="unknown",
            predictions_count=0,
        )
        try:
            # Replicas share an agent's messages, so two may meet it for the first time.
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            row = session.get(AgentRecord, parts.agent, with_for_update=True)
            if row is None:
                raise
    rows[parts.agent] = row
    return row
