"""Model health figures from ticket outcomes: pure computation, no database, no HTTP.

A project manager asks "does the model still work, and is it worth what it costs?".
``compute`` answers with numbers, from plain inputs the caller has read elsewhere:

- ``TicketFact``: one ticket (any kind) with its outcome; ``TicketFact.from_ticket`` reads a
  ``db.Ticket`` (or anything with its attributes) without touching the database;
- ``MissedFailure``: a failure reported without a maintenance ticket before it;
- ``AssetCount``: how many assets were monitored (in all, or per site / line / model version);
- ``DriftCondition``: drift conditions the agents reported (``db.AssetCondition``);
- ``GatewayEstimate``: the agents' label-free precision / recall / F1 estimates, shown next
  to the realised figures.

What counts
-----------
Only **maintenance** tickets are alerts. Their outcome (``aggregator.outcomes``) makes them
a *real fault* (``confirmed_failure``, ``preventive_action``), a *false alarm*
(``no_fault_found``, ``sensor_fault``) or *not counted* (``superseded``, ``other``, still
open). A ticket belongs to the period (and calendar month) in which it was **resolved**; a
missed failure to the one in which it happened (``at``). Open tickets, open retraining
tickets and active drift conditions are counted as they stood at the end of the period (of
the month, for the months). Months are calendar months in UTC.

Figures, per group (all; per model version; per site; per line; per calendar month)
------------------------------------------------------------------------------------
- precision = real / (real + false), recall = real / (real + missed), F1 =
  2 real / (2 real + false + missed);
- 95 % intervals honest for small counts. Precision and recall: the **Wilson score
  interval**. F1: F1 is an increasing function of J = real / (real + false + missed), the
  share of real faults among all counted outcomes (F1 = 2J / (1 + J)); given the number of
  outcomes, the real faults among them are binomial, so the Wilson interval of J, mapped
  through 2J / (1 + J), is an interval for F1 with the same small-count behaviour as the
  other two. It is exact arithmetic (no sampling, no seed), always contains the observed F1,
  reaches 1 when nothing went wrong and 0 when nothing went right. The Bayesian alternative
  (Dirichlet(1, 1, 1) posterior over (real, false, missed)) gives nearly the same bounds for
  moderate counts (a unit test checks this), but its equal-tailed interval excludes the
  observed F1 when there were no errors (5 real, 0 false, 0 missed: F1 = 1, interval below
  0.99), which a report cannot show to a reader;
- "enough": a figure resting on fewer than ``min_outcomes`` (default ``MIN_OUTCOMES`` = 5)
  outcomes keeps its value and interval but is flagged ``enough=False``; on none at all its
  value and interval are None (never 0/0 = 0 % or 100 %);
- lead time from the first alerting window to the failure, for real faults: median,
  quartiles, n. A real fault without a failure time (``failed_at`` None: every
  ``preventive_action``, and confirmed failures nobody dated) uses its resolution time
  instead, and ``LeadTime.from_resolution`` says how many did. A negative lead time (the
  alert came after the failure) is kept: it is what happened;
- false alarms per asset per month, when the number of assets in the group is known;
- cost in technician visits: every counted alert is a visit, every false alarm a wasted one;
  ``visit_cost`` turns visits into money;
- open maintenance tickets; drift (open retraining tickets, active drift conditions).

The verdict (``decide``), per group except the months, against ``target_f1`` (the model
card's test F1, or a configured target)
-------------------------------------------------------------------------------------------
In this order, the first rule that applies:

1. **retrain** when a retraining ticket is open for the group (the agents' drift
   evidence already says the model's inputs have moved beyond its training);
2. **retrain** when F1 rests on enough outcomes and the upper bound of its interval is
   below the target: even the most favourable reading misses it;
3. **watch** when F1 rests on enough outcomes and is below the target while its interval
   still includes it: more outcomes will tell;
4. **watch** when drift conditions are active (the inputs are moving, the outcomes may
   follow);
5. **not enough data** when F1 rests on fewer than ``min_outcomes`` outcomes;
6. **keep** otherwise: F1 at or above the target, and no drift.

Examples
--------
>>> from datetime import UTC, datetime
>>> t = datetime(2026, 3, 2, tzinfo=UTC)
>>> facts = [TicketFact(id=i, kind="maintenance", site="p1", line="l1", asset=f"e{i}",
...                     model_name="m", model_version="1", opened_at=t, resolved_at=t,
...                     outcome="confirmed_failure" if i < 8 else "no_fault_found")
...          for i in range(10)]
>>> f = compute(facts, since=datetime(2026, 3, 1, tzinfo=UTC),
...             until=datetime(2026, 4, 1, tzinfo=UTC), target_f1=0.8)
>>> f.overall.real, f.overall.false_alarms, round(f.overall.precision.value, 2)
(8, 2, 0.8)
>>> f.overall.verdict.action
'keep'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from aggregator.outcomes import OUTCOMES, classify

if TYPE_CHECKING:
    from aggregator.operations import ModelOperations

__all__ = [
    "DAYS_PER_MONTH",
    "MIN_OUTCOMES",
    "Z95",
    "Action",
    "AssetCount",
    "Cost",
    "Dimension",
    "Drift",
    "DriftCondition",
    "EstimateCheck",
    "Figure",
    "GatewayEstimate",
    "Group",
    "GroupFigures",
    "HealthFigures",
    "HealthVerdict",
    "LeadTime",
    "MissedFailure",
    "TicketFact",
    "TicketLike",
    "compute",
    "decide",
    "f1_figure",
    "f1_interval",
    "first_alert",
    "proportion",
    "wilson",
]

Z95 = 1.959963984540054  # two-sided 95 %: the 0.975 quantile of the standard normal
MIN_OUTCOMES = 5  # fewer outcomes than this: a figure is shown but flagged enough=False
DAYS_PER_MONTH = 365.2425 / 12  # the mean Gregorian month, for "per month" rates

Dimension = Literal["all", "model", "site", "line", "month"]
Action = Literal["keep", "watch", "retrain", "not_enough_data"]


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} is a naive datetime: pass timezone-aware (UTC) values")


# --------------------------------------------------------------------------- inputs


class TicketLike(Protocol):
    """What ``TicketFact.from_ticket`` reads: the attributes of ``db.Ticket``."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def site(self) -> str: ...
    @property
    def line(self) -> str: ...
    @property
    def asset(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def opened_at(self) -> datetime: ...
    @property
    def resolved_at(self) -> datetime | None: ...
    @property
    def outcome(self) -> str | None: ...
    @property
    def evidence(self) -> dict[str, Any]: ...


def first_alert(evidence: Mapping[str, Any], opened_at: datetime) -> datetime:
    """When the first alerting window in a ticket's evidence ended, or ``opened_at`` if
    that is earlier (or no window alerted).

    The evidence keeps only the newest ``tickets.MAX_EVIDENCE_SCORES`` windows, so for a
    ticket escalated for weeks this is a late bound of the true first alert.

    >>> from datetime import UTC, datetime
    >>> ev = {"scores": [{"window_end": "2026-01-01T10:00:00+00:00", "score": 0.2,
    ...                   "alert": False},
    ...                  {"window_end": "2026-01-01T11:00:00+00:00", "score": 0.9,
    ...                   "alert": True}]}
    >>> first_alert(ev, datetime(2026, 1, 1, 12, tzinfo=UTC)).hour
    11
    """
    earliest = opened_at
    for score in evidence.get("scores", []) or []:
        if not isinstance(score, Mapping) or not score.get("alert"):
            continue
        try:
            end = datetime.fromisoformat(str(score["window_end"]))
        except (KeyError, ValueError):
            continue
        end = end if end.tzinfo is not None else end.replace(tzinfo=UTC)
        earliest = min(earliest, end)
    return earliest


@dataclass(frozen=True, slots=True)
class TicketFact:
    """One ticket as model health sees it.

    ``first_alert_at``: when the first alerting window was seen (None: ``opened_at``).
    ``failed_at``: when the failure happened, for real faults (None: ``resolved_at`` is
    used for the lead time, and the figures say how often).
    """

    id: int
    kind: str
    site: str
    line: str
    asset: str
    model_name: str
    model_version: str
    opened_at: datetime
    first_alert_at: datetime | None = None
    resolved_at: datetime | None = None
    outcome: str | None = None
    failed_at: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("opened_at", "first_alert_at", "resolved_at", "failed_at"):
            _aware(f"ticket {self.id}: {name}", getattr(self, name))
        if self.outcome is not None:
            if self.outcome not in OUTCOMES:
                raise ValueError(f"ticket {self.id}: outcome must be one of {OUTCOMES}, "
                                 f"got {self.outcome!r}")
            if self.resolved_at is None:
                raise ValueError(f"ticket {self.id} has an outcome but no resolved_at")

    @property
    def alerted_at(self) -> datetime:
        """``first_alert_at``, or ``opened_at`` when it is not known."""
        return self.first_alert_at if self.first_alert_at is not None else self.opened_at

    @classmethod
    def from_ticket(cls, ticket: TicketLike, *, failed_at: datetime | None = None
                    ) -> TicketFact:
        """The facts of a stored ticket; the first alert comes from its evidence."""
        return cls(id=ticket.id, kind=ticket.kind, site=ticket.site, line=ticket.line,
                   asset=ticket.asset, model_name=ticket.model_name,
                   model_version=ticket.model_version, opened_at=ticket.opened_at,
                   first_alert_at=first_alert(ticket.evidence or {}, ticket.opened_at),
                   resolved_at=ticket.resolved_at, outcome=ticket.outcome,
                   failed_at=failed_at)


@dataclass(frozen=True, slots=True)
class MissedFailure:
    """A failure that happened without a maintenance ticket warning of it.

    Without ``model_name``/``model_version`` it counts everywhere except in the per-model
    groups (``HealthFigures.unattributed_missed`` says how many).
    """

    asset: str
    site: str
    line: str
    at: datetime
    model_name: str | None = None
    model_version: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        _aware(f"missed failure of {self.asset}: at", self.at)


@dataclass(frozen=True, slots=True)
class AssetCount:
    """``count`` assets monitored; None for a field means "not broken down by it".

    Per group, the count is the sum of the rows that match it, and unknown (None) if some
    row lacks the group's field: ``[AssetCount(100)]`` gives the whole fleet only;
    one row per (site, line, model version) gives every group.
    """

    count: int
    site: str | None = None
    line: str | None = None
    model_name: str | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"asset count must be >= 0, got {self.count}")


