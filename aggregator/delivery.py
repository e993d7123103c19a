"""Which of an agent's messages the aggregator holds: pure seq-range bookkeeping, no I/O.

Every agent numbers its data messages 0, 1, 2, ... (``Envelope.seq``, contiguous, across
restarts). A :class:`Ledger` follows one agent's numbering:

- ``stored_through``: every seq up to it is accounted for, either stored or reported
  undeliverable by the agent (-1: none yet; an agent first heard at seq 10 has a gap
  0..9, which is asked for like any other);
- ``top``: the highest seq accounted for; between the two, ``received`` ranges and the
  ``gaps`` (holes nothing has accounted for yet, each with the time it opened, so that a
  normal in-flight reorder is not asked for before the grace has passed).

A hole never grows: a seq beyond ``top`` opens a new one below it, and arrivals or
undeliverable reports only shrink, split or close holes. So each hole keeps the time its
original gap opened. The seqs reported undeliverable are not kept apart from the received
ones: both are "accounted for", and only the holes matter for what to ask again.

The ledger is stored as JSON (:meth:`Ledger.to_json`), so it survives restarts and is
shared by replicas; :func:`spread` and :func:`hour_of` place windows into the hourly
buckets completeness is measured on.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

__all__ = [
    "MAX_GAPS",
    "MAX_SPREAD_HOURS",
    "Accounted",
    "Arrival",
    "Gap",
    "Ledger",
    "Received",
    "apportion",
    "hour_of",
    "spread",
]

# More holes than this means something else is wrong (two gateways sharing an agent id,
# a broken numbering): the oldest ones are given up on rather than let the row grow
# without bound, and counted as such.
MAX_GAPS = 10_000
# An undeliverable span's windows are spread over at most this many hourly buckets.
MAX_SPREAD_HOURS = 24 * 92


class Arrival(StrEnum):
    """What one received seq was, against what the ledger held."""

    IN_ORDER = "in_order"  # right after everything accounted for
    GAP = "gap"  # beyond top + 1: the seqs in between are missing
    REORDER = "reorder"  # below top, into a hole: late, but not lost
    DUPLICATE = "duplicate"  # already accounted for
    RESET = "reset"  # already accounted for, yet newer than anything the agent sent


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first`` .. ``last`` (both included) not accounted for, open ``since``."""

    first: int
    last: int
    since: datetime

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Received:
    """What :meth:`Ledger.receive` found: the arrival's kind, the gap it opened (if
    any), the holes it closed and the holes given up on to stay under ``MAX_GAPS``."""

    arrival: Arrival
    opened: Gap | None = None
    filled: tuple[Gap, ...] = ()
    given_up: tuple[Gap, ...] = ()


@dataclass(frozen=True, slots=True)
class Accounted:
    """What :meth:`Ledger.account` found: how many of the span's seqs were newly
    accounted for (not received, not reported before), and the holes opened, closed and
    given up on."""

    seqs: int
    opened: Gap | None = None
    filled: tuple[Gap, ...] = ()
    given_up: tuple[Gap, ...] = ()


