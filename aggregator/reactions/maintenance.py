"""Maintenance tickets: k of an asset's last n windows over the model's threshold.

Windows are fed per (site, asset) in ``window_end`` order (event time, whatever order and
batches they arrived in); asset names are only unique within a site, so the same name at
two sites has two windows and two tickets. Every window that leaves the rule triggered is
one trigger: the first opens the ticket, with ``opened_at`` its window's end, each later
one is an escalation. A backlog flushed after an outage therefore opens the same tickets,
at the same times, with the same escalations, as the same windows received one by one.

A trigger is trusted only while the asset's inputs are what the model was trained on:
while a sensor fault or an excursion out of the training envelope was active on the asset
at the trigger's window end (begun before it, not ended by then), the risk is not trusted
and opens no maintenance ticket; it is added to the asset's sensor or inspect ticket as
evidence instead.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from aggregator import conditions, tickets
from aggregator.db import AssetCondition
from aggregator.reactions import Batch
from aggregator.reactions.state import Windows, load_states, save_states
from aggregator.rules import KOfN, ScoredWindow, Verdict, k_of_n_triggers, triage
from aggregator.series import PredictionPoint
from aggregator.settings import Settings

__all__ = ["MaintenanceReaction"]

logger = logging.getLogger(__name__)


class MaintenanceReaction:
    """Feeds every prediction to the k-of-n rule and opens or escalates tickets."""

    name = "maintenance"

    def __init__(self, settings: Settings) -> None:
        KOfN(settings.rule_k, settings.rule_n)  # validates k and n with its messages
        self.k = settings.rule_k
        self.n = settings.rule_n
        self.cooldown = timedelta(seconds=settings.rule_cooldown_s)
        self.sensor_channels = settings.triage_sensor_channels
        # (site, asset) -> the rule state's JSON as last written, and its windows: the
        # state stays in SQL (replicas share it), this only spares parsing it again.
        self._memo: dict[tuple[str, str], tuple[Windows, list[ScoredWindow]]] = {}

    def react(self, session: Session, batch: Batch) -> None:
        by_key = _by_key(batch)
        if not by_key:
            return
        stored = load_states(session, self.name, by_key, batch.now)
        changed: dict[tuple[str, str], Windows] = {}
        triggered: list[tuple[str, str, list[_Trigger]]] = []
        threshold = _Thresholds(batch)
        for key in sorted(by_key):
            old_json = stored.get(key, [])
            old = self._parsed(key, old_json)
            # In window order; a window not newer than the last one seen is stale (a
            # redelivered or replayed window is never counted twice).
            fresh = _fresh(by_key[key], old[-1].window_end if old else None)
            if not fresh:
                continue
            before, alerts = [w.alert for w in old], [p.alert for p in fresh]
            # With no alert among the new windows nor the n - 1 before them, no window can
            # leave k >= 1 of n alerting: a quiet asset's windows are not counted one by one.
            hits = (k_of_n_triggers(before, alerts, self.k, self.n)
                    if True in alerts or True in before[len(before) + 1 - self.n:] else [])
            # Window objects only for what is kept (the last n) and what triggered.
            every = _Windows(old, fresh)
            if hits:
                triggered.append((*key, [
                    _Trigger(fresh[i], threshold(fresh[i]),
                             every.slice(len(old) + i + 1 - self.n, len(old) + i + 1))
                    for i in hits]))
            windows = every.slice(len(every) - self.n, len(every))
            kept = max(0, len(windows) - len(fresh))
            new_json = [*(old_json[len(old_json) - kept:] if kept else ()),
                        *(w.to_json() for w in windows[kept:])]
            changed[key] = new_json
            self._memo[key] = (new_json, windows)
        save_states(session, self.name, changed, batch.now)
        # One query per site for what was active at any trigger's window end.
        for site in sorted({site for site, _, _ in triggered}):
            mine = [(asset, triggers) for s, asset, triggers in triggered if s == site]
            during = conditions.during(session, site, {
                asset: (triggers[0].point.window_end, triggers[-1].point.window_end)
                for asset, triggers in mine})
            for asset, triggers in mine:
                self._triggered(session, site, asset, triggers, during[asset], batch)

    def _parsed(self, key: tuple[str, str], stored: Windows) -> list[ScoredWindow]:
        """The windows a row holds; parsed again only when it is not what this reaction
        wrote last (another replica, or a restart, wrote it)."""
        memo = self._memo.get(key)
        if memo is not None and memo[0] == stored:
            return memo[1]
        return [ScoredWindow.from_json(w) for w in stored]

    def _triggered(self, session: Session, site: str, asset: str, triggers: list[_Trigger],
                   during: list[AssetCondition], batch: Batch) -> None:
        """Every trigger, in event-time order: trusted ones open or escalate the asset's
        maintenance ticket (the first opens it at its window's end, each later one is an
        escalation); untrusted ones go to the sensor or inspect ticket as evidence.
        ``during``: the asset's conditions active at some trigger's window end."""
        trusted = []
        # Per ticket kind, the newest untrusted trigger (its windows are the evidence kept)
        # and how many there were: an asset out of the envelope may trigger on every window.
        held: dict[tickets.Kind, tuple[_Trigger, Verdict, int]] = {}
        for trigger in triggers:
            verdict = self._distrust(trigger, during)
            if verdict is None:
                trusted.append(trigger)
                continue
            kind: tickets.Kind = "sensor" if verdict.kind == "sensor" else "inspect"
            held[kind] = (trigger, verdict, held.get(kind, (trigger, verdict, 0))[2] + 1)
        for kind, (trigger, verdict, count) in held.items():
            self._hold(session, site, asset, kind, trigger, verdict, count, batch)
        if not trusted:
            return
        first, last = trusted[0], trusted[-1]
        scores = {w.window_end: w for t in trusted for w in t.windows}
        evidence = {"k": self.k, "n": self.n,
                    "scores": [scores[end].to_json() for end in sorted(scores)]}
        tickets.open_or_escalate(
            session, tickets.Subject.of(last.point, last.threshold), "maintenance", evidence,
            now=batch.now, at=first.point.window_end, triggers=len(trusted),
            cooldown=self.cooldown,
        )

    def _distrust(self, trigger: _Trigger, during: list[AssetCondition]) -> Verdict | None:
        """Why the trigger's risk is not trusted (a condition active at its window end
        that triage judges), or None when it is."""
        at = trigger.point.window_end
        active = [r for r in during if r.since <= at and (r.ended_at is None or r.ended_at > at)]
        if not active:
            return None
        verdict = triage(active, self.sensor_channels)
        if verdict.kind is None or verdict.since is None or verdict.since > at:
            return None
        return verdict

    def _hold(self, session: Session, site: str, asset: str, kind: tickets.Kind,
              trigger: _Trigger, verdict: Verdict, count: int, batch: Batch) -> None:
        """Put the untrusted risk on the asset's sensor or inspect ticket, and say so once."""
        ticket = tickets.open_ticket(session, site, asset, kind)
        if ticket is not None:
            ticket.evidence = {**ticket.evidence, "untrusted_risk": {
                "k": self.k, "n": self.n, "scores": [w.to_json() for w in trigger.windows]}}
            ticket.updated_at = batch.now
        since = "?" if verdict.since is None else verdict.since.isoformat()
        logger.info("%s/%s: the rule triggered %d time%s up to %s, not trusted: %s since %s "
                    "(%s)", site, asset, count, "" if count == 1 else "s",
                    trigger.point.window_end.isoformat(), verdict.kind, since,
                    ", ".join(verdict.channels))