@dataclass(frozen=True, slots=True)
class DriftCondition:
    """A drift condition an agent reported (``db.AssetCondition``): active from ``since``
    until ``ended_at`` (None: still active). ``line`` None means the whole site."""

    asset: str
    site: str
    line: str | None
    model_name: str
    model_version: str
    since: datetime
    ended_at: datetime | None = None
    monitor: str = ""

    def __post_init__(self) -> None:
        _aware(f"condition on {self.asset}: since", self.since)
        _aware(f"condition on {self.asset}: ended_at", self.ended_at)


# --------------------------------------------------------------------------- groups


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


@dataclass(frozen=True, slots=True)
class Group:
    """What a set of figures is about. Build it with the class methods.

    ``key`` is stable and machine-readable (``all``, ``model@version``, ``site``,
    ``site/line``, ``YYYY-MM``); ``label`` is for people.
    """

    dimension: Dimension
    site: str | None = None
    line: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    month: str | None = None  # "YYYY-MM"
    key: str = field(init=False, compare=False)
    label: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.dimension == "all":
            key = label = "all"
        elif self.dimension == "model":
            key = f"{self.model_name}@{self.model_version}"
            label = f"{self.model_name} {self.model_version}"
        elif self.dimension == "site":
            key = label = str(self.site)
        elif self.dimension == "line":
            key, label = f"{self.site}/{self.line}", f"{self.line} ({self.site})"
        else:
            key = str(self.month)
            year, month = key.split("-")
            label = f"{_MONTHS[int(month) - 1]} {year}"
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "label", label)

    @classmethod
    def overall(cls) -> Group:
        return cls("all")

    @classmethod
    def of_model(cls, model_name: str, model_version: str) -> Group:
        return cls("model", model_name=model_name, model_version=model_version)

    @classmethod
    def of_site(cls, site: str) -> Group:
        return cls("site", site=site)

    @classmethod
    def of_line(cls, site: str, line: str) -> Group:
        return cls("line", site=site, line=line)

    @classmethod
    def of_month(cls, year: int, month: int) -> Group:
        return cls("month", month=f"{year:04d}-{month:02d}")

    def matches(self, site: str, line: str | None, model_name: str | None,
                model_version: str | None) -> bool:
        """Whether something at (site, line) judged by this model falls in the group (the
        time window aside). A line of None or ``*`` stands for every line of its site."""
        if self.dimension == "model":
            return (model_name, model_version) == (self.model_name, self.model_version)
        if self.dimension == "site":
            return site == self.site
        if self.dimension == "line":
            return site == self.site and (line in (None, "*") or line == self.line)
        return True


