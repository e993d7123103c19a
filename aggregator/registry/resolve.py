"""What each agent is to run, from the active assignments: a pure function of the rows.

Per agent, the assignments that cover it (its id listed, its site, or its site and line)
are ranked: a list of agents before a line before a site, then the newest. Then:

- ``live``: the best live assignment; without one, the agent's own version: the live
  version it ran when the latest shadow or canary stage that covered it began (so an
  ended stage hands it back exactly what it ran before, even after it ran a canary's
  version), else the version it reports running if the registry holds it (so a shadow
  or canary can be judged against an agent's own configured model); without that,
  nothing: the agent keeps its configuration and gets no message.
- a canary that picked the agent (``ceil(share * n)`` of its target's ``n`` known agents,
  those with the lowest sha256 of agent id and version: stable while the fleet is)
  becomes its live with stage ``canary``, and the live version above its shadow: the gate
  compares both on the same windows.
- otherwise a shadow assignment adds its version as shadow beside the live one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.registry.models import ModelAssignment

__all__ = ["AgentInfo", "Desired", "VersionKey", "canary_agents", "covers", "covered",
           "desired_for", "resolve"]

VersionKey = tuple[str, str]  # (model name, version)


@dataclass(frozen=True, slots=True)
class AgentInfo:
    agent_id: str
    site: str
    line: str
    reported: VersionKey | None = None  # what it last said it runs, if registered
    # The live version it ran when the latest shadow or canary stage covering it began.
    own: VersionKey | None = None


@dataclass(frozen=True, slots=True)
class Desired:
    """The models one agent is to run (versions; the publisher adds the artifacts)."""

    stage: str  # live | canary
    live: VersionKey
    shadow: VersionKey | None
    assignments: tuple[int, ...]  # the assignment rows it comes from

    def as_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "live": list(self.live),
                "shadow": None if self.shadow is None else list(self.shadow)}


def covers(row: ModelAssignment, agent: AgentInfo) -> bool:
    if row.target_agents is not None:
        return agent.agent_id in row.target_agents
    if row.target_site != agent.site:
        return False
    return row.target_line is None or row.target_line == agent.line


def _rank(row: ModelAssignment) -> tuple[int, float, int]:
    specific = 3 if row.target_agents is not None else 2 if row.target_line is not None else 1
    return (specific, row.created_at.timestamp(), row.id)


def covered(row: ModelAssignment, agents: Iterable[AgentInfo]) -> list[AgentInfo]:
    """The known agents in ``row``'s target, by id."""
    return sorted((a for a in agents if covers(row, a)), key=lambda a: a.agent_id)


def _draw(agent_id: str, version: str) -> str:
    return hashlib.sha256(f"{agent_id}\n{version}".encode()).hexdigest()


def canary_agents(row: ModelAssignment, agents: Iterable[AgentInfo]) -> list[str]:
    """The agents a canary runs on: ``ceil(share * n)`` of its target's, drawn by a
    stable hash of agent id and version (another version draws other agents)."""
    pool = [a.agent_id for a in covered(row, agents)]
    count = math.ceil((row.share or 0.0) * len(pool) - 1e-9)
    return sorted(sorted(pool, key=lambda a: _draw(a, row.version))[:count])


def _best(rows: Sequence[ModelAssignment], stage: str, agent: AgentInfo,
          picked: dict[int, set[str]]) -> ModelAssignment | None:
    found = [r for r in rows if r.stage == stage and r.state == "active" and covers(r, agent)
             and (stage != "canary" or agent.agent_id in picked[r.id])]
    return max(found, key=_rank, default=None)


def desired_for(agent: AgentInfo, rows: Sequence[ModelAssignment],
                picked: dict[int, set[str]]) -> Desired | None:
    live = _best(rows, "live", agent, picked)
    base: VersionKey | None = ((live.model_name, live.version) if live
                               else agent.own or agent.reported)
    canary = _best(rows, "canary", agent, picked)
    if canary is not None:
        candidate = (canary.model_name, canary.version)
        if live is None and canary.baseline_version is not None:
            # What the agent reports now is the candidate itself once it runs it.
            base = (canary.model_name, canary.baseline_version)
        ids = (canary.id,) + ((live.id,) if live else ())
        return Desired("canary", candidate, base if base != candidate else None, ids)
    if base is None:
        return None
    shadow = _best(rows, "shadow", agent, picked)
    if shadow is not None and (shadow.model_name, shadow.version) != base:
        ids = ((live.id,) if live else ()) + (shadow.id,)
        return Desired("live", base, (shadow.model_name, shadow.version), ids)
    if live is None:
        # Never touched by a stage: only the agent's own model, nothing to tell it. Once
        # a stage ended: its own version again, without the stage's models.
        return None if agent.own is None else Desired("live", base, None, ())
    return Desired("live", base, None, (live.id,))


def resolve(agents: Sequence[AgentInfo], rows: Sequence[ModelAssignment]
            ) -> dict[str, Desired | None]:
    """Every agent's desired state under the active ``rows``."""
    active = [r for r in rows if r.state == "active"]
    picked = {r.id: set(canary_agents(r, agents)) for r in active if r.stage == "canary"}
    return {a.agent_id: desired_for(a, active, picked) for a in agents}