def _by_key(batch: Batch) -> dict[tuple[str, str], list[PredictionPoint]]:
    """The batch's points by (site, asset), in arrival order.

    No tuple per point, neither a (site, asset) key nor a (point, threshold) pair: with a
    batch's tens of thousands of points alive, each such tuple cost more than the rest of
    this loop (the garbage collector counts them too). A message's points share one site,
    so the site's assets are looked up again only when a point's site is another object;
    the rare trigger looks its threshold up (``_Thresholds``).
    """
    by_site: dict[str, defaultdict[str, list[PredictionPoint]]] = {}
    site: str | None = None
    assets: defaultdict[str, list[PredictionPoint]] = defaultdict(list)
    for item in batch.data:
        for point in item.points:
            if point.site is not site:
                site = point.site
                assets = by_site.setdefault(site, defaultdict(list))
            assets[point.asset].append(point)
    return {(name, asset): points for name, by_asset in by_site.items()
            for asset, points in by_asset.items()}


def _window_end(point: PredictionPoint) -> datetime:
    return point.window_end


def _fresh(points: list[PredictionPoint], last: datetime | None) -> list[PredictionPoint]:
    """The points newer than ``last`` and than every point before them, in window order.

    Windows nearly always arrive in order, and then ``points`` are the answer as they
    stand: only when one is not newer than the one before are they sorted (a key call per
    point is most of what sorting costs).
    """
    previous = last
    for point in points:
        if previous is not None and point.window_end <= previous:
            break
        previous = point.window_end
    else:
        return points  # strictly increasing, all after ``last``: what sorting would keep
    fresh = []
    for point in sorted(points, key=_window_end):
        if last is None or point.window_end > last:
            fresh.append(point)
            last = point.window_end
    return fresh


class _Thresholds:
    """The threshold each point of a batch was judged against: its envelope model's. Most
    batches have one; a map by point is made only for a batch with several, and only when
    a trigger asks."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        # By hex: 0.0 and -0.0 are equal, yet each goes into a ticket as it came.
        found = {t.hex(): t for t in (item.envelope.model.threshold for item in batch.data
                                      if item.points)}
        self.only = next(iter(found.values())) if len(found) == 1 else None
        self.by_point: dict[int, float] | None = None

    def __call__(self, point: PredictionPoint) -> float:
        if self.only is not None:
            return self.only
        if self.by_point is None:
            # By identity: the very point objects of the batch's messages, alive meanwhile.
            self.by_point = {id(p): item.envelope.model.threshold
                             for item in self.batch.data for p in item.points}
        return self.by_point[id(point)]


class _Windows:
    """An asset's stored windows followed by a batch's fresh ones, as one sequence whose
    fresh windows become ``ScoredWindow`` objects only when asked for."""

    def __init__(self, old: list[ScoredWindow], fresh: list[PredictionPoint]) -> None:
        self.old, self.fresh = old, fresh

    def __len__(self) -> int:
        return len(self.old) + len(self.fresh)

    def slice(self, start: int, stop: int) -> list[ScoredWindow]:
        out = []
        for i in range(max(0, start), stop):
            if i < len(self.old):
                out.append(self.old[i])
            else:
                p = self.fresh[i - len(self.old)]
                out.append(ScoredWindow(p.window_end, p.score, p.alert))
        return out


@dataclass(frozen=True, slots=True)
class _Trigger:
    """A window that left its asset's rule triggered, and the rule's windows then."""

    point: PredictionPoint
    threshold: float
    windows: list[ScoredWindow]
