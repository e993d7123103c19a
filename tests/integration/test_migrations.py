"""SQL schema migrations on SQLite and PostgreSQL: a plant's database made by the previous
release (``create_all``, no migration history) upgrades at start and keeps its data.

``OLD_DDL`` is what ``Base.metadata.create_all`` emitted before commit a232ddb (the
re-key by site), frozen here from ``git show a232ddb^:aggregator/db.py`` so the test does
not depend on revision 0001 being right: it checks that too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    Engine,
    MetaData,
    create_engine,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

from aggregator import migrations, tickets
from aggregator.db import (
    AgentDelivery,
    AgentRecord,
    Base,
    QuarantinedMessage,
    RuleState,
    SeenMessage,
    Ticket,
    open_engine,
    open_sessions,
)
from aggregator.errors import SchemaError

HEAD = migrations.head_revision()

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOWS = [
    {"window_end": "2026-03-01T11:58:00+00:00", "score": 0.9, "alert": True},
    {"window_end": "2026-03-01T11:59:00+00:00", "score": 0.95, "alert": True},
]
EVIDENCE = {"k": 3, "n": 5, "scores": WINDOWS}
TICKET: dict[str, Any] = dict(
    agent="gw-1", line="line3", model_name="m", model_version="1", threshold=0.7
)

# What the previous release's create_all emitted; {ts}, {serial} and {blob} are the only
# words in which SQLite's and PostgreSQL's DDL differed.
OLD_DDL = """
CREATE TABLE agents (
    agent_id VARCHAR(128) NOT NULL, site VARCHAR(128) NOT NULL, line VARCHAR(128) NOT NULL,
    state VARCHAR(16) NOT NULL, state_at {ts}, last_seen {ts}, last_seq BIGINT,
    model_name VARCHAR(128), model_version VARCHAR(128), predictions_count BIGINT NOT NULL,
    PRIMARY KEY (agent_id),
    CONSTRAINT ck_agents_state CHECK (state IN ('online', 'offline', 'unknown'))
);
CREATE TABLE quarantine (
    id {serial} NOT NULL, received_at {ts} NOT NULL, topic TEXT NOT NULL,
    reason VARCHAR(32) NOT NULL, error TEXT NOT NULL, payload {blob} NOT NULL,
    payload_len INTEGER NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_quarantine_reason ON quarantine (reason);
CREATE INDEX ix_quarantine_received_at ON quarantine (received_at);
CREATE TABLE rule_state (
    rule VARCHAR(32) NOT NULL, asset VARCHAR(128) NOT NULL, windows JSON NOT NULL,
    updated_at {ts} NOT NULL,
    PRIMARY KEY (rule, asset)
);
CREATE TABLE seen_messages (
    msg_id VARCHAR(36) NOT NULL, agent VARCHAR(128) NOT NULL, seq BIGINT NOT NULL,
    received_at {ts} NOT NULL,
    PRIMARY KEY (msg_id)
);
CREATE INDEX ix_seen_messages_received_at ON seen_messages (received_at);
CREATE TABLE tickets (
    id {serial} NOT NULL, kind VARCHAR(16) NOT NULL, asset VARCHAR(128) NOT NULL,
    agent VARCHAR(128) NOT NULL, site VARCHAR(128) NOT NULL, line VARCHAR(128) NOT NULL,
    status VARCHAR(16) NOT NULL, opened_at {ts} NOT NULL, updated_at {ts} NOT NULL,
    resolved_at {ts}, outcome VARCHAR(32), note TEXT, model_name VARCHAR(128) NOT NULL,
    model_version VARCHAR(128) NOT NULL, threshold FLOAT NOT NULL,
    escalations INTEGER NOT NULL, evidence JSON NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_tickets_kind CHECK (kind IN ('maintenance', 'retraining')),
    CONSTRAINT ck_tickets_status CHECK (status IN ('open', 'acknowledged', 'resolved')),
    CONSTRAINT ck_tickets_outcome CHECK (outcome IS NULL OR outcome IN
        ('confirmed_failure', 'no_fault_found', 'other'))
);
CREATE UNIQUE INDEX uq_tickets_open_asset_kind ON tickets (asset, kind)
    WHERE status != 'resolved';
CREATE INDEX ix_tickets_status ON tickets (status)
"""
DIALECT_WORDS = {
    "sqlite": dict(ts="DATETIME", serial="INTEGER", blob="BLOB"),
    "postgresql": dict(ts="TIMESTAMP WITH TIME ZONE", serial="SERIAL", blob="BYTEA"),
}


def _drop_everything(url: str) -> None:
    engine = create_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database; PostgreSQL's lives for the whole session, so it is emptied."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/linewatch.db"
        return
    pg_url: str = request.getfixturevalue("postgres_url")
    _drop_everything(pg_url)
    yield pg_url
    _drop_everything(pg_url)


def _raw(url: str) -> Engine:
    """An engine that leaves the schema alone (open_engine would migrate)."""
    return open_engine(url, create=False)


def create_previous_release_db(url: str) -> None:
    """The previous release's tables, with an open ticket, rule state, an agent, seen
    msg_ids: a plant's database on the day it upgrades."""
    engine = _raw(url)
    words = DIALECT_WORDS[engine.dialect.name]
    with engine.begin() as conn:
        for statement in OLD_DDL.format(**words).split(";"):
            conn.execute(text(statement))
    _insert_plant_rows(engine)
    engine.dispose()


def _insert(engine: Engine, table: str, *rows: dict[str, Any]) -> None:
    """Rows through the table as the database has it (reflected), not through the models:
    the previous release's tables must not depend on what the models become."""
    tables = MetaData()
    tables.reflect(engine, only=[table])
    with engine.begin() as conn:
        conn.execute(insert(tables.tables[table]), list(rows))


def _insert_plant_rows(engine: Engine) -> None:
    _insert(engine, "agents", dict(
        agent_id="gw-1", site="plant1", line="line3", state="online", state_at=NOW,
        last_seen=NOW, last_seq=41, predictions_count=1234,
    ))
    _insert(
        engine, "tickets",
        dict(kind="maintenance", asset="pump-1", site="plant1", status="open", opened_at=NOW,
             updated_at=NOW, resolved_at=None, outcome=None, evidence=EVIDENCE,
             escalations=2, **TICKET),
        dict(kind="maintenance", asset="pump-2", site="plant1", status="resolved",
             opened_at=NOW, updated_at=NOW, resolved_at=NOW, outcome="no_fault_found",
             evidence=EVIDENCE, escalations=0, **TICKET),
    )
    _insert(engine, "seen_messages", *(
        dict(msg_id=f"00000000-0000-4000-8000-00000000000{i}", agent="gw-1", seq=40 + i,
             received_at=NOW)
        for i in (0, 1)
    ))
    _insert(engine, "quarantine", dict(
        received_at=NOW, topic="linewatch/v1/x", reason="bad_json", error="nope",
        payload=b"\x00garbage", payload_len=8,
    ))
    has_site = "site" in {c["name"] for c in inspect(engine).get_columns("rule_state")}
    _insert(engine, "rule_state", dict(
        rule="maintenance", asset="pump-1", windows=WINDOWS, updated_at=NOW,
        **({"site": "plant1"} if has_site else {}),
    ))


def schema_differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_previous_release_database_upgrades_at_start_and_keeps_its_data(url: str) -> None:
    create_previous_release_db(url)
    old = _raw(url)
    # The comparison has teeth: it sees what the re-key changed.
    differences = repr(schema_differences(old))
    assert "uq_tickets_open_site_asset_kind" in differences and "'site'" in differences
    old.dispose()

    engine = open_engine(url)
    try:
        assert migrations.current_revision(engine) == migrations.head_revision()
        assert schema_differences(engine) == []
        sessions = open_sessions(engine)
        with sessions() as session:
            rows = {t.asset: t for t in session.scalars(select(Ticket))}
            assert {a: (t.site, t.status) for a, t in rows.items()} == {
                "pump-1": ("plant1", "open"), "pump-2": ("plant1", "resolved"),
            }
            assert rows["pump-1"].evidence == EVIDENCE and rows["pump-1"].escalations == 2
            assert rows["pump-1"].opened_at == NOW
            state = session.get(RuleState, ("maintenance", "plant1", "pump-1"))
            assert state is not None and state.windows == WINDOWS and state.updated_at == NOW
            assert session.scalar(select(AgentRecord.predictions_count)) == 1234
            assert len(session.scalars(select(SeenMessage.msg_id)).all()) == 2
            assert session.scalar(select(QuarantinedMessage.payload)) == b"\x00garbage"

        # The code of this release works on the migrated rows: the open ticket escalates.
        with sessions() as session, session.begin():
            ticket, opened = tickets.open_or_escalate(
                session, tickets.Subject("pump-1", site="plant1", **TICKET), "maintenance",
                EVIDENCE, now=NOW,
            )
            assert ticket is not None and not opened
            assert (ticket.id, ticket.escalations) == (rows["pump-1"].id, 3)

        # The new invariant: one open ticket per (site, asset, kind). Another site's pump-1
        # is another machine (the old index refused it); a second one at plant1 is refused.
        with sessions() as session, session.begin():
            session.add(Ticket(kind="maintenance", asset="pump-1", site="plant2",
                               status="open", opened_at=NOW, updated_at=NOW,
                               evidence=EVIDENCE, escalations=0, **TICKET))
        with sessions() as session:
            session.add(Ticket(kind="maintenance", asset="pump-1", site="plant1",
                               status="acknowledged", opened_at=NOW, updated_at=NOW,
                               evidence=EVIDENCE, escalations=0, **TICKET))
            with pytest.raises(IntegrityError):
                session.commit()
    finally:
        engine.dispose()


def test_old_rule_state_is_given_every_site_the_database_knows(url: str) -> None:
    """The old row was shared by every site's asset of that name: each site keeps a copy."""
    create_previous_release_db(url)
    engine = _raw(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO agents (agent_id, site, line, state, predictions_count) "
            "VALUES ('gw-7', 'plant2', 'line1', 'unknown', 0)"
        ))
    engine.dispose()

    engine = open_engine(url)
    try:
        with open_sessions(engine)() as session:
            states = {(s.site, s.asset): s.windows for s in session.scalars(select(RuleState))}
        assert states == {("plant1", "pump-1"): WINDOWS, ("plant2", "pump-1"): WINDOWS}
    finally:
        engine.dispose()


