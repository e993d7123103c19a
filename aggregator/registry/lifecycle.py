"""The stage machine of assignments: assign, promote through the gate, roll back.

A version moves shadow -> canary -> live, each step a new assignment on the same target
(the old one ends ``promoted``), and only when the gate passes: it judges the candidate
against the live version it would replace, on the windows both scored on the same agents
since the stage began. A live assignment supersedes the live one on the same target, which
comes back if it is rolled back. A canary that the periodic check finds failing (a
``ready`` verdict that did not pass) is rolled back and a retraining ticket says why; a
person's rollback does the same without a ticket unless asked.

The gate is a parameter (``Judge``), so the machine is tested with chosen verdicts; the
aggregator passes ``gate_judge`` (``aggregator.rollout.gate.evaluate``). Functions take
the caller's session and never commit; each change adds its audit entry.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator import audit, tickets
from aggregator.db import AgentRecord, Ticket
from aggregator.errors import AggregatorError
from aggregator.reactions.retraining import scope_key
from aggregator.registry import store
from aggregator.registry.models import ModelAssignment, ModelVersion
from aggregator.registry.resolve import AgentInfo, canary_agents, covered, covers, desired_for
from aggregator.rollout.gate import GatePolicy, ModelKey, Verdict, evaluate
from aggregator.series import SeriesStore

__all__ = [
    "NEXT_STAGE",
    "AssignmentNotFoundError",
    "AssignmentStateError",
    "Judge",
    "Question",
    "Target",
    "agent_infos",
    "assign",
    "check_canaries",
    "gate_judge",
    "judged_agents",
    "promote",
    "rollback",
    "verdict_json",
]

logger = logging.getLogger(__name__)

NEXT_STAGE = {"shadow": "canary", "canary": "live"}


class AssignmentNotFoundError(AggregatorError):
    """No assignment with that id."""


class AssignmentStateError(AggregatorError):
    """The assignment cannot do that in its state or stage (or there is nothing to judge
    it against); the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """Exactly one of: a list of agents; a site; a site and one of its lines."""

    agents: tuple[str, ...] | None = None
    site: str | None = None
    line: str | None = None

    def __post_init__(self) -> None:
        if (self.agents is None) == (self.site is None):
            raise ValueError("a target is either a list of agents or a site (and line)")
        if self.agents is not None and (not self.agents or self.line is not None):
            raise ValueError("a list of agents needs at least one agent and no line")


@dataclass(frozen=True, slots=True)
class Question:
    """What the gate is asked: ``candidate`` against ``baseline`` on ``agents``."""

    candidate: ModelKey
    baseline: ModelKey
    agents: tuple[str, ...]
    since: datetime
    until: datetime
    f1_target: float | None


Judge = Callable[[Session, Question], Verdict]


def gate_judge(series: SeriesStore, policy: GatePolicy | None = None) -> Judge:
    """The aggregator's judge: ``aggregator.rollout.gate.evaluate`` on ``series``."""
    chosen = policy or GatePolicy()

    def judge(session: Session, q: Question) -> Verdict:
        return evaluate(series, session, candidate=q.candidate, baseline=q.baseline,
                        agents=q.agents, since=q.since, until=q.until,
                        f1_target=q.f1_target, policy=chosen)

    return judge


def verdict_json(verdict: Verdict, decision: str, at: datetime) -> dict[str, Any]:
    return {"at": at.isoformat(), "decision": decision, "ready": verdict.ready,
            "passed": verdict.passed, "reasons": list(verdict.reasons),
            "figures": asdict(verdict.figures)}


def agent_infos(session: Session) -> list[AgentInfo]:
    """Every known agent, with the registered version it reports running (if any)."""
    registered = {(name, version) for name, version in
                  session.execute(select(ModelVersion.name, ModelVersion.version))}
    stages = list(session.scalars(
        select(ModelAssignment).where(ModelAssignment.stage.in_(("shadow", "canary")),
                                      ModelAssignment.baseline_version.is_not(None))
        .order_by(ModelAssignment.created_at.desc(), ModelAssignment.id.desc())))
    infos = []
    for row in session.scalars(select(AgentRecord).order_by(AgentRecord.agent_id)):
        reported = (row.model_name, row.model_version) if row.model_name else None
        info = AgentInfo(row.agent_id, row.site, row.line,
                         reported if reported in registered else None)
        latest = next((s for s in stages if covers(s, info)), None)
        if latest is not None and latest.baseline_version is not None:
            info = replace(info, own=(latest.model_name, latest.baseline_version))
        infos.append(info)
    return infos


def _active(session: Session) -> list[ModelAssignment]:
    return list(session.scalars(select(ModelAssignment)
                                .where(ModelAssignment.state == "active")
                                .order_by(ModelAssignment.id)))