@dataclass(slots=True)
class Ledger:
    """One agent's seqs: see the module docstring.

    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> ledger = Ledger()
    >>> [ledger.receive(s, t).arrival.value for s in (0, 3, 1)]
    ['in_order', 'gap', 'reorder']
    >>> ledger.stored_through, ledger.received, [(g.first, g.last) for g in ledger.gaps]
    (1, [(3, 3)], [(2, 2)])
    """

    stored_through: int = -1
    top: int = -1
    highest: int = -1  # highest seq received (not merely reported undeliverable)
    latest_sent: datetime | None = None  # the newest envelope ts received
    received: list[tuple[int, int]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    # -- questions ----------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Seqs in open holes: neither received nor reported undeliverable (yet)."""
        return sum(g.size for g in self.gaps)

    def missing(self, now: datetime, grace_s: float, limit: int) -> list[Gap]:
        """The holes open for at least ``grace_s`` (lowest first, at most ``limit``):
        younger ones are usually a reorder still in flight."""
        cutoff = now - timedelta(seconds=grace_s)
        return [g for g in self.gaps if g.since <= cutoff][:limit]

    def next_due(self, now: datetime, grace_s: float) -> datetime | None:
        """When the next hole still inside its grace leaves it (None: none is)."""
        grace = timedelta(seconds=grace_s)
        return min((g.since + grace for g in self.gaps if g.since + grace > now), default=None)

    # -- changes ------------------------------------------------------------------------
    def receive(self, seq: int, now: datetime, sent_at: datetime | None = None) -> Received:
        """Record a message received with ``seq``, made at ``sent_at`` (its envelope's ts).

        A seq already accounted for is a duplicate, unless it was made after every message
        received so far: then the agent numbers from scratch (its outbox was replaced) and
        the ledger restarts from that seq (``Arrival.RESET``). A true duplicate (a message
        sent again after its msg_id left the dedupe window) carries its original time.
        """
        known = self.latest_sent
        if sent_at is not None and (known is None or sent_at > known):
            self.latest_sent = sent_at
        if seq <= self.top and not self._in_gap(seq):
            # With no time known (a ledger an upgrade started at the agent's last seq), a
            # stored seq proves nothing about the outbox: take it for a duplicate.
            if known is None or sent_at is None or sent_at <= known:
                return Received(Arrival.DUPLICATE)
            self._restart(seq)
            return Received(Arrival.RESET)
        self.highest = max(self.highest, seq)
        if seq > self.top:
            opened = self._extend(seq, now)
            _add(self.received, seq, seq)
            self._advance()
            given_up = self._bound()
            return Received(Arrival.GAP if opened else Arrival.IN_ORDER, opened, (), given_up)
        filled = self._fill(seq, seq)[1]
        _add(self.received, seq, seq)
        self._advance()
        return Received(Arrival.REORDER, None, filled)

    def account(self, first: int, last: int, now: datetime) -> Accounted:
        """Record seqs ``first`` .. ``last`` as undeliverable (the agent will never send
        them). Only seqs not yet accounted for count: a received one stays received, and a
        span reported again counts once."""
        first = max(first, self.stored_through + 1)
        if first > last:
            return Accounted(0)
        seqs, filled = self._fill(first, min(last, self.top))
        opened = None
        given_up: tuple[Gap, ...] = ()
        if last > self.top:
            start = max(first, self.top + 1)
            opened = self._extend(start, now)
            self.top = last
            seqs += last - start + 1
            given_up = self._bound()
        self._advance()
        return Accounted(seqs, opened, filled, given_up)

    # -- internals ----------------------------------------------------------------------
    def _in_gap(self, seq: int) -> bool:
        i = bisect.bisect_right(self.gaps, seq, key=lambda g: g.first) - 1
        return i >= 0 and self.gaps[i].last >= seq

    def _extend(self, seq: int, now: datetime) -> Gap | None:
        """Move ``top`` up to ``seq``; the hole below it, if any, opens now."""
        opened = None
        if seq > self.top + 1:
            opened = Gap(self.top + 1, seq - 1, now)
            self.gaps.append(opened)
        self.top = max(self.top, seq)
        return opened

    def _fill(self, first: int, last: int) -> tuple[int, tuple[Gap, ...]]:
        """Take ``first`` .. ``last`` out of the holes: how many seqs that accounted for,
        and the holes it closed."""
        if first > last:
            return 0, ()
        taken = 0
        filled: list[Gap] = []
        kept: list[Gap] = []
        for gap in self.gaps:
            if gap.last < first or gap.first > last:
                kept.append(gap)
                continue
            lo, hi = max(gap.first, first), min(gap.last, last)
            taken += hi - lo + 1
            if gap.first < lo:
                kept.append(Gap(gap.first, lo - 1, gap.since))
            if hi < gap.last:
                kept.append(Gap(hi + 1, gap.last, gap.since))
            if gap.first >= lo and hi >= gap.last:
                filled.append(gap)
        self.gaps = kept
        return taken, tuple(filled)

    def _advance(self) -> None:
        self.stored_through = self.gaps[0].first - 1 if self.gaps else self.top
        while self.received and self.received[0][1] <= self.stored_through:
            self.received.pop(0)

    def _bound(self) -> tuple[Gap, ...]:
        if len(self.gaps) <= MAX_GAPS:
            return ()
        cut = len(self.gaps) - MAX_GAPS
        given_up, self.gaps = tuple(self.gaps[:cut]), self.gaps[cut:]
        self._advance()
        return given_up

    def _restart(self, seq: int) -> None:
        self.stored_through, self.top, self.highest = seq, seq, seq
        self.received, self.gaps = [], []

    # -- storage ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The ledger's ranges as JSON values (the three seqs are columns of their own)."""
        return {
            "received": [[a, b] for a, b in self.received],
            "gaps": [[g.first, g.last, g.since.isoformat()] for g in self.gaps],
        }

    @classmethod
    def from_json(
        cls, ranges: dict[str, Any], *, stored_through: int, top: int, highest: int,
        latest_sent: datetime | None,
    ) -> Ledger:
        return cls(
            stored_through=stored_through, top=top, highest=highest, latest_sent=latest_sent,
            received=[(int(a), int(b)) for a, b in ranges.get("received", [])],
            gaps=[Gap(int(a), int(b), datetime.fromisoformat(t))
                  for a, b, t in ranges.get("gaps", [])],
        )


def _add(ranges: list[tuple[int, int]], first: int, last: int) -> None:
    """Merge ``first`` .. ``last`` into sorted, disjoint, non-adjacent ranges."""
    i = bisect.bisect_left(ranges, first, key=lambda r: r[0])
    if i > 0 and ranges[i - 1][1] >= first - 1:
        i -= 1
    j = i
    while j < len(ranges) and ranges[j][0] <= last + 1:
        first, last = min(first, ranges[j][0]), max(last, ranges[j][1])
        j += 1
    ranges[i:j] = [(first, last)]


def hour_of(ts: datetime) -> datetime:
    """The UTC hour ``ts`` falls in (the bucket completeness is counted in).

    >>> hour_of(datetime(2026, 3, 1, 8, 59, 59, tzinfo=UTC)).isoformat()
    '2026-03-01T08:00:00+00:00'
    """
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def apportion(windows: int, part: int, whole: int) -> int:
    """The windows of ``part`` of a span of ``whole`` seqs, if the span's ``windows`` were
    spread evenly over its seqs (exact when ``part == whole``).

    >>> apportion(10, 5, 5), apportion(10, 2, 5), apportion(7, 0, 5)
    (10, 4, 0)
    """
    if part >= whole:
        return windows
    return windows * part // whole


def spread(windows: int, first_at: datetime, last_at: datetime) -> dict[datetime, int]:
    """``windows`` spread evenly over the hourly buckets from ``first_at`` to ``last_at``;
    the remainder goes one each to the earliest. Nothing is lost to rounding.

    More than ``MAX_SPREAD_HOURS`` hours are served by buckets that many hours apart
    (evenly strided), so a wild timestamp cannot create millions of rows.

    >>> t = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    >>> {h.hour: n for h, n in spread(7, t, t + timedelta(hours=2)).items()}
    {8: 3, 9: 2, 10: 2}
    """
    if windows <= 0:
        return {}
    start, end = sorted((hour_of(first_at), hour_of(last_at)))
    hours = int((end - start) / timedelta(hours=1)) + 1
    stride = -(-hours // MAX_SPREAD_HOURS)
    buckets = [start + timedelta(hours=stride * i) for i in range(-(-hours // stride))]
    share, extra = divmod(windows, len(buckets))
    out = {b: share + (i < extra) for i, b in enumerate(buckets)}
    return {b: n for b, n in out.items() if n}