def test_old_rule_state_is_kept_when_no_site_is_known(url: str) -> None:
    engine = _raw(url)
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), "0001")
    _insert(engine, "rule_state",
            dict(rule="maintenance", asset="pump-9", windows=WINDOWS, updated_at=NOW))
    engine.dispose()

    engine = open_engine(url)
    try:
        with open_sessions(engine)() as session:
            rows = [(s.site, s.asset, s.windows) for s in session.scalars(select(RuleState))]
        assert rows == [("", "pump-9", WINDOWS)]
    finally:
        engine.dispose()


def test_fresh_database_migrated_to_head_matches_the_models(url: str) -> None:
    """A model change without its migration fails here."""
    engine = open_engine(url)
    try:
        assert migrations.current_revision(engine) == migrations.head_revision()
        assert schema_differences(engine) == []
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {
            "alembic_version"
        }
    finally:
        engine.dispose()


def test_create_all_database_of_the_current_schema_is_stamped_not_altered(url: str) -> None:
    """Between the re-key and migrations, create_all made revision 0002's schema with no
    history: the same tables as 0002 builds, without an alembic_version."""
    engine = _raw(url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "0002")
            conn.execute(text("DROP TABLE alembic_version"))
        _insert_plant_rows(engine)
        result = migrations.upgrade(engine)
        assert (result.before, result.stamped, result.after) == (None, "0002", HEAD)
        assert migrations.current_revision(engine) == HEAD
        assert schema_differences(engine) == []
        with open_sessions(engine)() as session:
            assert session.scalar(select(Ticket.status).where(Ticket.asset == "pump-1")) == "open"
            assert session.get(RuleState, ("maintenance", "plant1", "pump-1")) is not None
    finally:
        engine.dispose()


