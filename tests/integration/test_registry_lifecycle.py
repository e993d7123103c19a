"""The registry's stage machine and per-agent resolution on a real SQL database (SQLite
and PostgreSQL), with the gate's verdicts chosen: which agent runs what after each
assignment, promotion and rollback. The end-to-end path over MQTT is test_registry.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aggregator_support import drop_schema, store_settings
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator import audit
from aggregator.db import AgentRecord, SessionFactory, Ticket, open_engine, open_sessions
from aggregator.registry import lifecycle, store
from aggregator.registry.lifecycle import Question, Target
from aggregator.registry.resolve import AgentInfo, Desired, resolve
from aggregator.rollout.gate import Figures, Verdict
from contract import artifact
from linewatch.registry import keygen

pytestmark = pytest.mark.integration

MODELS = Path(__file__).resolve().parents[2] / "models"
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
ADMIN = audit.Actor("release-manager")
FIGURES = Figures(windows=300, agreement=0.7, score_mad=0.2, candidate_alerts=30,
                  baseline_alerts=10, estimated_f1=0.5, f1_target=0.84, new_drift=1)


def verdict(ready: bool, passed: bool, *reasons: str) -> Verdict:
    return Verdict(ready=ready, passed=passed, reasons=reasons, figures=FIGURES)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionFactory]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/registry.db"
    else:
        url = request.getfixturevalue("postgres_url")
        drop_schema(url)
    engine = open_engine(url)
    yield open_sessions(engine)
    engine.dispose()
    if request.param == "postgresql":
        drop_schema(url)


@pytest.fixture
def session(sessions: SessionFactory, tmp_path: Path) -> Iterator[Session]:
    key, _ = keygen(tmp_path / "keys")
    settings = store_settings(tmp_path, signing_key_file=key)
    with sessions() as s:
        for version in ("1", "2", "3"):
            source = Path(shutil.copytree(MODELS / "cmapss_fd001", tmp_path / version))
            card = json.loads((source / "card.json").read_text())
            card["version"] = version
            (source / "card.json").write_text(json.dumps(card))
            store.upload(s, settings, artifact.pack(source), uploaded_by="tests", now=T0)
        for agent, line in (("a1", "l1"), ("a2", "l1"), ("a3", "l1"), ("a4", "l1"),
                            ("b1", "l2")):
            s.add(AgentRecord(agent_id=agent, site="s", line=line, state="online",
                              predictions_count=0))
        s.commit()
        yield s


def wanted(session: Session) -> dict[str, Desired | None]:
    return resolve(lifecycle.agent_infos(session),
                   list(session.scalars(select(lifecycle.ModelAssignment))))


def runs(session: Session) -> dict[str, tuple[str, str, str | None] | None]:
    """agent -> (stage, live version, shadow version) or None."""
    return {a: None if d is None else (d.stage, d.live[1], d.shadow and d.shadow[1])
            for a, d in wanted(session).items()}


def put(session: Session, version: str, stage: str, target: Target,
        share: float | None = None, at: datetime = T0) -> lifecycle.ModelAssignment:
    row = lifecycle.assign(session, name="cmapss_fd001", version=version, stage=stage,
                           target=target, share=share, actor=ADMIN, now=at)
    session.commit()
    return row


LINE1 = Target(site="s", line="l1")


def test_the_most_specific_newest_live_assignment_wins(session: Session) -> None:
    assert set(runs(session).values()) == {None}  # nothing assigned: nobody is told
    put(session, "1", "live", Target(site="s"))
    put(session, "2", "live", LINE1, at=T0 + timedelta(minutes=1))
    put(session, "3", "live", Target(agents=("a4",)), at=T0 + timedelta(minutes=2))
    assert runs(session) == {"a1": ("live", "2", None), "a2": ("live", "2", None),
                             "a3": ("live", "2", None), "a4": ("live", "3", None),
                             "b1": ("live", "1", None)}


def test_canary_draws_the_ceiling_of_its_share_stably(session: Session) -> None:
    put(session, "1", "live", LINE1)
    canary = put(session, "2", "canary", LINE1, share=0.3)
    drawn = lifecycle.judged_agents(session, canary)
    assert len(drawn) == 2  # ceil(0.3 * 4)
    assert drawn == lifecycle.judged_agents(session, canary)
    now = runs(session)
    for agent in ("a1", "a2", "a3", "a4"):
        assert now[agent] == (("canary", "2", "1") if agent in drawn else ("live", "1", None))
    assert now["b1"] is None and canary.baseline_version == "1"


def test_a_shadow_runs_beside_the_live_model_even_the_agents_own(session: Session) -> None:
    put(session, "2", "shadow", Target(agents=("a1", "b1")))
    assert runs(session)["a1"] is None  # nothing live known: nothing to run it beside
    row = session.get(AgentRecord, "b1")
    assert row is not None
    row.model_name, row.model_version = "cmapss_fd001", "1"  # what b1 reports running
    session.commit()
    assert runs(session)["b1"] == ("live", "1", "2")
    put(session, "1", "live", LINE1)
    assert runs(session)["a1"] == ("live", "1", "2")


def test_promotion_needs_the_gate_and_keeps_its_verdicts(session: Session) -> None:
    live = put(session, "1", "live", LINE1)
    shadow = put(session, "2", "shadow", LINE1)
    asked: list[Question] = []

    def judge(answer: Verdict) -> lifecycle.Judge:
        def ask(_s: Session, q: Question) -> Verdict:
            asked.append(q)
            return answer
        return ask

    later = T0 + timedelta(hours=5)
    result, new = lifecycle.promote(session, shadow.id, judge(verdict(False, False, "few")),
                                    actor=ADMIN, share=0.5, now=later)
    assert new is None and shadow.state == "active"
    assert (asked[0].since, asked[0].until, asked[0].agents) == (
        T0, later, ("a1", "a2", "a3", "a4"))
    with pytest.raises(lifecycle.AssignmentStateError, match="share"):
        lifecycle.promote(session, shadow.id, judge(verdict(True, True)), actor=ADMIN)
    _, canary = lifecycle.promote(session, shadow.id, judge(verdict(True, True)),
                                  actor=ADMIN, share=0.5, now=later)
    assert canary is not None and canary.stage == "canary" and shadow.state == "promoted"
    assert [f["passed"] for f in shadow.figures] == [False, True]
    _, final = lifecycle.promote(session, canary.id, judge(verdict(True, True)), actor=ADMIN,
                                 now=later + timedelta(hours=1))
    session.commit()
    assert final is not None and live.state == "superseded" and final.previous_id == live.id
    assert set(runs(session).values()) == {("live", "2", None), None}
    with pytest.raises(lifecycle.AssignmentStateError, match="live already"):
        lifecycle.promote(session, final.id, judge(verdict(True, True)), actor=ADMIN)

    # Rolling the new live version back brings back the one it superseded.
    lifecycle.rollback(session, final.id, reason="plant manager's call", actor=ADMIN)
    session.commit()
    assert live.state == "active"
    assert runs(session)["a1"] == ("live", "1", None)
    assert session.scalars(select(Ticket)).all() == []


def test_the_canary_check_rolls_back_only_a_ready_failing_canary(session: Session) -> None:
    put(session, "1", "live", LINE1)
    canary = put(session, "2", "canary", LINE1, share=0.5)
    drawn = lifecycle.judged_agents(session, canary)

    def fixed(answer: Verdict) -> lifecycle.Judge:
        return lambda _s, _q: answer

    assert lifecycle.check_canaries(session, fixed(verdict(False, False, "12 windows"))) == []
    assert lifecycle.check_canaries(session, fixed(verdict(True, True))) == []
    failing = verdict(True, False, "agreement 0.70 below 0.95")
    ((row, ticket),) = lifecycle.check_canaries(session, fixed(failing), now=T0 + timedelta(1))
    session.commit()
    assert row.state == "rolled_back" and "agreement 0.70" in row.reason
    assert ticket is not None and ticket.kind == "retraining"
    assert ticket.evidence["rollout"]["agents"] == drawn
    assert ticket.evidence["rollout"]["figures"]["windows"] == 300
    assert set(runs(session).values()) == {("live", "1", None), None}
    assert lifecycle.check_canaries(session, fixed(failing)) == []


def test_resolution_is_a_function_of_the_rows_alone() -> None:
    agents = [AgentInfo("x", "s", "l"), AgentInfo("y", "s", "l", ("m", "1"))]
    assert resolve(agents, []) == {"x": None, "y": None}