def _get(session: Session, assignment_id: int) -> ModelAssignment:
    # populate_existing: the row may be loaded already, and what counts is its state now
    # that it is locked (another replica may just have ended it).
    row = session.get(ModelAssignment, assignment_id, with_for_update=True,
                      populate_existing=True)
    if row is None:
        raise AssignmentNotFoundError(f"no model assignment {assignment_id}")
    return row


def _same_target(a: ModelAssignment, b: ModelAssignment) -> bool:
    return ((a.target_agents and sorted(a.target_agents)) == (b.target_agents and
            sorted(b.target_agents)) and a.target_site == b.target_site
            and a.target_line == b.target_line)


def _baseline(session: Session, row: ModelAssignment) -> str | None:
    """The live version of ``row``'s model its target's agents run now (the commonest)."""
    agents = agent_infos(session)
    active = [r for r in _active(session) if r.id != row.id]
    found: Counter[str] = Counter()
    for agent in covered(row, agents):
        want = desired_for(agent, [r for r in active if r.stage == "live"], {})
        live = want.live if want is not None else agent.reported
        if live is not None and live[0] == row.model_name and live[1] != row.version:
            found[live[1]] += 1
    return found.most_common(1)[0][0] if found else None


def _supersede(session: Session, row: ModelAssignment, now: datetime) -> None:
    """End the active live assignments on ``row``'s target; remember the newest."""
    for other in _active(session):
        if other.id != row.id and other.stage == "live" and _same_target(other, row):
            other.state, other.ended_at = "superseded", now
            other.reason = f"superseded by assignment {row.id}"
            if row.previous_id is None or other.id > row.previous_id:
                row.previous_id = other.id


def _describe(row: ModelAssignment) -> dict[str, Any]:
    return {"model": row.model_name, "version": row.version, "stage": row.stage,
            "agents": row.target_agents, "site": row.target_site, "line": row.target_line,
            "share": row.share}


def assign(session: Session, *, name: str, version: str, stage: str, target: Target,
           share: float | None, actor: audit.Actor, now: datetime | None = None
           ) -> ModelAssignment:
    """A new active assignment (flushed). A canary needs a share in (0, 1]."""
    now = now or datetime.now(UTC)
    store.get(session, name, version)
    if stage not in ("shadow", "canary", "live"):
        raise AssignmentStateError(f"stage {stage!r}: shadow, canary or live")
    if stage == "canary":
        if share is None or not 0 < share <= 1:
            raise AssignmentStateError("a canary needs a share in (0, 1]: the part of its "
                                       "target's agents that run it live")
    elif share is not None:
        raise AssignmentStateError(f"share is for canaries only, not {stage}")
    row = ModelAssignment(
        model_name=name, version=version, stage=stage,
        target_agents=sorted(set(target.agents)) if target.agents else None,
        target_site=target.site, target_line=target.line, share=share, state="active",
        created_by=actor.name, created_at=now, reason="", figures=[])
    session.add(row)
    session.flush()
    if stage == "live":
        _supersede(session, row, now)
    else:
        row.baseline_version = _baseline(session, row)
    audit.record(session, actor, "registry.assign", "model_assignment", row.id,
                 _describe(row), now=now)
    return row


def judged_agents(session: Session, row: ModelAssignment) -> list[str]:
    """The agents whose windows judge ``row``: a canary's drawn agents, else its target's."""
    agents = agent_infos(session)
    if row.stage == "canary":
        return canary_agents(row, agents)
    return [a.agent_id for a in covered(row, agents)]


def _question(session: Session, row: ModelAssignment, now: datetime) -> Question:
    if row.baseline_version is None:
        raise AssignmentStateError(
            f"assignment {row.id}: no live version of {row.model_name} ran on its agents when "
            "it began, so the gate has nothing to compare it with")
    card = store.get(session, row.model_name, row.version).card
    return Question(candidate=ModelKey(row.model_name, row.version),
                    baseline=ModelKey(row.model_name, row.baseline_version),
                    agents=tuple(judged_agents(session, row)), since=row.created_at,
                    until=now, f1_target=store.f1_target(card))


