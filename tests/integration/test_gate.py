"""The promotion gate over real stored points: a candidate scored as shadow beside the
live version on two agents (SQLite store and a real InfluxDB 1.x), its agents' estimates,
and drift conditions in the real ticket database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aggregator_support import T0

from aggregator.db import AssetCondition, open_engine, open_sessions
from aggregator.rollout.gate import GatePolicy, ModelKey, evaluate
from aggregator.series import HealthPoint, PredictionPoint, SeriesStore, StoredEstimate
from aggregator.series.influx1 import Influx1Store
from aggregator.series.sqlite import SqliteSeriesStore

pytestmark = pytest.mark.integration

LIVE = ModelKey("bearing-gbt", "1.2.0")
CANDIDATE = ModelKey("bearing-gbt", "1.3.0")
SINCE, UNTIL = T0, T0 + timedelta(days=1)
AGENTS = ["gw-1", "gw-2"]


@pytest.fixture(params=["sqlite", "influx1"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SeriesStore]:
    if request.param == "sqlite":
        backend: SeriesStore = SqliteSeriesStore(tmp_path / "series.db")
    else:
        db = request.getfixturevalue("influxdb")
        backend = Influx1Store(db.url, db.database)
    yield backend
    backend.close()


@pytest.fixture
def sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = open_engine(f"sqlite:///{tmp_path / 'aggregator.db'}")
    yield open_sessions(engine)
    engine.dispose()


def scored(agent: str, model: ModelKey, role: str, n: int, *, disagree_every: int = 0
           ) -> list[PredictionPoint]:
    """``n`` windows of one asset; every ``disagree_every``-th the shadow alerts alone."""
    out = []
    for i in range(n):
        alert = i % 10 == 0
        score = 0.9 if alert else 0.1
        if role == "shadow" and disagree_every and i % disagree_every == 1:
            alert, score = True, 0.8
        if role == "shadow":
            score += 0.02
        end = T0 + timedelta(minutes=i + 1)
        out.append(PredictionPoint("plant1", "line3", agent, "pump-1", model.name,
                                   model.version, end - timedelta(minutes=1), end, score,
                                   alert, i, role))
    return out


def estimate_report(agent: str, model: ModelKey, role: str, f1: float) -> HealthPoint:
    est = StoredEstimate(windows=300, alerts=30, calibrated=True, expected_positives=30.0,
                         f1=f1, f1_low=f1 - 0.05, f1_high=f1 + 0.05)
    return HealthPoint("plant1", "line3", agent, T0 + timedelta(hours=2), 300, 0, 0, 0,
                       None, model.name, model.version, 9, est, role)


def gate(store: SeriesStore, sessions, **policy: object):  # type: ignore[no-untyped-def]
    with sessions() as session:
        return evaluate(store, session, candidate=CANDIDATE, baseline=LIVE, agents=AGENTS,
                        since=SINCE, until=UNTIL, f1_target=0.78,
                        policy=GatePolicy(**policy))  # type: ignore[arg-type]


def test_a_shadow_that_agrees_and_estimates_well_passes(store: SeriesStore,
                                                       sessions) -> None:  # type: ignore[no-untyped-def]
    for agent in AGENTS:
        store.write(scored(agent, LIVE, "live", 150) + scored(agent, CANDIDATE, "shadow", 150),
                    health=[estimate_report(agent, LIVE, "live", 0.5),
                            estimate_report(agent, CANDIDATE, "shadow", 0.8)])
    # Elsewhere: an agent outside the canary scoring both, which must not count.
    store.write(scored("gw-9", LIVE, "live", 150) +
                scored("gw-9", CANDIDATE, "shadow", 150, disagree_every=2))
    verdict = gate(store, sessions)
    f = verdict.figures
    assert (f.windows, f.candidate_alerts, f.baseline_alerts) == (300, 30, 30)
    assert f.agreement == 1.0
    assert f.score_mad == pytest.approx(0.02)
    assert f.estimated_f1 == pytest.approx(0.8)  # the candidate's, not the live model's
    assert (f.f1_target, f.new_drift) == (0.78, 0)
    assert (verdict.ready, verdict.passed, verdict.reasons) == (True, True, ())


def test_a_canary_is_judged_on_the_windows_both_scored_with_roles_swapped(
        store: SeriesStore, sessions) -> None:  # type: ignore[no-untyped-def]
    """Canary: the candidate live, the previous version as shadow; one agent has only
    started, so fewer windows are common than either scored."""
    store.write(scored("gw-1", CANDIDATE, "live", 120) + scored("gw-1", LIVE, "shadow", 120))
    store.write(scored("gw-2", CANDIDATE, "live", 40) + scored("gw-2", LIVE, "shadow", 30))
    verdict = gate(store, sessions)
    assert verdict.figures.windows == 150
    assert verdict.reasons == ("150 of 200 windows compared so far",)
    assert not verdict.ready


def test_disagreement_a_poor_estimate_and_new_drift_are_each_named(
        store: SeriesStore, sessions) -> None:  # type: ignore[no-untyped-def]
    for agent in AGENTS:
        store.write(scored(agent, LIVE, "live", 200) +
                    scored(agent, CANDIDATE, "shadow", 200, disagree_every=10),
                    health=[estimate_report(agent, CANDIDATE, "shadow", 0.61)])
    with sessions() as session:
        for agent, detected in [("gw-1", T0 + timedelta(hours=1)),
                                ("gw-2", T0 + timedelta(hours=3)),
                                ("gw-2", T0 - timedelta(hours=1)),  # before the stage
                                ("gw-9", T0 + timedelta(hours=1))]:  # not its agent
            session.add(AssetCondition(
                site="plant1", line="line3", agent=agent, asset="pump-1",
                model_name=CANDIDATE.name, model_version=CANDIDATE.version,
                monitor=f"s2@{detected:%H}", detector="range", signal="feature",
                channels=["s2"], since=detected, detected_at=detected))
        session.commit()
    verdict = gate(store, sessions)
    assert verdict.figures.windows == 400
    assert verdict.figures.agreement == pytest.approx(0.9)  # 1 window in 10 alerts alone
    assert (verdict.ready, verdict.passed) == (True, False)
    assert verdict.reasons == (
        "agrees with the live model on 90 % of windows, needs 95 %",
        "estimated F1 0.61 against the card's 0.78 (margin 0.05)",
        "2 new drift conditions on its agents since the stage began",
    )
