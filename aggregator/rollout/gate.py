"""The promotion gate: may a candidate model version go from shadow to canary, or from
canary to live, and must a canary be rolled back?

A candidate is always judged on the same windows as the model it would replace: in the
shadow stage the agent runs the candidate as shadow beside the live version, in the canary
stage it runs the candidate live and the previous live version as shadow. So agreement is
measured window by window, not between two fleets' different weeks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from aggregator.series import SeriesStore

__all__ = ["Figures", "GatePolicy", "ModelKey", "Verdict", "evaluate"]


@dataclass(frozen=True)
class ModelKey:
    name: str
    version: str


@dataclass(frozen=True)
class GatePolicy:
    min_windows: int = 200  # windows both versions scored before any verdict
    min_agreement: float = 0.95  # share of those windows with the same alert decision
    f1_margin: float = 0.05  # how far the estimated F1 may fall below the card's target
    max_new_drift: int = 0  # drift conditions started on the candidate's agents since it began


@dataclass(frozen=True)
class Figures:
    windows: int  # windows both versions scored (same agent, asset, window_end)
    agreement: float | None  # share of those with the same alert decision
    score_mad: float | None  # median absolute difference of the two scores
    candidate_alerts: int
    baseline_alerts: int
    estimated_f1: float | None  # the candidate's label-free estimate over its agents
    f1_target: float | None  # the candidate card's test_window_f1
    new_drift: int  # drift conditions started on those agents since the stage began


@dataclass(frozen=True)
class Verdict:
    ready: bool  # enough common windows to judge at all
    passed: bool  # ready, and every check passed
    reasons: tuple[str, ...]  # each failed or pending check, in a manager's words
    figures: Figures


def evaluate(store: SeriesStore, session: Session, *, candidate: ModelKey,
             baseline: ModelKey, agents: Sequence[str], since: datetime, until: datetime,
             f1_target: float | None, policy: GatePolicy) -> Verdict:
    """The gate's verdict on ``candidate`` against ``baseline`` over the windows both
    scored on ``agents`` with ``since <= window_end < until``."""
    raise NotImplementedError("built in the rollout-figures work")
