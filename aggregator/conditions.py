"""Asset conditions: the drift and data-quality conditions agents report, kept from start
to end so the rules can ask "what is wrong with this asset right now, and since when?".

Agents report each condition twice, when it starts and when it ends (``contract.wire``
``DriftEvent.state``); events without a state (older agents, gaps) are instants and are
not kept here. A step on a channel never ends by itself (the channel stays offset): it ends
when a person resolves the sensor ticket it caused (:func:`close_sensor`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from aggregator.db import AssetCondition, RuleState
from aggregator.rules import SENSOR_DETECTORS, ConditionLike, triage
from contract.wire import DriftEvent, Envelope, TopicParts

__all__ = [
    "FLEET", "SENSOR_DETECTORS", "active", "apply", "close_sensor", "during", "foreign_assets",
]

logger = logging.getLogger(__name__)

FLEET = ""  # the asset of a condition about an agent's whole fleet (its alert rate)


def apply(session: Session, parts: TopicParts, envelope: Envelope,
          events: Sequence[DriftEvent]) -> set[tuple[str, str]]:
    """Record started and ended conditions; return the (site, asset)s they touched."""
    kept = [e for e in events if e.state is not None]  # instants (gaps) are not kept open
    if not kept:
        return set()
    assets = {e.asset or FLEET for e in kept}
    query = select(AssetCondition).where(
        AssetCondition.site == parts.site, AssetCondition.agent == envelope.agent,
        AssetCondition.asset.in_(assets), AssetCondition.ended_at.is_(None))
    open_rows = {(r.asset, r.monitor, r.detector): r
                 for r in session.scalars(query.with_for_update())}
    touched: set[tuple[str, str]] = set()
    for e in sorted(kept, key=lambda e: (e.at, e.state != "end")):
        key = (e.asset or FLEET, e.monitor, e.detector)
        row = open_rows.get(key)
        if e.state == "end":
            if row is not None:
                row.ended_at = e.at
                del open_rows[key]
                touched.add((parts.site, key[0]))
            continue
        if row is None:
            row = open_rows[key] = AssetCondition(
                site=parts.site, line=parts.line, agent=envelope.agent, asset=key[0],
                model_name=envelope.model.name, model_version=envelope.model.version,
                monitor=e.monitor, detector=e.detector, signal=e.signal or "feature",
                channels=list(e.channels or []), since=e.since or e.at, detected_at=e.at)
            session.add(row)
        row.since = min(row.since, e.since or e.at)
        row.detected_at = e.at
        row.reference = None if e.reference is None else e.reference.model_dump()
        row.current, row.statistic, row.threshold = e.current, e.value, e.threshold
        row.detail = e.detail
        touched.add((parts.site, key[0]))
    session.flush()
    return touched


def active(session: Session, site: str, assets: Iterable[str]) -> dict[str, list[AssetCondition]]:
    """The assets' conditions that have not ended, oldest first, by asset."""
    out: dict[str, list[AssetCondition]] = {}
    names = sorted(set(assets))
    for start in range(0, len(names), 500):  # every backend's parameter limit
        query = select(AssetCondition).where(
            AssetCondition.site == site, AssetCondition.asset.in_(names[start:start + 500]),
            AssetCondition.ended_at.is_(None))
        for row in session.scalars(query.order_by(AssetCondition.since, AssetCondition.id)):
            out.setdefault(row.asset, []).append(row)
    return out


def during(session: Session, site: str,
                spans: dict[str, tuple[datetime, datetime]]) -> dict[str, list[AssetCondition]]:
    """By asset, its conditions active at some time in its own [start, end] (event time:
    begun by ``end``, not ended by ``start``), oldest first, ended ones included; one
    query per 500 assets."""
    out: dict[str, list[AssetCondition]] = {asset: [] for asset in spans}
    names = sorted(spans)
    for first in range(0, len(names), 500):  # every backend's parameter limit
        chunk = names[first:first + 500]
        start = min(spans[a][0] for a in chunk)
        end = max(spans[a][1] for a in chunk)
        query = select(AssetCondition).where(
            AssetCondition.site == site, AssetCondition.asset.in_(chunk),
            AssetCondition.since <= end,
            or_(AssetCondition.ended_at.is_(None), AssetCondition.ended_at > start))
        for row in session.scalars(query.order_by(AssetCondition.since, AssetCondition.id)):
            low, high = spans[row.asset]
            if row.since <= high and (row.ended_at is None or row.ended_at > low):
                out[row.asset].append(row)
    return out


def foreign_assets(session: Session, site: str, model: str, version: str,
                   sensor_channels: int) -> dict[str, list[ConditionLike]]:
    """Assets of the site whose active conditions triage as foreign to the model, with
    those conditions (what triage reads of them: detector, channels, since).

    Asked once per batch slice, over every active condition of the site: only the columns
    triage reads are loaded, not whole rows (a site out of its envelope has thousands).
    """
    query = select(AssetCondition.asset, AssetCondition.detector, AssetCondition.channels,
                   AssetCondition.since).where(
        AssetCondition.site == site, AssetCondition.model_name == model,
        AssetCondition.model_version == version, AssetCondition.ended_at.is_(None),
        AssetCondition.asset != FLEET)
    by_asset: dict[str, list[ConditionLike]] = {}
    for row in session.execute(query):
        by_asset.setdefault(row.asset, []).append(row)
    return {a: rows for a, rows in by_asset.items()
            if triage(rows, sensor_channels).kind == "foreign"}


def close_sensor(session: Session, site: str, asset: str, at: datetime) -> int:
    """End the asset's sensor conditions (its sensor ticket was resolved at ``at``, the
    aggregator's clock); return how many.

    Conditions live in plant time, which a replay or an agent's clock may keep far from
    the aggregator's: the end is the resolution, but no later than the newest plant time
    known of the asset (its last scored window, its conditions' detections), so that the
    windows it sends next are judged as after the repair."""
    rows = session.scalars(select(AssetCondition).where(
        AssetCondition.site == site, AssetCondition.asset == asset,
        AssetCondition.ended_at.is_(None),
        AssetCondition.detector.in_(SENSOR_DETECTORS)).with_for_update()).all()
    if not rows:
        return 0
    plant_now = max(row.detected_at for row in rows)
    state = session.get(RuleState, ("maintenance", site, asset))
    if state is not None and state.windows:
        plant_now = max(plant_now, datetime.fromisoformat(state.windows[-1]["window_end"]))
    for row in rows:
        row.ended_at = max(row.detected_at, min(at, plant_now))
    return len(rows)
