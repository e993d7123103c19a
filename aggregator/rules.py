"""Ticket rules: pure functions and small stateful units, no I/O.

``KOfN`` is the hysteresis: one window over the threshold is noise, k of the last n is a
trend worth a technician's time. ``MaintenanceRule`` keeps one ``KOfN`` per key and the
recent scores that become a ticket's evidence. Asset names are only unique within a site,
so ``ingest`` keys it by ``(site, asset)``: two plants' ``engine-001`` never share a window.
Persistence is the caller's job (``ingest`` stores ``MaintenanceRule.windows(key)`` in SQL
and ``restore``s it), so a restarted aggregator, or another replica, continues exactly
where the last one stopped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

__all__ = [
    "SENSOR_DETECTORS", "ConditionLike", "KOfN", "MaintenanceRule", "ScoredWindow", "Verdict",
    "k_of_n_triggers", "poisson_tail", "triage",
]


class KOfN:
    """Fires when at least ``k`` of the last ``n`` updates were alerts.

    Parameters
    ----------
    k
        Alerts needed, ``1 <= k <= n``.
    n
        Length of the sliding window of updates.

    Examples
    --------
    >>> rule = KOfN(k=2, n=3)
    >>> for alert in [True, False, False, True]:
    ...     rule.update(alert)
    ...     print(rule.triggered, end=" ")
    False False False False
    >>> rule.update(True)
    >>> rule.triggered, rule.alerts
    (True, 2)
    """

    def __init__(self, k: int = 3, n: int = 5) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an integer in 1..n ({n}), got {k!r}")
        self.k = k
        self.n = n
        self._reset()

    def _reset(self) -> None:
        self._window: deque[bool] = deque(maxlen=self.n)
        self._alerts = 0

    def update(self, alert: bool) -> None:
        """Add one window's verdict, forgetting the oldest beyond ``n``."""
        if len(self._window) == self.n and self._window[0]:
            self._alerts -= 1
        self._window.append(bool(alert))
        self._alerts += bool(alert)

    @property
    def alerts(self) -> int:
        """Alerts among the last ``n`` updates."""
        return self._alerts

    @property
    def triggered(self) -> bool:
        """True when at least ``k`` of the last ``n`` updates were alerts."""
        return self._alerts >= self.k


@dataclass(frozen=True, slots=True)
class ScoredWindow:
    """One window as a rule sees it; also the unit of ticket evidence."""

    window_end: datetime
    score: float
    alert: bool

    def to_json(self) -> dict[str, Any]:
        return {"window_end": self.window_end.isoformat(), "score": self.score, "alert": self.alert}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoredWindow:
        end = datetime.fromisoformat(data["window_end"])
        return cls(end, float(data["score"]), bool(data["alert"]))


class MaintenanceRule:
    """k-of-n alert windows per key: the trigger for a maintenance ticket.

    A key is any hashable naming one monitored asset; ``ingest`` uses ``(site, asset)``,
    because the same asset name can exist at several sites and each must keep its own
    window. Windows must come in ``window_end`` order per key; a window not newer than the
    last one seen for its key is ignored, so a redelivered or replayed prediction is never
    counted twice (nor escalates a ticket again).

    Parameters
    ----------
    k, n
        As in :class:`KOfN`.

    Examples
    --------
    >>> from datetime import UTC, datetime, timedelta
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rule = MaintenanceRule(k=2, n=3)
    >>> pump = ("plant1", "pump-1")
    >>> [rule.update(pump, ScoredWindow(t0 + timedelta(minutes=i), s, s >= 0.8))
    ...  for i, s in enumerate([0.9, 0.1, 0.95])]
    [False, False, True]
    >>> rule.update(pump, ScoredWindow(t0, 0.99, True))  # stale: ignored
    False
    >>> rule.triggered(pump), rule.triggered(("plant2", "pump-1"))  # another site's pump-1
    (True, False)
    >>> [w.score for w in rule.windows(pump)]
    [0.9, 0.1, 0.95]
    """

    name = "maintenance"

    def __init__(self, k: int = 3, n: int = 5) -> None:
        KOfN(k, n)  # validates k and n with the same messages
        self.k = k
        self.n = n
        self._reset()

    def _reset(self) -> None:
        self._counters: dict[Hashable, KOfN] = {}
        self._windows: dict[Hashable, deque[ScoredWindow]] = {}

    def restore(self, key: Hashable, windows: Iterable[ScoredWindow]) -> None:
        """Replace the key's state by replaying stored windows (oldest first)."""
        self._counters.pop(key, None)
        self._windows.pop(key, None)
        for window in windows:
            self.update(key, window)

    def update(self, key: Hashable, window: ScoredWindow) -> bool:
        """Feed one window; True when it was new and leaves the key triggered."""
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = KOfN(self.k, self.n)
            self._windows[key] = deque(maxlen=self.n)
        recent = self._windows[key]
        if recent and window.window_end <= recent[-1].window_end:
            return False
        counter.update(window.alert)
        recent.append(window)
        return counter.triggered

    def triggered(self, key: Hashable) -> bool:
        counter = self._counters.get(key)
        return counter is not None and counter.triggered

    def windows(self, key: Hashable) -> list[ScoredWindow]:
        """The last ``n`` windows of the key, oldest first (the evidence)."""
        return list(self._windows.get(key, ()))

    def windows_view(self, key: Hashable) -> Sequence[ScoredWindow]:
        """The same windows without a copy; valid until the next ``update`` of the key."""
        return self._windows.get(key, ())


