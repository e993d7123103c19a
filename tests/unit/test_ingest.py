"""Ingest on the embedded stores (SQLite series + SQLite DB in tmp_path): no servers."""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aggregator_support import (
    MODEL,
    T0,
    data_topic,
    drift_events,
    envelope,
    health_report,
    payload,
    predictions,
    rewritten,
    store_settings,
    stored_drift,
    stored_health,
    stored_points,
)
from sqlalchemy import select

from aggregator import tickets
from aggregator.db import (
    QUARANTINE_MAX_BYTES,
    AgentRecord,
    QuarantinedMessage,
    RuleState,
    SeenMessage,
    SessionFactory,
    Ticket,
    open_engine,
    open_sessions,
)
from aggregator.errors import SeriesUnavailableError
from aggregator.ingest import Ingestor, RawMessage
from aggregator.series.sqlite import SqliteSeriesStore
from aggregator.settings import Settings
from contract.wire import MAX_PAYLOAD_BYTES, Health, Status, encode

AGENT = "gw-7"
TOPIC = data_topic(AGENT)
DRIFT_TOPIC = data_topic(AGENT, "drift")
HEALTH_TOPIC = data_topic(AGENT, "health")


@pytest.fixture
def series(tmp_path: Path) -> Iterator[SqliteSeriesStore]:
    store = SqliteSeriesStore(tmp_path / "series.db")
    yield store
    store.close()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[SessionFactory]:
    engine = open_engine(f"sqlite:///{tmp_path}/linewatch.db")
    yield open_sessions(engine)
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return store_settings(tmp_path)


@pytest.fixture
def ingestor(series: SqliteSeriesStore, sessions: SessionFactory, settings: Settings) -> Ingestor:
    return Ingestor(series, sessions, settings)


def rows(sessions: SessionFactory, model: type) -> list:  # type: ignore[type-arg]
    with sessions() as session:
        return list(session.scalars(select(model)))


def open_tickets(sessions: SessionFactory, asset: str) -> list[Ticket]:
    with sessions() as session:
        return tickets.find(session, asset=asset, status="open") + tickets.find(
            session, asset=asset, status="acknowledged"
        )


# -- valid input ----------------------------------------------------------------------
def test_valid_batch_is_stored_exactly(ingestor: Ingestor, series: SqliteSeriesStore) -> None:
    env_a = envelope(AGENT, 0, predictions("pump-1", [0.1, 0.25]) + predictions("fan-2", [0.5]))
    env_b = envelope(AGENT, 1, predictions("pump-1", [0.125], start=2))
    outcomes = ingestor.handle_batch(
        [RawMessage(TOPIC, encode(env_a)), RawMessage(TOPIC, encode(env_b))]
    )

    assert [(o.status, o.predictions, o.msg_id) for o in outcomes] == [
        ("accepted", 3, env_a.msg_id),
        ("accepted", 1, env_b.msg_id),
    ]
    stored = series.predictions(asset="pump-1")
    assert stored == stored_points([env_a, env_b], asset="pump-1")
    assert [(p.seq, p.window_start) for p in stored] == [
        (0, env_a.items[0].window_start),
        (0, env_a.items[1].window_start),
        (1, env_b.items[0].window_start),
    ]
    assert series.count() == 4
    counts = ingestor.counts
    assert (counts.accepted, counts.predictions, counts.duplicates, counts.rejected) == (
        2,
        4,
        0,
        {},
    )


def test_agents_table_follows_the_messages(ingestor: Ingestor, sessions: SessionFactory) -> None:
    ingestor.handle_batch(
        [
            RawMessage(TOPIC, payload(AGENT, 5, predictions("pump-1", [0.1, 0.2]))),
            RawMessage(TOPIC, payload(AGENT, 4, predictions("pump-1", [0.3], start=2))),
        ]
    )
    (agent,) = rows(sessions, AgentRecord)
    assert (agent.agent_id, agent.site, agent.line) == (AGENT, "plant1", "line3")
    assert (agent.last_seq, agent.predictions_count, agent.state) == (5, 3, "online")
    assert (agent.model_name, agent.model_version) == (MODEL.name, MODEL.version)
    assert agent.last_seen is not None and agent.last_seen.tzinfo is not None