def test_previous_release_database_is_stamped_0001_then_upgraded(url: str) -> None:
    create_previous_release_db(url)
    engine = _raw(url)
    try:
        assert migrations.current_revision(engine) is None
        result = migrations.upgrade(engine)
        assert (result.before, result.stamped, result.after) == (None, "0001", HEAD)
        again = migrations.upgrade(engine)  # a second start has nothing to do
        assert (again.before, again.stamped, again.after) == (HEAD, None, HEAD)
    finally:
        engine.dispose()


def test_known_agents_start_delivery_tracking_at_their_last_seq(url: str) -> None:
    """What an earlier release stored is taken as stored: no agent is asked for all it
    ever sent."""
    engine = _raw(url)
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), "0003")
    _insert(engine, "agents",
            dict(agent_id="gw-1", site="plant1", line="line3", state="online", last_seq=41,
                 predictions_count=1234),
            dict(agent_id="gw-2", site="plant1", line="line3", state="unknown", last_seq=None,
                 predictions_count=0))
    engine.dispose()

    engine = open_engine(url)
    try:
        with open_sessions(engine)() as session:
            (row,) = session.scalars(select(AgentDelivery))
        assert (row.agent_id, row.stored_through, row.top_seq, row.highest_seq) == (
            "gw-1", 41, 41, 41)
        assert (row.ranges, row.outstanding, row.messages, row.resend_id) == (
            {"received": [], "gaps": []}, 0, 0, None)
    finally:
        engine.dispose()