@dataclass(frozen=True, slots=True)
class GatewayEstimate:
    """The agents' label-free estimate for one group (another module aggregates them per
    group); any metric may be missing, bounds are its 95 % interval."""

    group: Group
    f1: float | None = None
    f1_low: float | None = None
    f1_high: float | None = None
    precision: float | None = None
    precision_low: float | None = None
    precision_high: float | None = None
    recall: float | None = None
    recall_low: float | None = None
    recall_high: float | None = None
    windows: int | None = None  # how many scored windows it rests on
    at: datetime | None = None  # when it was computed
    # Windows judged against reported failures (``aggregator.estimates``): alerts right,
    # alerts false, positives missed; None when none could be judged yet.
    window_real: int | None = None
    window_false: int | None = None
    window_missed: int | None = None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Figure:
    """A proportion-like figure with its 95 % interval.

    ``n`` is the number of outcomes it rests on; ``enough`` is ``n >= min_outcomes``;
    ``value``, ``low`` and ``high`` are None when ``n`` is 0.
    """

    value: float | None
    low: float | None
    high: float | None
    n: int
    enough: bool


@dataclass(frozen=True, slots=True)
class LeadTime:
    """Time from first alert to failure for real faults, in seconds (None when n is 0).

    ``from_resolution``: how many of the n had no failure time, so their resolution time
    was used.
    """

    n: int
    median_s: float | None
    q1_s: float | None
    q3_s: float | None
    from_resolution: int


