"""The promotion gate: may a candidate model version go from shadow to canary, or from
canary to live, and must a canary be rolled back?

A candidate is always judged on the same windows as the model it would replace: in the
shadow stage the agent runs the candidate as shadow beside the live version, in the canary
stage it runs the candidate live and the previous live version as shadow. So agreement is
measured window by window, not between two fleets' different weeks.

The figures (:func:`evaluate`):

- agreement and score differences from the series store's paired read (both roles, the
  newest ``PAIR_READ_LIMIT`` windows of each version in the period);
- the candidate's estimated F1 from its agents' newest label-free estimates in the period
  (in either role), pooled the way ``aggregator.estimates`` pools a group's;
- new drift: drift and data-quality conditions (``AssetCondition``) its agents detected in
  the period, whatever model they were reported with: a candidate that moves the stream
  or the score distribution shows up there first.

The verdict (:func:`judge`) is a pure function of the figures, so what the dashboard shows
and what the registry acts on are the same sentence. A missing estimate skips the F1 check
(an agent not yet calibrated cannot tell), unless ``GatePolicy.require_estimate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator.db import AssetCondition
from aggregator.estimates import combine
from aggregator.figures import Group
from aggregator.series import SeriesStore, clamp_time

__all__ = ["Figures", "GatePolicy", "ModelKey", "Verdict", "evaluate", "judge"]


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
    require_estimate: bool = False  # fail (not skip) the F1 check when no estimate exists


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
    since, until = clamp_time(since), clamp_time(until)
    paired = store.paired((candidate.name, candidate.version),
                          (baseline.name, baseline.version), agents, since, until)
    mine = set(agents)
    reports = [r for r in store.estimates(since, until, role=None)
               if r.agent in mine and (r.model, r.model_version) ==
               (candidate.name, candidate.version)]
    pooled = combine(Group.of_model(candidate.name, candidate.version), reports)
    new_drift = session.scalar(select(func.count()).select_from(AssetCondition).where(
        AssetCondition.agent.in_(sorted(mine)), AssetCondition.detected_at >= since,
        AssetCondition.detected_at < until)) if mine else 0
    figures = Figures(
        windows=paired.windows,
        agreement=paired.agreements / paired.windows if paired.windows else None,
        score_mad=paired.score_mad, candidate_alerts=paired.candidate_alerts,
        baseline_alerts=paired.baseline_alerts,
        estimated_f1=None if pooled is None else pooled.f1, f1_target=f1_target,
        new_drift=int(new_drift or 0))
    return judge(figures, policy)


def _percent(share: float) -> str:
    """A share as a percentage that never rounds up across a threshold: 0.949 is 94.9,
    0.9499 is 94.9 too, 0.95 is 95.

    >>> _percent(0.9499), _percent(0.95), _percent(0.91)
    ('94.9', '95', '91')
    """
    return f"{math.floor(round(share * 1000, 6)) / 10:g}"


def judge(figures: Figures, policy: GatePolicy) -> Verdict:
    """The verdict on ``figures``: not ready below ``policy.min_windows`` common windows;
    otherwise passed when every check passes. Each failed or pending check is one reason,
    in a manager's words; F1 and drift failures are named even before it is ready (a
    canary that already drifts must not wait for its window count to be rolled back)."""
    reasons: list[str] = []
    ready = figures.windows >= policy.min_windows
    if not ready:
        reasons.append(f"{figures.windows} of {policy.min_windows} windows compared so far")
    elif figures.agreement is not None and figures.agreement < policy.min_agreement:
        reasons.append(f"agrees with the live model on {_percent(figures.agreement)} % of "
                       f"windows, needs {_percent(policy.min_agreement)} %")
    if figures.f1_target is not None:
        if figures.estimated_f1 is None:
            if policy.require_estimate:
                reasons.append("no estimated F1 from its agents yet")
        elif figures.estimated_f1 < figures.f1_target - policy.f1_margin:
            reasons.append(f"estimated F1 {figures.estimated_f1:.2f} against the card's "
                           f"{figures.f1_target:.2f} (margin {policy.f1_margin:.2f})")
    if figures.new_drift > policy.max_new_drift:
        n = figures.new_drift
        allowed = f", {policy.max_new_drift} allowed" if policy.max_new_drift else ""
        reasons.append(f"{n} new drift condition{'s' if n != 1 else ''} on its agents "
                       f"since the stage began{allowed}")
    return Verdict(ready=ready, passed=ready and not reasons, reasons=tuple(reasons),
                   figures=figures)
