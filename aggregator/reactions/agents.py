"""Agent registry: what the aggregator last heard from each agent.

Data messages bump ``last_seen``, ``last_seq``, the model and the predictions count;
retained status messages (``online``, or ``offline`` from the last will) set the state.
State changes are ordered by the agent's own timestamps, never by arrival: a broker
delivers a retained status or a last will late (after a reconnect, or from a session
older than the agent's current one), and the newest fact must win.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db import AgentRecord
from aggregator.reactions import Batch
from aggregator.validate import DataMessage
from contract.wire import Health, TopicParts

__all__ = ["AgentRegistry"]


class AgentRegistry:
    """Keeps one ``agents`` row per agent up to date."""

    name = "agents"

    def react(self, session: Session, batch: Batch) -> None:
        rows: dict[str, AgentRecord] = {}
        by_agent: dict[str, list[DataMessage]] = {}
        for item in batch.data:
            by_agent.setdefault(item.envelope.agent, []).append(item)
        for agent in sorted(by_agent):
            # One write per field and agent: what the newest message (by seq) says.
            items = sorted(by_agent[agent], key=lambda d: d.envelope.seq)
            newest = items[-1]
            row = _agent(session, newest.parts, rows)
            env = newest.envelope
            row.site, row.line, row.last_seen = newest.parts.site, newest.parts.line, batch.now
            if row.last_seq is None or env.seq >= row.last_seq:
                row.last_seq = env.seq
                row.model_name, row.model_version = env.model.name, env.model.version
            row.predictions_count += sum(len(d.points) for d in items)
            for item in items:
                if item.health:
                    for report in item.envelope.items:
                        if isinstance(report, Health) and report.monitoring is not None:
                            b = report.monitoring.budget
                            row.alarm_budget_per_day = b.alarms / b.per_days
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
