"""The gateways' label-free estimates: combined per group, and checked window by window.

Each agent estimates the precision, recall and F1 of its alerts **per scored window** over
its last windows (``agent.estimate``, confidence-based performance estimation) and sends the
estimate with its health report; the series store keeps it (``StoredEstimate``).

Combining agents
----------------
An agent's precision is its expected true positives over its alerts, its recall the same
over its expected positives, its F1 twice them over alerts plus expected positives. So the
group's figure is the exact weighted mean of its agents' figures, weighted by alerts
(precision), expected positives (recall) and alerts + expected positives (F1). The
agents' estimates are independent, so each side of the interval combines as
``sqrt(sum(w_i^2 * d_i^2))`` of the agents' distances ``d_i`` from their value to that
bound: one agent's interval comes back unchanged.

Checking per window
-------------------
Tickets judge whole machines (one ticket stands for a run of alerting windows), so a
ticket's precision is not what the agents estimate. The check that matches the estimate is
the realised figure per window, from the failures people reported: a window is positive
when its asset failed within the horizon (``horizon_s``, the card's horizon in plant
seconds, which the agent sends with its estimate) after the window's end. Over the period:

- an alerting window is **right** when a failure of its asset with a known time followed
  within the horizon; **false** when its horizon has passed (before ``until``) with no
  failure reported; otherwise not judged yet;
- a window within the horizon before a reported failure that did not alert is **missed**;
- an asset with a real fault of unknown time in the period (a fault fixed before it failed,
  a confirmed failure without its time) is not judged: nobody knows which windows were
  right.

It rests on failures being reported (tickets resolved ``confirmed_failure`` with
``failed_at``, and ``POST /failures`` for failures no ticket warned of), the same premise
recall rests on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from aggregator.figures import GatewayEstimate, Group
from aggregator.series import HealthPoint, PredictionPoint

__all__ = ["Failure", "WindowTally", "combine", "groups_of", "tally"]


@dataclass(frozen=True, slots=True)
class Failure:
    """A failure of ``asset`` at ``site``: at ``at`` if known, else None (a real fault
    whose time nobody recorded)."""

    site: str
    asset: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class WindowTally:
    """Windows judged against reported failures (see the module docstring)."""

    real: int = 0
    false: int = 0
    missed: int = 0

    def __add__(self, other: WindowTally) -> WindowTally:
        return WindowTally(self.real + other.real, self.false + other.false,
                           self.missed + other.missed)


def groups_of(site: str, line: str, model: str, version: str) -> tuple[Group, ...]:
    """Every group something at (site, line) scored by (model, version) belongs to."""
    return (Group.overall(), Group.of_model(model, version), Group.of_site(site),
            Group.of_line(site, line))


def _weighted(parts: Sequence[tuple[float, float, float | None, float | None]]
              ) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of the mean of (weight, value, low, high) parts."""
    total = sum(w for w, *_ in parts)
    if total <= 0:
        return None, None, None
    value = sum(w * v for w, v, _, _ in parts) / total
    below = above = 0.0
    for w, v, lo, hi in parts:
        if lo is None or hi is None:
            return value, None, None
        below += (w / total * (v - lo)) ** 2
        above += (w / total * (hi - v)) ** 2
    return value, max(0.0, value - math.sqrt(below)), min(1.0, value + math.sqrt(above))