@dataclass(frozen=True, slots=True)
class Cost:
    """Technician visits: every counted alert is one, every false alarm a wasted one.
    Money (``total``, ``wasted``) only when a ``visit_cost`` was given."""

    visits: int
    wasted_visits: int
    visit_cost: float | None
    currency: str
    total: float | None
    wasted: float | None


@dataclass(frozen=True, slots=True)
class Drift:
    """Drift facts of a group, at the end of its window: open retraining tickets (ids),
    active drift conditions and the assets they are on; ``started``: conditions that began
    inside the window."""

    retraining_tickets: tuple[int, ...]
    conditions: int
    assets: int
    started: int


@dataclass(frozen=True, slots=True)
class EstimateCheck:
    """A gateway estimate next to the realised figure. ``agrees`` is None while the
    realised figure rests on too few outcomes; otherwise True when the estimate's interval
    overlaps the realised one (or, without an interval, its value lies inside it).

    ``basis`` ``windows``: realised per scored window against reported failures, the
    estimate's own unit (``aggregator.estimates``); ``tickets``: no window could be judged
    yet, so the ticket outcomes stand in, which judge whole machines (a ticket covers a
    run of alerting windows) and may differ for that reason alone."""

    metric: Literal["precision", "recall", "f1"]
    estimated: float
    low: float | None
    high: float | None
    realised: Figure
    agrees: bool | None
    basis: Literal["windows", "tickets"] = "tickets"


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """What to do with the model: ``action``, and why in words (see the module docstring
    for the rule)."""

    action: Action
    reason: str