def _words(sql: Any) -> str:
    return " ".join(str(sql).split())


def _shape(engine: Engine) -> dict[str, Any]:
    """Everything reflection tells about the aggregator's tables, as comparable values."""
    inspector = inspect(engine)
    shape: dict[str, Any] = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        shape[table] = dict(
            columns=[(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                     for c in sorted(inspector.get_columns(table), key=lambda c: c["name"])],
            primary_key=inspector.get_pk_constraint(table)["constrained_columns"],
            indexes=sorted((i["name"], i["column_names"], i["unique"],
                            sorted((k, _words(v)) for k, v in i.get("dialect_options", {}).items()))
                           for i in inspector.get_indexes(table)),
            checks=sorted((c["name"], _words(c["sqltext"]))
                          for c in inspector.get_check_constraints(table)),
        )
    return shape


def test_revision_0001_is_the_previous_release_schema_and_0002_goes_back_to_it(
    url: str,
) -> None:
    create_previous_release_db(url)
    engine = _raw(url)
    previous = _shape(engine)
    engine.dispose()
    _drop_everything(url)
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink()

    engine = _raw(url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "0001")
        assert _shape(engine) == previous
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "head")
            command.downgrade(migrations.alembic_config(conn), "0001")
        assert _shape(engine) == previous
    finally:
        engine.dispose()


FAILING_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "{head}"


def upgrade():
    op.add_column("agents", sa.Column("retired_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE tickets SET status = 'resolved'")
    raise RuntimeError("revision 0099 failed halfway")
"""


def test_failed_upgrade_leaves_the_database_as_it_was(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stamp, every revision and a failing one after them run in one transaction: all or
    nothing."""
    scripts = tmp_path / "migrations"
    shutil.copytree(Path(migrations.__file__).parent, scripts)
    (scripts / "versions" / "0099_fails.py").write_text(FAILING_REVISION.format(head=HEAD))
    monkeypatch.setattr(migrations, "HERE", scripts)
    create_previous_release_db(url)
    engine = _raw(url)
    try:
        before = _shape(engine)
        with pytest.raises(RuntimeError, match="0099 failed halfway"):
            migrations.upgrade(engine)
        assert _shape(engine) == before
        assert "alembic_version" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT asset, status FROM tickets ORDER BY asset")).all() == [
                ("pump-1", "open"), ("pump-2", "resolved")
            ]
            assert conn.execute(text("SELECT rule, asset FROM rule_state")).all() == [
                ("maintenance", "pump-1")
            ]
    finally:
        engine.dispose()