def combine(group: Group, reports: Iterable[HealthPoint],
            tally_: WindowTally | None = None) -> GatewayEstimate | None:
    """One estimate for ``group`` from its agents' newest reports (calibrated ones only);
    None when none of them gives a number.

    >>> from datetime import UTC
    >>> from aggregator.series import StoredEstimate
    >>> def report(agent, alerts, expected, p, lo, hi):
    ...     est = StoredEstimate(windows=100, alerts=alerts, calibrated=True,
    ...                          expected_positives=expected, precision=p,
    ...                          precision_low=lo, precision_high=hi)
    ...     return HealthPoint(site="s", line="l", agent=agent, at=datetime(2026, 1, 1,
    ...         tzinfo=UTC), windows_scored=100, outbox_depth=0, outbox_dropped=0,
    ...         rejected_readings=0, inference_ms_median=None, model="m",
    ...         model_version="1", seq=0, estimate=est)
    >>> one = combine(Group.overall(), [report("a", 10, 9.0, 0.8, 0.6, 0.9)])
    >>> one.precision, one.precision_low, one.precision_high, one.windows
    (0.8, 0.6, 0.9, 100)
    >>> two = combine(Group.overall(), [report("a", 10, 9.0, 0.8, 0.6, 0.9),
    ...                                 report("b", 30, 20.0, 0.6, 0.5, 0.7)])
    >>> round(two.precision, 4), round(two.precision_low, 4), round(two.precision_high, 4)
    (0.65, 0.5599, 0.7291)
    """
    calibrated = [r for r in reports if r.estimate is not None and r.estimate.calibrated]
    if not calibrated:
        return None
    figures: dict[str, float | None] = {}
    for metric in ("precision", "recall", "f1"):
        parts = []
        for r in calibrated:
            e = r.estimate
            assert e is not None
            value = getattr(e, metric)
            if value is None:
                continue
            expected = e.expected_positives or 0.0
            weight = {"precision": e.alerts, "recall": expected,
                      "f1": e.alerts + expected}[metric]
            parts.append((float(weight), value, getattr(e, f"{metric}_low"),
                          getattr(e, f"{metric}_high")))
        figures[metric], figures[f"{metric}_low"], figures[f"{metric}_high"] = \
            _weighted(parts)
    if all(figures[m] is None for m in ("precision", "recall", "f1")):
        return None
    t = tally_ or WindowTally()
    judged = tally_ is not None and (t.real + t.false + t.missed) > 0
    return GatewayEstimate(
        group=group, windows=sum(r.estimate.windows for r in calibrated if r.estimate),
        at=max(r.at for r in calibrated),
        window_real=t.real if judged else None, window_false=t.false if judged else None,
        window_missed=t.missed if judged else None, **figures)


def tally(alerts: Iterable[PredictionPoint], before_failures: Iterable[PredictionPoint],
          failures: Iterable[Failure], horizons: dict[tuple[str, str, str], float], *,
          until: datetime) -> dict[Group, WindowTally]:
    """Windows judged per group (see the module docstring).

    ``alerts``: the period's alerting windows; ``before_failures``: the windows read
    before each timed failure of the period (alerting or not, any may repeat an alert);
    ``failures``: the failures known, timed or not; ``horizons``: seconds per (agent,
    model, model version) that sent a horizon (windows of others are not judged).
    """
    timed: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    unknown: set[tuple[str, str]] = set()
    for f in failures:
        if f.at is None:
            unknown.add((f.site, f.asset))
        else:
            timed[(f.site, f.asset)].append(f.at)
    out: dict[Group, WindowTally] = defaultdict(WindowTally)

    def add(p: PredictionPoint, one: WindowTally) -> None:
        for g in groups_of(p.site, p.line, p.model, p.model_version):
            out[g] = out[g] + one

    seen: set[tuple[str, str, str, str, datetime]] = set()
    for p in list(alerts) + [p for p in before_failures if p.alert]:
        key = (p.site, p.asset, p.agent, p.model, p.window_end)
        horizon = horizons.get((p.agent, p.model, p.model_version))
        if key in seen or horizon is None or (p.site, p.asset) in unknown:
            continue
        seen.add(key)
        h = timedelta(seconds=horizon)
        if any(p.window_end < at <= p.window_end + h for at in timed[(p.site, p.asset)]):
            add(p, WindowTally(real=1))
        elif p.window_end + h <= until:
            add(p, WindowTally(false=1))
    for p in before_failures:
        key = (p.site, p.asset, p.agent, p.model, p.window_end)
        horizon = horizons.get((p.agent, p.model, p.model_version))
        if p.alert or key in seen or horizon is None or (p.site, p.asset) in unknown:
            continue
        seen.add(key)
        h = timedelta(seconds=horizon)
        if any(p.window_end < at <= p.window_end + h for at in timed[(p.site, p.asset)]):
            add(p, WindowTally(missed=1))
    return dict(out)