def test_status_updates_the_agent_newest_wins(ingestor: Ingestor, sessions: SessionFactory) -> None:
    status_topic = data_topic(AGENT, "status")
    offline = Status(schema=1, agent=AGENT, state="offline", ts=T0 + timedelta(minutes=5))
    older_online = Status(schema=1, agent=AGENT, state="online", ts=T0, model=MODEL)
    outcomes = ingestor.handle_batch(
        [
            RawMessage(status_topic, encode(offline)),
            RawMessage(status_topic, encode(older_online)),
        ]
    )
    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    (agent,) = rows(sessions, AgentRecord)
    assert (agent.state, agent.state_at) == ("offline", T0 + timedelta(minutes=5))
    assert ingestor.counts.statuses == 2


def test_a_last_will_stamped_like_its_birth_ends_that_session(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    """The agent stamps its online status and its last will alike; at equal timestamps the
    will is the later fact, whatever order the broker delivers them in."""
    status_topic = data_topic(AGENT, "status")
    online = Status(schema=1, agent=AGENT, state="online", ts=T0, model=MODEL)
    will = Status(schema=1, agent=AGENT, state="offline", ts=T0)
    ingestor.handle_batch([RawMessage(status_topic, encode(will))])
    ingestor.handle_batch([RawMessage(status_topic, encode(online))])
    (agent,) = rows(sessions, AgentRecord)
    assert (agent.state, agent.state_at) == ("offline", T0)


def test_a_stale_last_will_does_not_outlive_the_agents_data(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    """A retained ``offline`` from an earlier session, delivered late, must not mark an agent
    offline since before it first connected while it is plainly sending."""
    status_topic = data_topic(AGENT, "status")
    stale = Status(schema=1, agent=AGENT, state="offline", ts=T0 - timedelta(hours=2))
    ingestor.handle_batch([RawMessage(status_topic, encode(stale))])
    ingestor.handle_batch([RawMessage(TOPIC, payload(AGENT, 1, predictions("pump-1", [0.1])))])
    (agent,) = rows(sessions, AgentRecord)
    assert agent.state == "online"
    assert agent.state_at is not None and agent.state_at > T0 - timedelta(hours=2)


def test_health_reports_are_stored(
    ingestor: Ingestor, series: SqliteSeriesStore, sessions: SessionFactory
) -> None:
    item = Health(at=T0, windows_scored=10, outbox_depth=0)
    env = envelope(AGENT, 0, [item, health_report(1, 25, outbox_depth=3, outbox_dropped=1,
                                                  rejected_readings=4, inference_ms_median=0.5)])
    outcome = ingestor.handle(HEALTH_TOPIC, encode(env))
    assert (outcome.status, outcome.predictions, outcome.health_reports) == ("accepted", 0, 2)
    assert series.count() == 0  # no prediction points
    assert series.health() == stored_health([env])
    assert series.latest_health()[AGENT].windows_scored == 25
    counts = ingestor.counts
    assert (counts.health_reports, counts.drift_events, counts.predictions) == (2, 0, 0)
    assert rows(sessions, AgentRecord)[0].predictions_count == 0


def test_drift_events_are_stored(ingestor: Ingestor, series: SqliteSeriesStore) -> None:
    items = drift_events("pump-1", 3) + drift_events(
        None, 1, start=5, detector="ADWIN", monitor="score", detail='mean "now" 0.8\\x'
    )
    env = envelope(AGENT, 4, items)
    outcome = ingestor.handle(DRIFT_TOPIC, encode(env))
    assert (outcome.status, outcome.predictions, outcome.drift_events) == ("accepted", 0, 4)
    stored = series.drift_events()
    assert stored == stored_drift([env])
    assert (stored[0].asset, stored[0].value, stored[0].seq) == (None, None, 4)
    assert series.drift_count(asset="pump-1") == 3
    assert series.count() == 0
    assert (ingestor.counts.drift_events, ingestor.counts.health_reports) == (4, 0)


def test_one_series_write_per_batch_of_every_kind(
    ingestor: Ingestor, series: SqliteSeriesStore
) -> None:
    """Predictions, drift and health of one batch go to the store in ONE call, so the
    batch is stored, or retried, as a whole."""
    envs = [
        envelope(AGENT, 0, predictions("pump-1", [0.2, 0.3])),
        envelope(AGENT, 1, drift_events("pump-1", 2)),
        envelope(AGENT, 2, [health_report(2, 2)]),
    ]
    topics = [TOPIC, DRIFT_TOPIC, HEALTH_TOPIC]
    with mock.patch.object(series, "write", wraps=series.write) as write:
        outcomes = ingestor.handle_batch(
            [RawMessage(t, encode(e)) for t, e in zip(topics, envs, strict=True)]
        )
    assert [o.status for o in outcomes] == ["accepted"] * 3
    (call,) = write.call_args_list
    written = inspect.signature(series.write).bind(*call.args, **call.kwargs).arguments
    assert {kind: len(items) for kind, items in written.items()} == {
        "points": 2, "drift": 2, "health": 1
    }
    assert series.predictions() == stored_points(envs)
    assert series.drift_events() == stored_drift(envs)
    assert series.health() == stored_health(envs)


# -- duplicates -----------------------------------------------------------------------
def test_duplicate_msg_id_is_dropped(
    ingestor: Ingestor, series: SqliteSeriesStore, sessions: SessionFactory
) -> None:
    raw = payload(AGENT, 0, predictions("pump-1", [0.2, 0.3]))
    first = ingestor.handle_batch([RawMessage(TOPIC, raw), RawMessage(TOPIC, raw)])
    again = ingestor.handle(TOPIC, raw)  # redelivered later, e.g. after a reconnect

    assert [o.status for o in first] == ["accepted", "duplicate"]
    assert again.status == "duplicate"
    assert series.count() == 2
    assert len(rows(sessions, SeenMessage)) == 1
    assert rows(sessions, AgentRecord)[0].predictions_count == 2
    assert (ingestor.counts.accepted, ingestor.counts.duplicates) == (1, 2)


def test_seen_msg_ids_are_forgotten_after_the_retention_only(
    ingestor: Ingestor, series: SqliteSeriesStore, sessions: SessionFactory, settings: Settings
) -> None:
    raw = payload(AGENT, 0, predictions("pump-1", [0.2]))
    assert ingestor.handle(TOPIC, raw).status == "accepted"
    (seen,) = rows(sessions, SeenMessage)
    retention = timedelta(seconds=settings.dedupe_retention_s)

    assert ingestor.prune_seen(seen.received_at + retention - timedelta(seconds=1)) == 0
    assert ingestor.handle(TOPIC, raw).status == "duplicate"
    assert ingestor.prune_seen(seen.received_at + retention + timedelta(seconds=1)) == 1
    assert rows(sessions, SeenMessage) == []
    # A copy arriving after that long is stored again; the series store keeps one point.
    assert ingestor.handle(TOPIC, raw).status == "accepted"
    assert series.count() == 1


def test_redelivered_drift_and_health_are_not_doubled(
    ingestor: Ingestor, series: SqliteSeriesStore
) -> None:
    drift_raw = payload(AGENT, 0, drift_events("pump-1", 2) + drift_events(None, 1))
    health_raw = payload(AGENT, 1, [health_report(0, 10)])
    batch = [RawMessage(DRIFT_TOPIC, drift_raw), RawMessage(HEALTH_TOPIC, health_raw)]
    first = ingestor.handle_batch(batch + batch)
    again = ingestor.handle_batch(batch)  # redelivered later, e.g. after a reconnect

    assert [o.status for o in first] == ["accepted", "accepted", "duplicate", "duplicate"]
    assert [o.status for o in again] == ["duplicate", "duplicate"]
    assert (series.drift_count(), series.health_count()) == (3, 1)
    counts = ingestor.counts
    assert (counts.drift_events, counts.health_reports, counts.duplicates) == (3, 1, 4)

    # The same items re-sent under new msg_ids (an agent that lost its outbox acks):
    # accepted, but the store still holds each event and report once.
    resent = [
        RawMessage(DRIFT_TOPIC, payload(AGENT, 2, drift_events("pump-1", 2))),
        RawMessage(HEALTH_TOPIC, payload(AGENT, 3, [health_report(0, 10)])),
    ]
    assert [o.status for o in ingestor.handle_batch(resent)] == ["accepted", "accepted"]
    assert (series.drift_count(), series.health_count()) == (3, 1)
    assert {e.seq for e in series.drift_events(asset="pump-1")} == {2}  # rewritten in place


# -- bad input ------------------------------------------------------------------------
def _good() -> bytes:
    return payload(AGENT, 0, predictions("pump-1", [0.5]))


def _nan_payload() -> bytes:
    return rewritten(_good(), lambda data: data["items"][0].update(score=float("nan")))


def _schema_2() -> bytes:
    return rewritten(_good(), lambda data: data.update(schema=2))


def _without(field: str) -> bytes:
    return rewritten(_good(), lambda data: data.pop(field))


def _asset(name: str) -> bytes:
    """A payload naming an asset the wire models refuse to build, as a foreign producer might."""
    return rewritten(_good(), lambda data: data["items"][0].update(asset=name))


def _health_on_predictions_topic() -> bytes:
    return rewritten(_good(), lambda data: data.update(items=[
        {"kind": "health", "at": data["ts"], "windows_scored": 1, "outbox_depth": 0}]))


def _reversed_window() -> bytes:
    def swap(data: dict[str, Any]) -> None:
        item = data["items"][0]
        item["window_start"], item["window_end"] = item["window_end"], item["window_start"]

    return rewritten(_good(), swap)


GOOD = _good()
BAD_INPUTS = [
    pytest.param("linewatch/v2/plant1/line3/gw-7/predictions", GOOD, "bad_topic", id="wrong-root"),
    pytest.param("linewatch/v1/plant1/line3/gw-7/cmd", GOOD, "bad_topic", id="unknown-kind"),
    pytest.param(TOPIC, b"x" * (MAX_PAYLOAD_BYTES + 1), "too_large", id="too-large"),
    pytest.param(TOPIC, b"{not json", "malformed", id="not-json"),
    pytest.param(TOPIC, b"\xff\xfe\x00", "malformed", id="not-utf8"),
    pytest.param(TOPIC, b"[1, 2]", "malformed", id="not-an-object"),
    pytest.param(TOPIC, _schema_2(), "unknown_schema", id="schema-2"),
    pytest.param(TOPIC, _nan_payload(), "invalid", id="nan-score"),
    pytest.param(TOPIC, _without("msg_id"), "invalid", id="missing-msg-id"),
    pytest.param(data_topic("gw-8"), GOOD, "invalid", id="agent-mismatch"),
    pytest.param(TOPIC, _reversed_window(), "invalid", id="window-reversed"),
    pytest.param(TOPIC, _asset("pump\\1"), "invalid", id="backslash"),
    pytest.param(TOPIC, _asset("pump\x07"), "invalid", id="control-character"),
    pytest.param(TOPIC, _health_on_predictions_topic(), "invalid", id="kind-mismatch"),
    pytest.param(f"linewatch/v1/{'s' * 200}/line3/{AGENT}/predictions", GOOD, "bad_topic",
                 id="long-site"),
    pytest.param(f"linewatch/v1/plant1/li\\ne/{AGENT}/predictions", GOOD, "bad_topic",
                 id="backslash-in-topic"),
    pytest.param(data_topic(AGENT, "status"), GOOD, "invalid", id="envelope-on-status"),
]


@pytest.mark.parametrize(("topic", "raw", "reason"), BAD_INPUTS)
def test_bad_input_is_rejected_counted_quarantined(
    ingestor: Ingestor,
    series: SqliteSeriesStore,
    sessions: SessionFactory,
    topic: str,
    raw: bytes,
    reason: str,
) -> None:
    outcome = ingestor.handle(topic, raw)

    assert (outcome.status, outcome.reason) == ("rejected", reason)
    assert outcome.error
    assert ingestor.rejected == Counter({reason: 1})
    (row,) = rows(sessions, QuarantinedMessage)
    assert (row.topic, row.reason, row.error) == (topic, reason, outcome.error)
    assert row.payload == raw[:QUARANTINE_MAX_BYTES]
    assert row.payload_len == len(raw)
    assert series.count() == 0
    assert rows(sessions, SeenMessage) == []


def test_bad_input_does_not_disturb_the_rest_of_the_batch(
    ingestor: Ingestor, series: SqliteSeriesStore
) -> None:
    good = payload(AGENT, 1, predictions("pump-1", [0.4]))
    outcomes = ingestor.handle_batch(
        [
            RawMessage(TOPIC, b"{"),
            RawMessage(TOPIC, good),
            RawMessage(TOPIC, _nan_payload()),
        ]
    )
    assert [o.status for o in outcomes] == ["rejected", "accepted", "rejected"]
    assert series.count() == 1


def test_rejections_are_logged_once_per_reason(
    ingestor: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggregator.quarantine")
    ingestor.handle_batch([RawMessage(TOPIC, b"{one"), RawMessage(TOPIC, b"{two")])
    ingestor.handle(TOPIC, _schema_2())
    ingestor.handle(TOPIC, b"{three")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "rejected" in r.message]
    assert ["malformed" in w.message for w in warnings] == [True, False]
    assert "unknown_schema" in warnings[1].message
    assert len(debug) == 2
    assert "b'{one'" in warnings[0].message  # the payload is shown, truncated


def test_logged_payload_is_truncated(ingestor: Ingestor, caplog: pytest.LogCaptureFixture) -> None:
    ingestor.handle(TOPIC, b"{" + b"z" * 5000)
    (record,) = caplog.records
    assert len(record.message) < 600
    assert "5001 bytes" in record.message


# -- series store outage --------------------------------------------------------------
class DownStore:
    """A series store whose backend is unreachable (unit-test stand-in, no server)."""

    name = "down"

    def write(self, *points: object, **kinds: object) -> None:
        raise SeriesUnavailableError("InfluxDB at http://127.0.0.1:9: connection refused")


def test_series_outage_marks_nothing_and_the_retry_stores_once(
    ingestor: Ingestor, series: SqliteSeriesStore, sessions: SessionFactory
) -> None:
    batch = [
        RawMessage(TOPIC, payload(AGENT, 0, predictions("pump-1", [0.9, 0.9, 0.9]))),
        RawMessage(TOPIC, b"{bad"),
        RawMessage(DRIFT_TOPIC, payload(AGENT, 1, drift_events("pump-1", 2))),
        RawMessage(HEALTH_TOPIC, payload(AGENT, 2, [health_report(0, 3)])),
    ]
    ingestor.series = DownStore()  # type: ignore[assignment]
    with pytest.raises(SeriesUnavailableError):
        ingestor.handle_batch(batch)
    assert rows(sessions, SeenMessage) == []
    assert rows(sessions, QuarantinedMessage) == []
    assert rows(sessions, Ticket) == []
    assert ingestor.counts.accepted == 0 and ingestor.rejected == Counter()

    ingestor.series = series
    outcomes = ingestor.handle_batch(batch)
    assert [o.status for o in outcomes] == ["accepted", "rejected", "accepted", "accepted"]
    assert series.count() == 3
    assert (series.drift_count(), series.health_count()) == (2, 1)
    assert len(rows(sessions, Ticket)) == 1
    counts = ingestor.counts
    assert (counts.predictions, counts.drift_events, counts.health_reports) == (3, 2, 1)


# -- rules and tickets ----------------------------------------------------------------
def test_k_of_n_opens_one_ticket_and_later_triggers_escalate(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    # k=3, n=5 (defaults): two alerts are not enough, the third opens a ticket.
    ingestor.handle(TOPIC, payload(AGENT, 0, predictions("pump-1", [0.9, 0.2, 0.8])))
    assert rows(sessions, Ticket) == []
    ingestor.handle(TOPIC, payload(AGENT, 1, predictions("pump-1", [0.95], start=3)))
    (ticket,) = rows(sessions, Ticket)
    assert (ticket.kind, ticket.asset, ticket.status, ticket.escalations) == (
        "maintenance",
        "pump-1",
        "open",
        0,
    )
    assert (ticket.agent, ticket.site, ticket.line) == (AGENT, "plant1", "line3")
    assert (ticket.model_name, ticket.model_version, ticket.threshold) == (
        MODEL.name,
        MODEL.version,
        MODEL.threshold,
    )
    assert ticket.evidence["k"] == 3 and ticket.evidence["n"] == 5
    assert [s["score"] for s in ticket.evidence["scores"]] == [0.9, 0.2, 0.8, 0.95]

    ingestor.handle(TOPIC, payload(AGENT, 2, predictions("pump-1", [0.97], start=4)))
    (ticket,) = rows(sessions, Ticket)
    assert ticket.escalations == 1
    assert [s["score"] for s in ticket.evidence["scores"]] == [0.9, 0.2, 0.8, 0.95, 0.97]


def test_tickets_of_one_batch_keep_their_own_models_threshold(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    # Two models with two thresholds in one batch: each ticket names the threshold of the
    # message whose window triggered it, however the rule groups the batch's windows.
    other = MODEL.model_copy(update={"version": "2.0.0", "threshold": 0.5})
    ingestor.handle_batch([
        RawMessage(TOPIC, payload(AGENT, 0, predictions("pump-1", [0.9, 0.8, 0.75]))),
        RawMessage(data_topic("gw-8"), payload("gw-8", 0, predictions(
            "pump-2", [0.6, 0.55, 0.52], threshold=0.5), other)),
        RawMessage(TOPIC, payload(AGENT, 1, predictions(
            "pump-3", [0.2, 0.6, 0.55, 0.52], threshold=0.5), other)),
    ])
    found = {t.asset: (t.agent, t.model_version, t.threshold, t.escalations)
             for t in rows(sessions, Ticket)}
    assert found == {"pump-1": (AGENT, MODEL.version, 0.7, 0),
                     "pump-2": ("gw-8", "2.0.0", 0.5, 0),
                     "pump-3": (AGENT, "2.0.0", 0.5, 0)}


def test_tickets_do_not_depend_on_how_windows_were_batched(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    """The same windows in one message (a backlog) and one message each (live): the same
    ticket, opened at the window that completed k of n, with one escalation per later
    trigger and the same evidence; only ``received_at`` tells them apart."""
    scores = [0.9, 0.2, 0.8, 0.95, 0.1, 0.2, 0.1, 0.9, 0.9, 0.9]  # triggers at 4, 5, 10
    topic_live, topic_backlog = data_topic("gw-a", site="live"), data_topic("gw-b", site="late")
    for i, score in enumerate(scores):
        ingestor.handle(topic_live, payload("gw-a", i, predictions("pump-1", [score], start=i)))
    ingestor.handle(topic_backlog, payload("gw-b", 0, predictions("pump-1", scores)))
    by_site = {t.site: t for t in rows(sessions, Ticket)}
    live, late = by_site["live"], by_site["late"]
    # Window 4 (ending T0 + 4 min) completed 3 of 5: that is when the ticket opened.
    assert live.opened_at == late.opened_at == T0 + timedelta(minutes=4)
    assert live.escalations == late.escalations == 2
    assert live.evidence == late.evidence
    assert [s["score"] for s in late.evidence["scores"]] == scores
    assert live.received_at is not None and late.received_at is not None
    assert late.received_at > live.received_at > live.opened_at


def test_redelivered_windows_do_not_escalate(ingestor: Ingestor, sessions: SessionFactory) -> None:
    items = predictions("pump-1", [0.9, 0.9, 0.9])
    ingestor.handle(TOPIC, payload(AGENT, 0, items))
    # Same windows under a new msg_id (an agent that re-sent after losing its outbox ack).
    assert ingestor.handle(TOPIC, payload(AGENT, 1, items)).status == "accepted"
    (ticket,) = rows(sessions, Ticket)
    assert ticket.escalations == 0


def test_windows_are_ruled_in_window_order(
    tmp_path: Path, series: SqliteSeriesStore, sessions: SessionFactory
) -> None:
    settings = Settings(rule_k=2, rule_n=2, series_path=tmp_path / "s.db")
    ingestor = Ingestor(series, sessions, settings)
    # Newest first in the payload: fed in arrival order, the older window would be stale.
    ingestor.handle(TOPIC, payload(AGENT, 0, predictions("pump-1", [0.9, 0.9])[::-1]))
    assert len(rows(sessions, Ticket)) == 1


def test_rule_state_survives_a_restart(
    series: SqliteSeriesStore, sessions: SessionFactory, settings: Settings
) -> None:
    Ingestor(series, sessions, settings).handle(
        TOPIC, payload(AGENT, 0, predictions("pump-1", [0.9, 0.9]))
    )
    restarted = Ingestor(series, sessions, settings)
    restarted.handle(TOPIC, payload(AGENT, 1, predictions("pump-1", [0.9], start=2)))
    assert len(rows(sessions, Ticket)) == 1


def _resolve(sessions: SessionFactory, ticket_id: int) -> None:
    with sessions() as session:
        tickets.resolve(session, ticket_id, "confirmed_failure", "bearing replaced")
        session.commit()


def test_resolved_ticket_lets_the_next_trigger_open_a_new_one_when_no_cooldown(
    series: SqliteSeriesStore, sessions: SessionFactory, settings: Settings
) -> None:
    ingestor = Ingestor(series, sessions, settings.model_copy(update={"rule_cooldown_s": 0}))
    ingestor.handle(TOPIC, payload(AGENT, 0, predictions("pump-1", [0.9, 0.9, 0.9])))
    (first,) = open_tickets(sessions, "pump-1")
    _resolve(sessions, first.id)
    ingestor.handle(TOPIC, payload(AGENT, 1, predictions("pump-1", [0.9], start=3)))
    (second,) = open_tickets(sessions, "pump-1")
    assert second.id != first.id
    assert len(rows(sessions, Ticket)) == 2


def test_no_new_ticket_within_the_cooldown_after_a_resolution(
    ingestor: Ingestor, sessions: SessionFactory, settings: Settings
) -> None:
    assert settings.rule_cooldown_s == 3600
    ingestor.handle(TOPIC, payload(AGENT, 0, predictions("pump-1", [0.9, 0.9, 0.9])))
    (first,) = open_tickets(sessions, "pump-1")
    _resolve(sessions, first.id)
    ingestor.handle(TOPIC, payload(AGENT, 1, predictions("pump-1", [0.9], start=3)))
    assert open_tickets(sessions, "pump-1") == []
    # Another asset is not held back by pump-1's cooldown.
    ingestor.handle(TOPIC, payload(AGENT, 2, predictions("fan-2", [0.9, 0.9, 0.9])))
    assert len(open_tickets(sessions, "fan-2")) == 1


def test_assets_get_separate_tickets(ingestor: Ingestor, sessions: SessionFactory) -> None:
    items = predictions("pump-1", [0.9, 0.9, 0.9]) + predictions("fan-2", [0.9, 0.9, 0.9])
    ingestor.handle(TOPIC, payload(AGENT, 0, items))
    assert sorted(t.asset for t in rows(sessions, Ticket)) == ["fan-2", "pump-1"]


def test_same_asset_at_two_sites_has_its_own_window_and_ticket(
    series: SqliteSeriesStore, sessions: SessionFactory, settings: Settings
) -> None:
    """Asset names are only unique within a site: plant1's and plant2's engine-001 are two
    machines, with two k-of-n windows (in memory and in SQL) and two tickets."""
    settings = settings.model_copy(update={"rule_k": 2, "rule_n": 3})
    ingestor = Ingestor(series, sessions, settings)
    topic_a = data_topic("gw-a", site="plant1")
    topic_b = data_topic("gw-b", site="plant2")
    # One alert each, on interleaved windows: 2 of 3 if they shared a window, 1 of 3 apart.
    ingestor.handle_batch(
        [
            RawMessage(topic_a, payload("gw-a", 0, predictions("engine-001", [0.9]))),
            RawMessage(topic_b, payload("gw-b", 0, predictions("engine-001", [0.9], start=1))),
        ]
    )
    assert rows(sessions, Ticket) == []
    # plant2's older window is not stale for plant1, and plant1's second alert is its own.
    ingestor.handle(topic_a, payload("gw-a", 1, predictions("engine-001", [0.95], start=2)))
    (ticket_a,) = rows(sessions, Ticket)
    assert (ticket_a.site, ticket_a.asset, ticket_a.agent) == ("plant1", "engine-001", "gw-a")
    assert [s["score"] for s in ticket_a.evidence["scores"]] == [0.9, 0.95]

    # A restarted aggregator: plant2's window comes back from SQL on its own.
    restarted = Ingestor(series, sessions, settings)
    restarted.handle(topic_b, payload("gw-b", 1, predictions("engine-001", [0.97], start=3)))
    by_site = {t.site: t for t in rows(sessions, Ticket)}
    assert sorted(by_site) == ["plant1", "plant2"]
    ticket_b = by_site["plant2"]
    assert (ticket_b.asset, ticket_b.agent, ticket_b.escalations) == ("engine-001", "gw-b", 0)
    assert [s["score"] for s in ticket_b.evidence["scores"]] == [0.9, 0.97]
    assert by_site["plant1"].escalations == 0  # plant2's trigger did not escalate plant1's

    # Each site's next trigger escalates its own ticket only.
    restarted.handle(topic_a, payload("gw-a", 2, predictions("engine-001", [0.99], start=4)))
    assert {t.site: t.escalations for t in rows(sessions, Ticket)} == {"plant1": 1, "plant2": 0}
    states = {(r.site, r.asset): [w["score"] for w in r.windows] for r in rows(sessions, RuleState)}
    assert states == {
        ("plant1", "engine-001"): [0.9, 0.95, 0.99],
        ("plant2", "engine-001"): [0.9, 0.97],
    }


def test_same_asset_at_two_sites_in_one_batch_opens_two_tickets(
    ingestor: Ingestor, sessions: SessionFactory
) -> None:
    items = predictions("engine-001", [0.9, 0.9, 0.9])
    ingestor.handle_batch(
        [
            RawMessage(data_topic("gw-a", site="plant1"), payload("gw-a", 0, items)),
            RawMessage(data_topic("gw-b", site="plant2"), payload("gw-b", 0, items)),
        ]
    )
    found = sorted((t.site, t.asset, t.agent, t.escalations) for t in rows(sessions, Ticket))
    assert found == [("plant1", "engine-001", "gw-a", 0), ("plant2", "engine-001", "gw-b", 0)]
