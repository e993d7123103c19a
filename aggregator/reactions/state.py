"""Rule state in SQL: the recent windows a rule saw for one (site, asset).

Kept in SQL rather than rebuilt from the series store: it commits in the same transaction
as the tickets and seen msg_ids it caused, and replicas sharing PostgreSQL share it (the
row is locked while a batch updates it).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db import RuleState

__all__ = ["locked_state"]


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
