"""Rule state in SQL: the recent windows a rule saw for one (site, asset).

Kept in SQL rather than rebuilt from the series store: it commits in the same transaction
as the tickets and seen msg_ids it caused, and replicas sharing PostgreSQL share it (the
rows are locked while a batch updates them).

A batch reads the rows of every (site, asset) it touches in one locking SELECT per site
(and per 500 assets; assets seen for the first time get their empty rows first, in one
INSERT that leaves a row another replica just created alone) and writes them back in one
UPDATE executed for many rows: the cost of a batch grows with the assets it touched, not
with a round trip (and an ORM flush) per asset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db import AgentDelivery, AgentRecord, RuleState

__all__ = ["Windows", "load_states", "locked_agents", "locked_state", "save_states"]

# [{"window_end": iso, "score": float, "alert": bool}, ...], oldest first
Windows = list[dict[str, Any]]
Key = tuple[str, str]  # (site, asset)

_CHUNK = 500  # every backend's limit on bound parameters in one IN (...) is above this

_TABLE = cast(Table, RuleState.__table__)


_AgentRow = TypeVar("_AgentRow", AgentRecord, AgentDelivery)


def locked_agents(session: Session, model: type[_AgentRow],
                  agents: Iterable[str]) -> dict[str, _AgentRow]:
    """The rows of ``model`` of those of ``agents`` that exist, by agent, locked for this
    transaction in one SELECT per 500 (not one per agent: a batch's SQL round trips are
    most of what it costs per message); in agent order, so two transactions lock rows in
    the same order."""
    wanted = sorted(set(agents))
    rows: dict[str, _AgentRow] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        rows.update((row.agent_id, row) for row in session.scalars(
            select(model).where(model.agent_id.in_(chunk))
            .order_by(model.agent_id).with_for_update()))
    return rows


def locked_state(session: Session, rule: str, site: str, asset: str, now: datetime) -> RuleState:
    """The (site, asset)'s row for ``rule``, locked for this transaction (created if new)."""
    state = session.get(RuleState, (rule, site, asset), with_for_update=True)
    if state is not None:
        return state
    state = RuleState(rule=rule, site=site, asset=asset, windows=[], updated_at=now)
    try:
        with session.begin_nested():  # another replica may create the same row right now
            session.add(state)
    except IntegrityError:
        state = session.get(RuleState, (rule, site, asset), with_for_update=True)
        if state is None:
            raise
    return state


def load_states(session: Session, rule: str, keys: Iterable[Key],
                now: datetime) -> dict[Key, Windows]:
    """The stored windows of every key, its row locked for this transaction; a key seen
    for the first time gets an empty row (created unless another replica just did)."""
    wanted = sorted(set(keys))  # sorted: replicas lock rows in the same order
    out = _select(session, rule, wanted)
    missing = [key for key in wanted if key not in out]
    if missing:
        _create(session, rule, missing, now)
        out.update(_select(session, rule, missing))
    return out


def save_states(session: Session, rule: str, changed: Mapping[Key, Windows],
                now: datetime) -> None:
    """Write ``changed`` back (rows ``load_states`` locked), in one statement."""
    rows = [{"b_rule": rule, "b_site": site, "b_asset": asset, "windows": windows,
             "updated_at": now} for (site, asset), windows in sorted(changed.items())]
    if rows:
        statement = (update(_TABLE)
                     .where(_TABLE.c.rule == bindparam("b_rule"),
                            _TABLE.c.site == bindparam("b_site"),
                            _TABLE.c.asset == bindparam("b_asset"))
                     .values(windows=bindparam("windows"), updated_at=bindparam("updated_at")))
        session.connection().execute(statement, rows)


def _select(session: Session, rule: str, keys: list[Key]) -> dict[Key, Windows]:
    by_site: dict[str, list[str]] = defaultdict(list)
    for site, asset in keys:
        by_site[site].append(asset)
    out: dict[Key, Windows] = {}
    for site, assets in by_site.items():
        for start in range(0, len(assets), _CHUNK):
            query = (select(_TABLE.c.asset, _TABLE.c.windows)
                     .where(_TABLE.c.rule == rule, _TABLE.c.site == site,
                            _TABLE.c.asset.in_(assets[start:start + _CHUNK]))
                     .order_by(_TABLE.c.asset).with_for_update())
            for asset, windows in session.execute(query):
                out[site, asset] = windows
    return out


def _create(session: Session, rule: str, keys: list[Key], now: datetime) -> None:
    """Empty rows for ``keys``; one another replica created meanwhile is left as it is."""
    rows = [{"rule": rule, "site": site, "asset": asset, "windows": [], "updated_at": now}
            for site, asset in keys]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(_TABLE).on_conflict_do_nothing(), rows)
    elif dialect == "sqlite":
        session.execute(sqlite.insert(_TABLE).on_conflict_do_nothing(), rows)
    else:
        for site, asset in keys:
            locked_state(session, rule, site, asset, now)
        session.flush()