@dataclass(frozen=True, slots=True)
class GroupFigures:
    """Every figure of one group, over [start, end)."""

    group: Group
    start: datetime
    end: datetime
    alerts: int  # maintenance tickets resolved with a counted outcome: real + false_alarms
    real: int
    false_alarms: int
    missed: int
    not_counted: int  # resolved as superseded or other
    open: int  # maintenance tickets open at ``end``
    precision: Figure
    recall: Figure
    f1: Figure
    lead_time: LeadTime
    assets: int | None
    months: float  # length of [start, end) in mean months
    false_alarms_per_asset_month: float | None
    cost: Cost
    missed_failures: tuple[MissedFailure, ...]
    drift: Drift
    estimates: tuple[EstimateCheck, ...]
    verdict: HealthVerdict | None  # None for the months

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class HealthFigures:
    """The answer of ``compute``: the whole period, then its breakdowns."""

    since: datetime
    until: datetime
    target_f1: float
    target_source: str
    min_outcomes: int
    overall: GroupFigures
    by_model: tuple[GroupFigures, ...]
    by_site: tuple[GroupFigures, ...]
    by_line: tuple[GroupFigures, ...]
    by_month: tuple[GroupFigures, ...]
    unattributed_missed: int  # missed failures without a model: in no per-model group
    # How each model version ran (agents, latency, scores, findings): aggregator.operations
    operations: tuple[ModelOperations, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: datetimes as ISO 8601 strings, tuples as lists."""
        return _plain(self)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for ``k`` successes in ``n`` trials; None for ``n == 0``.

    >>> [round(b, 3) for b in wilson(31, 40)]
    [0.625, 0.877]
    >>> wilson(5, 5)[1], wilson(0, 0)
    (1.0, None)
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # The exact bounds at k = 0 and k = n are 0 and 1; floating point would miss by 1e-16.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def f1_interval(real: int, false: int, missed: int, z: float = Z95
                ) -> tuple[float, float] | None:
    """95 % interval for F1: the Wilson interval of J = real / (real + false + missed)
    mapped through F1 = 2J / (1 + J) (see the module docstring); None without outcomes.

    >>> [round(b, 3) for b in f1_interval(31, 9, 4)]
    [0.716, 0.9]
    >>> f1_interval(5, 0, 0)[1], f1_interval(0, 0, 0)
    (1.0, None)
    """
    bounds = wilson(real, real + false + missed, z)
    if bounds is None:
        return None
    low, high = bounds
    return 2 * low / (1 + low), 2 * high / (1 + high)


def proportion(k: int, n: int, min_outcomes: int = MIN_OUTCOMES) -> Figure:
    """k of n as a ``Figure`` (Wilson interval).

    >>> proportion(2, 2).enough, proportion(0, 0).value
    (False, None)
    """
    bounds = wilson(k, n)
    if bounds is None:
        return Figure(None, None, None, 0, False)
    return Figure(k / n, bounds[0], bounds[1], n, n >= min_outcomes)


def f1_figure(real: int, false: int, missed: int, min_outcomes: int = MIN_OUTCOMES
              ) -> Figure:
    """F1 of these counts as a ``Figure`` (see ``f1_interval``)."""
    n = real + false + missed
    bounds = f1_interval(real, false, missed)
    if bounds is None:
        return Figure(None, None, None, 0, False)
    return Figure(2 * real / (2 * real + false + missed), bounds[0], bounds[1], n,
                  n >= min_outcomes)


def _lead_time(real: Sequence[TicketFact]) -> LeadTime:
    seconds = []
    from_resolution = 0
    for t in real:
        end = t.failed_at
        if end is None:
            end = t.resolved_at
            from_resolution += 1
        assert end is not None  # a real fault is resolved (TicketFact checks)
        seconds.append((end - t.alerted_at).total_seconds())
    if not seconds:
        return LeadTime(0, None, None, None, 0)
    q1, median, q3 = (float(v) for v in np.percentile(seconds, [25, 50, 75]))
    return LeadTime(len(seconds), median, q1, q3, from_resolution)


# --------------------------------------------------------------------------- verdict


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def decide(f1: Figure, drift: Drift, target_f1: float, min_outcomes: int = MIN_OUTCOMES
           ) -> HealthVerdict:
    """The verdict for one group (the rule is in the module docstring).

    >>> few = f1_figure(2, 1, 0)
    >>> decide(few, Drift((), 0, 0, 0), 0.8).action
    'not_enough_data'
    >>> decide(f1_figure(3, 12, 5), Drift((), 0, 0, 0), 0.8).action
    'retrain'
    """
    if drift.retraining_tickets:
        ids = ", ".join(f"#{i}" for i in drift.retraining_tickets)
        return HealthVerdict(
            "retrain",
            f"a retraining ticket is open ({ids}): its evidence says why (the model's "
            "inputs moved beyond what it was trained on, or its F1 fell below the target)")
    if f1.enough and f1.value is not None and f1.low is not None and f1.high is not None:
        if f1.high < target_f1:
            return HealthVerdict(
                "retrain",
                f"F1 is {f1.value:.2f} and at most {f1.high:.2f} (95 % interval), below the "
                f"target {target_f1:.2f}: the model no longer does what it was built to do")
        if f1.value < target_f1:
            return HealthVerdict(
                "watch",
                f"F1 is {f1.value:.2f}, below the target {target_f1:.2f}, but the 95 % "
                f"interval ({f1.low:.2f} to {f1.high:.2f}) still includes the target: more "
                "outcomes will tell")
    if drift.conditions:
        judged = ("F1 meets the target so far" if f1.enough
                  else "too few outcomes yet to judge F1")
        return HealthVerdict(
            "watch",
            f"{_plural(drift.conditions, 'drift condition')} active on "
            f"{_plural(drift.assets, 'machine')}: the model's inputs are moving; {judged}")
    if not f1.enough or f1.value is None or f1.low is None or f1.high is None:
        return HealthVerdict(
            "not_enough_data",
            f"only {_plural(f1.n, 'counted outcome')} so far (alerts resolved as real or "
            f"false, and missed failures); at least {min_outcomes} are needed to judge F1")
    return HealthVerdict(
        "keep",
        f"F1 is {f1.value:.2f} (likely between {f1.low:.2f} and {f1.high:.2f}), at or above "
        f"the target {target_f1:.2f}, and no drift is active")


# --------------------------------------------------------------------------- compute


def _is_open(opened_at: datetime, resolved_at: datetime | None, at: datetime) -> bool:
    return opened_at < at and (resolved_at is None or resolved_at >= at)


def _months(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds() / 86_400 / DAYS_PER_MONTH)


def _month_windows(since: datetime, until: datetime) -> list[tuple[Group, datetime, datetime]]:
    out = []
    first = since.astimezone(UTC)
    year, month = first.year, first.month
    while True:
        start = datetime(year, month, 1, tzinfo=UTC)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        end = datetime(year, month, 1, tzinfo=UTC)
        if start >= until:
            break
        out.append((Group.of_month(start.year, start.month), max(start, since),
                    min(end, until)))
    return out


def _assets(group: Group, rows: Sequence[AssetCount]) -> int | None:
    if not rows:
        return None
    if group.dimension in ("all", "month"):
        return sum(r.count for r in rows)
    needed: Callable[[AssetCount], bool] = {
        "model": lambda r: r.model_name is not None and r.model_version is not None,
        "site": lambda r: r.site is not None,
        "line": lambda r: r.site is not None and r.line is not None,
    }[group.dimension]
    if not all(needed(r) for r in rows):
        return None
    return sum(r.count for r in rows if r.site is not None
               and group.matches(r.site, r.line, r.model_name, r.model_version))


def _check(metric: Literal["precision", "recall", "f1"], value: float | None,
           low: float | None, high: float | None, realised: Figure,
           basis: Literal["windows", "tickets"]) -> EstimateCheck | None:
    if value is None:
        return None
    agrees: bool | None = None
    if realised.enough and realised.low is not None and realised.high is not None:
        if low is not None and high is not None:
            agrees = low <= realised.high and realised.low <= high
        else:
            agrees = realised.low <= value <= realised.high
    return EstimateCheck(metric, value, low, high, realised, agrees, basis)


@dataclass(frozen=True, slots=True)
class _Inputs:
    tickets: tuple[TicketFact, ...]
    missed: tuple[MissedFailure, ...]
    assets: tuple[AssetCount, ...]
    conditions: tuple[DriftCondition, ...]
    estimates: Mapping[Group, GatewayEstimate]
    target_f1: float
    visit_cost: float | None
    currency: str
    min_outcomes: int


def _group(group: Group, start: datetime, end: datetime, data: _Inputs) -> GroupFigures:
    def inside(t: TicketFact | MissedFailure | DriftCondition) -> bool:
        return group.matches(t.site, t.line, t.model_name, t.model_version)

    maintenance = [t for t in data.tickets if t.kind == "maintenance" and inside(t)]
    resolved = [t for t in maintenance
                if t.resolved_at is not None and start <= t.resolved_at < end]
    real = [t for t in resolved if classify(t.outcome) == "real"]
    false = [t for t in resolved if classify(t.outcome) == "false"]
    missed = tuple(sorted((m for m in data.missed if start <= m.at < end and inside(m)),
                          key=lambda m: (m.at, m.site, m.asset)))
    n_real, n_false, n_missed = len(real), len(false), len(missed)
    retraining = tuple(sorted(t.id for t in data.tickets if t.kind == "retraining"
                              and inside(t) and _is_open(t.opened_at, t.resolved_at, end)))
    conditions = [c for c in data.conditions if inside(c)]
    active = [c for c in conditions if _is_open(c.since, c.ended_at, end)]
    drift = Drift(retraining, len(active), len({(c.site, c.asset) for c in active}),
                  sum(start <= c.since < end for c in conditions))
    precision = proportion(n_real, n_real + n_false, data.min_outcomes)
    recall = proportion(n_real, n_real + n_missed, data.min_outcomes)
    f1 = f1_figure(n_real, n_false, n_missed, data.min_outcomes)
    assets = _assets(group, data.assets)
    months = _months(start, end)
    rate = n_false / (assets * months) if assets and months > 0 else None
    alerts = n_real + n_false
    cost = Cost(alerts, n_false, data.visit_cost, data.currency,
                None if data.visit_cost is None else alerts * data.visit_cost,
                None if data.visit_cost is None else n_false * data.visit_cost)
    estimate = data.estimates.get(group)
    checks: tuple[EstimateCheck, ...] = ()
    if estimate is not None:
        basis: Literal["windows", "tickets"] = "tickets"
        real_p, real_r, real_f = precision, recall, f1
        if estimate.window_real is not None:
            basis = "windows"
            hit, miss = estimate.window_real, estimate.window_missed or 0
            wrong = estimate.window_false or 0
            real_p = proportion(hit, hit + wrong, data.min_outcomes)
            real_r = proportion(hit, hit + miss, data.min_outcomes)
            real_f = f1_figure(hit, wrong, miss, data.min_outcomes)
        found = (_check("precision", estimate.precision, estimate.precision_low,
                        estimate.precision_high, real_p, basis),
                 _check("recall", estimate.recall, estimate.recall_low, estimate.recall_high,
                        real_r, basis),
                 _check("f1", estimate.f1, estimate.f1_low, estimate.f1_high, real_f, basis))
        checks = tuple(c for c in found if c is not None)
    verdict = (None if group.dimension == "month"
               else decide(f1, drift, data.target_f1, data.min_outcomes))
    return GroupFigures(
        group=group, start=start, end=end, alerts=alerts, real=n_real, false_alarms=n_false,
        missed=n_missed, not_counted=len(resolved) - alerts,
        open=sum(_is_open(t.opened_at, t.resolved_at, end) for t in maintenance),
        precision=precision, recall=recall, f1=f1, lead_time=_lead_time(real), assets=assets,
        months=months, false_alarms_per_asset_month=rate, cost=cost, missed_failures=missed,
        drift=drift, estimates=checks, verdict=verdict)


def _present(data: _Inputs, since: datetime, until: datetime
             ) -> tuple[set[Group], set[Group], set[Group]]:
    """Model versions, sites and lines that had anything to show in the period."""
    models: set[Group] = set()
    sites: set[Group] = set()
    lines: set[Group] = set()

    def add(site: str | None, line: str | None, name: str | None, version: str | None
            ) -> None:
        if name is not None and version is not None:
            models.add(Group.of_model(name, version))
        if site is not None:
            sites.add(Group.of_site(site))
            if line is not None and line != "*":
                lines.add(Group.of_line(site, line))

    for t in data.tickets:
        if t.kind not in ("maintenance", "retraining"):
            continue
        resolved_inside = t.resolved_at is not None and since <= t.resolved_at < until
        if resolved_inside or _is_open(t.opened_at, t.resolved_at, until):
            add(t.site, t.line, t.model_name, t.model_version)
    for m in data.missed:
        if since <= m.at < until:
            add(m.site, m.line, m.model_name, m.model_version)
    for c in data.conditions:
        if c.since < until and (c.ended_at is None or c.ended_at >= since):
            add(c.site, c.line, c.model_name, c.model_version)
    for a in data.assets:
        add(a.site, a.line, a.model_name, a.model_version)
    for group in data.estimates:
        {"model": models, "site": sites, "line": lines}.get(group.dimension, set()).add(group)
    return models, sites, lines


def compute(
    tickets: Iterable[TicketFact],
    missed: Iterable[MissedFailure] = (),
    *,
    since: datetime,
    until: datetime,
    target_f1: float,
    target_source: str = "",
    assets: Iterable[AssetCount] = (),
    conditions: Iterable[DriftCondition] = (),
    estimates: Iterable[GatewayEstimate] = (),
    visit_cost: float | None = None,
    currency: str = "",
    min_outcomes: int = MIN_OUTCOMES,
) -> HealthFigures:
    """Model health over [since, until), in all and per model version, site, line and month.

    Parameters
    ----------
    tickets
        Tickets of every kind that were open at some point of the period (maintenance
        tickets are the alerts; open retraining tickets are drift facts; others are
        ignored). Tickets resolved before ``since`` may be passed: they are left out.
    missed
        Failures reported without a ticket before them.
    since, until
        The period, timezone-aware.
    target_f1
        What F1 should be: the model card's test F1 or a configured target, in (0, 1].
    target_source
        Where the target comes from, in words, for the report ("the model card's test F1").
    assets
        Assets monitored (see ``AssetCount``); none: no false-alarm rate per asset.
    conditions
        Drift conditions overlapping the period (active ones at ``until`` make a group
        "watch").
    estimates
        The agents' label-free estimates, at most one per group.
    visit_cost, currency
        Cost of one technician visit; None: visits are counted, not priced.
    min_outcomes
        Below this many outcomes a figure is flagged ``enough=False``.
    """
    _aware("since", since)
    _aware("until", until)
    if not since < until:
        raise ValueError(f"since ({since.isoformat()}) must be before until "
                         f"({until.isoformat()})")
    if not 0 < target_f1 <= 1:
        raise ValueError(f"target_f1 must be in (0, 1], got {target_f1!r}")
    if min_outcomes < 1:
        raise ValueError(f"min_outcomes must be >= 1, got {min_outcomes!r}")
    if visit_cost is not None and visit_cost < 0:
        raise ValueError(f"visit_cost must be >= 0, got {visit_cost!r}")
    by_group: dict[Group, GatewayEstimate] = {}
    for estimate in estimates:
        if estimate.group in by_group:
            raise ValueError(f"two gateway estimates for group {estimate.group.key!r}")
        by_group[estimate.group] = estimate
    data = _Inputs(tuple(tickets), tuple(missed), tuple(assets), tuple(conditions), by_group,
                   target_f1, visit_cost, currency, min_outcomes)
    models, sites, lines = _present(data, since, until)

    def each(groups: set[Group]) -> tuple[GroupFigures, ...]:
        return tuple(_group(g, since, until, data) for g in sorted(groups, key=lambda g: g.key))

    return HealthFigures(
        since=since, until=until, target_f1=target_f1, target_source=target_source,
        min_outcomes=min_outcomes, overall=_group(Group.overall(), since, until, data),
        by_model=each(models), by_site=each(sites), by_line=each(lines),
        by_month=tuple(_group(g, start, end, data)
                       for g, start, end in _month_windows(since, until)),
        unattributed_missed=sum(since <= m.at < until
                                and (m.model_name is None or m.model_version is None)
                                for m in data.missed))