def test_unknown_schema_without_history_is_refused_untouched(url: str) -> None:
    engine = _raw(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE tickets (id INTEGER PRIMARY KEY, what TEXT)"))
        with pytest.raises(SchemaError, match="tables that differ.*tickets"):
            migrations.upgrade(engine)
        assert set(inspect(engine).get_table_names()) == {"tickets"}
    finally:
        engine.dispose()


def test_other_applications_tables_do_not_count_as_a_schema(url: str) -> None:
    engine = _raw(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
        result = migrations.upgrade(engine)
        assert (result.before, result.stamped, result.after) == (None, None, HEAD)
        assert schema_differences(engine) != []  # someone_elses is not in our models...
        assert "someone_elses" in inspect(engine).get_table_names()  # ...and stays
    finally:
        engine.dispose()


def test_revision_from_a_newer_release_is_refused(url: str) -> None:
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(SchemaError, match="'9999'.*newer aggregator"):
            open_engine(url)
    finally:
        engine.dispose()


# One replica: everything imported, then it waits for the word to open the database.
REPLICA = """
import sys
from aggregator import migrations
from aggregator.db import open_engine
print("ready", flush=True)
sys.stdin.readline()
print(migrations.current_revision(open_engine(sys.argv[1])), flush=True)
"""


def test_two_replicas_starting_together_both_come_up(url: str) -> None:
    """Two processes open the previous release's database at the same moment: one
    migrates, the other waits for it and finds the database at head."""
    create_previous_release_db(url)
    replicas = [
        subprocess.Popen([sys.executable, "-c", REPLICA, url], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None and replica.stdout.readline() == "ready\n"
        for replica in replicas:
            assert replica.stdin is not None
            replica.stdin.write("go\n")
            replica.stdin.flush()
        outcomes = [replica.communicate(timeout=60) for replica in replicas]
    finally:
        for replica in replicas:
            replica.kill()
            replica.wait()
    assert [(r.returncode, out) for r, (out, _err) in zip(replicas, outcomes, strict=True)] == [
        (0, f"{HEAD}\n"), (0, f"{HEAD}\n")
    ], [err for _out, err in outcomes]
    engine = _raw(url)
    try:
        with open_sessions(engine)() as session:
            sites = session.scalars(select(RuleState.site)).all()
        assert sites == ["plant1"]  # migrated once: neither copied twice nor lost
    finally:
        engine.dispose()


def test_api_tokens_revision_goes_back_only_without_an_audit_trail(url: str) -> None:
    """Revision 0005 (API tokens, audit log) downgrades to the revision before it, but not
    while the audit log holds a record nobody could rebuild: then nothing changes."""
    from aggregator import audit, auth

    engine = open_engine(url)
    try:
        with open_sessions(engine)() as session:
            _, token = auth.create_token(session, "alice", "admin", audit.Actor("tests"))
            session.commit()
        with engine.begin() as conn:  # the revisions after 0005 first
            command.downgrade(migrations.alembic_config(conn), "0005")
        before = _shape(engine)
        with pytest.raises(RuntimeError, match="audit log holds 1 entries"), \
                engine.begin() as conn:
            command.downgrade(migrations.alembic_config(conn), "-1")
        assert _shape(engine) == before and migrations.current_revision(engine) == "0005"
        with open_sessions(engine)() as session:
            assert auth.verify(session, token).name == "alice"
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log"))
            command.downgrade(migrations.alembic_config(conn), "-1")
        assert not {"api_tokens", "audit_log"} & set(inspect(engine).get_table_names())
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "head")
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_ticket_lifecycle_revision_keeps_tickets_and_goes_back_only_without_new_facts(
    url: str,
) -> None:
    """Revision 0006 (assignees, failure times, notes, reported failures, the full outcome
    vocabulary): a database at 0005 upgrades with its tickets as they were; the new
    outcomes are accepted, unknown ones still refused; a downgrade refuses while anything
    0005 cannot hold exists, then goes back to 0005's schema exactly."""
    from aggregator import failures

    engine = _raw(url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "0005")
        at_0005 = _shape(engine)
        _insert_plant_rows(engine)
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "head")
        assert schema_differences(engine) == []
        sessions = open_sessions(engine)
        with sessions() as session:
            rows = {t.asset: t for t in session.scalars(select(Ticket))}
            assert (rows["pump-1"].status, rows["pump-1"].assignee, rows["pump-1"].failed_at,
                    rows["pump-1"].notes) == ("open", None, None, [])
            assert rows["pump-2"].outcome == "no_fault_found"
            pump1 = rows["pump-1"].id
        with sessions() as session:
            tickets.resolve(session, pump1, "preventive_action", "bearing swapped", now=NOW)
            session.commit()
        with sessions() as session, pytest.raises(IntegrityError):
            session.execute(text("UPDATE tickets SET outcome = 'maybe' WHERE asset = 'pump-2'"))

        def downgrade_refused(what: str) -> None:
            before = _shape(engine)
            with pytest.raises(RuntimeError, match=what), engine.begin() as conn:
                command.downgrade(migrations.alembic_config(conn), "0005")
            assert _shape(engine) == before and migrations.current_revision(engine) == HEAD

        downgrade_refused("1 tickets with an assignee, a failure time or an outcome")
        with engine.begin() as conn:
            conn.execute(text("UPDATE tickets SET outcome = 'other' WHERE asset = 'pump-1'"))
        with sessions() as session:
            tickets.add_note(session, pump1, "checked", "alice", now=NOW)
            failures.report(session, failures.FailureReport("plant1", "line3", "pump-9", NOW),
                            "alice", now=NOW)
            session.commit()
        downgrade_refused("1 ticket notes, 1 reported failures")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM ticket_notes"))
            conn.execute(text("DELETE FROM failures"))
            command.downgrade(migrations.alembic_config(conn), "0005")
        assert _shape(engine) == at_0005
        with engine.connect() as conn:
            assert conn.execute(text("SELECT asset, outcome FROM tickets ORDER BY asset")
                                ).all() == [("pump-1", "other"), ("pump-2", "no_fault_found")]
    finally:
        engine.dispose()