def k_of_n_triggers(before: Sequence[bool], alerts: Sequence[bool], k: int,
                    n: int) -> list[int]:
    """Which of ``alerts`` (new windows, in order, after the windows ``before``) leave k of
    the last n windows alerting: their indexes in ``alerts``. The same answer as feeding
    them one by one to a :class:`KOfN` that saw ``before``, without an object per window.

    >>> k_of_n_triggers([True, False], [True, True, False, True, True], k=3, n=4)
    [1, 3, 4]
    >>> k_of_n_triggers([], [True, True, True], k=3, n=5)
    [2]
    """
    both = [*before[-n:], *alerts]
    base = len(both) - len(alerts)
    count = sum(both[max(0, base - n):base])  # the n windows before the first new one
    out = []
    for i in range(base, len(both)):
        count += both[i]
        if i - n >= 0:
            count -= both[i - n]
        if count >= k:
            out.append(i - base)
    return out


# What only a sensor (or its wiring) does: the sample itself is wrong.
SENSOR_DETECTORS = ("nan", "impossible", "stuck", "step")


class ConditionLike(Protocol):
    """What triage reads of an active condition (``db.AssetCondition`` has it)."""

    @property
    def detector(self) -> str: ...

    @property
    def channels(self) -> list[str]: ...

    @property
    def since(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an asset's active conditions say a person should do.

    ``kind`` is ``"sensor"`` (check these channels), ``"foreign"`` (the asset behaves unlike
    anything the model was trained on) or None (nothing to say); ``since`` is when the
    earliest condition behind it began.
    """

    kind: Literal["sensor", "foreign"] | None
    channels: tuple[str, ...] = ()
    since: datetime | None = None


def triage(conditions: Sequence[ConditionLike], sensor_channels: int = 2) -> Verdict:
    """Sort an asset's active conditions into a verdict.

    A few channels misbehaving (stuck, offset, NaN, impossible values, or leaving the
    training range) while the others agree is a sensor to check. Many channels leaving the
    range together is the machine, or the way it is run, moving away from everything the
    model knows. Features that read a channel already suspected of a sensor fault are
    explained by that fault.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> from types import SimpleNamespace as C
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> offset = [C(detector="step", channels=["s11"], since=t),
    ...           C(detector="envelope", channels=["s11"], since=t)]
    >>> triage(offset).kind, triage(offset).channels
    ('sensor', ('s11',))
    >>> regime = [C(detector="envelope", channels=[f"s{i}"], since=t) for i in range(9)]
    >>> triage(regime).kind
    'foreign'
    >>> triage([]).kind is None
    True
    """
    sensors = {c for x in conditions if x.detector in SENSOR_DETECTORS for c in x.channels}
    moved = {c for x in conditions if x.detector == "envelope" for c in x.channels} - sensors
    if len(sensors) > sensor_channels:
        # Many channels failing at once is not a sensor: the machine itself changed.
        moved |= sensors
        sensors = set()
    relevant = [x for x in conditions if set(x.channels) & (sensors | moved)]
    since = min((x.since for x in relevant), default=None)
    if len(moved) > sensor_channels:
        return Verdict("foreign", tuple(sorted(moved)), since)
    if sensors or moved:
        return Verdict("sensor", tuple(sorted(sensors | moved)), since)
    return Verdict(None)


def poisson_tail(observed: int, expected: float) -> float:
    """P(N >= observed) for N ~ Poisson(expected): how surprising a count of alarms is
    when the false-alarm budget expects ``expected`` of them.

    >>> round(poisson_tail(3, 0.1), 6)
    0.000155
    >>> poisson_tail(0, 2.0)
    1.0
    """
    if observed <= 0:
        return 1.0
    if expected <= 0:
        return 0.0
    below = sum(math.exp(k * math.log(expected) - expected - math.lgamma(k + 1))
                for k in range(observed))
    return max(0.0, 1.0 - below)