def promote(session: Session, assignment_id: int, judge: Judge, *, actor: audit.Actor,
            share: float | None = None, now: datetime | None = None
            ) -> tuple[Verdict, ModelAssignment | None]:
    """Ask the gate; if it passes, end the assignment ``promoted`` and return the new one
    at the next stage (a canary takes ``share``). The verdict is kept with the assignment
    either way; a refusal returns ``(verdict, None)``."""
    now = now or datetime.now(UTC)
    row = _get(session, assignment_id)
    if row.state != "active":
        raise AssignmentStateError(f"assignment {row.id} is {row.state}, not active")
    nxt = NEXT_STAGE.get(row.stage)
    if nxt is None:
        raise AssignmentStateError(f"assignment {row.id} is live already: nothing to "
                                   "promote it to")
    if nxt == "canary" and (share is None or not 0 < share <= 1):
        raise AssignmentStateError("promoting to canary needs a share in (0, 1]")
    verdict = judge(session, _question(session, row, now))
    row.figures = [*row.figures, verdict_json(verdict, "promote", now)]
    if not verdict.passed:
        audit.record(session, actor, "registry.promote_refused", "model_assignment", row.id,
                     {"reasons": list(verdict.reasons)}, now=now)
        return verdict, None
    row.state, row.ended_at = "promoted", now
    row.reason = f"promoted to {nxt} by {actor.name}"
    new = ModelAssignment(
        model_name=row.model_name, version=row.version, stage=nxt,
        target_agents=row.target_agents, target_site=row.target_site,
        target_line=row.target_line, share=share if nxt == "canary" else None,
        baseline_version=row.baseline_version, state="active", created_by=actor.name,
        created_at=now, reason=f"promoted from assignment {row.id}", figures=[])
    session.add(new)
    session.flush()
    if nxt == "live":
        _supersede(session, new, now)
    audit.record(session, actor, "registry.promote", "model_assignment", row.id,
                 {"to": nxt, "new_assignment": new.id, **_describe(new)}, now=now)
    return verdict, new


def rollback(session: Session, assignment_id: int, *, reason: str, actor: audit.Actor,
             verdict: Verdict | None = None, open_ticket: bool = False,
             now: datetime | None = None) -> tuple[ModelAssignment, Ticket | None]:
    """End an active assignment ``rolled_back``: its agents get what they ran before (a
    rolled-back live assignment brings back the one it superseded)."""
    now = now or datetime.now(UTC)
    row = _get(session, assignment_id)
    if row.state != "active":
        raise AssignmentStateError(f"assignment {row.id} is {row.state}, not active")
    row.state, row.ended_at, row.reason = "rolled_back", now, reason
    if verdict is not None:
        row.figures = [*row.figures, verdict_json(verdict, "rollback", now)]
    if row.stage == "live" and row.previous_id is not None:
        previous = session.get(ModelAssignment, row.previous_id)
        if previous is not None and previous.state == "superseded":
            previous.state, previous.ended_at = "active", None
            previous.reason = f"active again: assignment {row.id} was rolled back"
    ticket = _ticket(session, row, reason, verdict, now) if open_ticket else None
    audit.record(session, actor, "registry.rollback", "model_assignment", row.id,
                 {"reason": reason, "ticket": None if ticket is None else ticket.id,
                  **_describe(row)}, now=now)
    return row, ticket


def _ticket(session: Session, row: ModelAssignment, reason: str, verdict: Verdict | None,
            now: datetime) -> Ticket | None:
    agents = judged_agents(session, row)
    site = row.target_site
    if site is None:
        sites = sorted({a.site for a in agent_infos(session) if a.agent_id in agents})
        site = sites[0] if sites else "*"
    card = store.get(session, row.model_name, row.version).card
    evidence: dict[str, Any] = {"rollout": {
        "assignment": row.id, "model": row.model_name, "version": row.version,
        "stage": row.stage, "baseline_version": row.baseline_version, "agents": agents,
        "reason": reason,
        "reasons": [] if verdict is None else list(verdict.reasons),
        "figures": None if verdict is None else asdict(verdict.figures)}}
    subject = tickets.Subject(
        asset=scope_key(row.model_name, row.version, row.target_line), site=site,
        line=row.target_line or "*", agent=",".join(agents)[:128] or "*",
        model_name=row.model_name, model_version=row.version,
        threshold=float(card.get("threshold", {}).get("value", 0.0)))
    ticket, _ = tickets.open_or_escalate(session, subject, "retraining", evidence, now=now)
    return ticket


def check_canaries(session: Session, judge: Judge, *, now: datetime | None = None
                   ) -> Sequence[tuple[ModelAssignment, Ticket | None]]:
    """Judge every active canary; roll back (with a retraining ticket) each whose verdict
    is ready and failed. A canary without a baseline, or not ready yet, stays."""
    now = now or datetime.now(UTC)
    done = []
    for row in _active(session):
        if row.stage != "canary" or row.baseline_version is None:
            continue
        verdict = judge(session, _question(session, row, now))
        if not verdict.ready or verdict.passed:
            continue
        if _get(session, row.id).state != "active":  # another replica rolled it back
            continue
        why = "; ".join(verdict.reasons) or "the gate's figures failed"
        logger.warning("canary %s %s (assignment %d) fails the gate: %s; rolling it back",
                       row.model_name, row.version, row.id, why)
        done.append(rollback(session, row.id, reason=f"automatic rollback: {why}",
                             actor=audit.Actor("aggregator:canary-check"), verdict=verdict,
                             open_ticket=True, now=now))
    return done
