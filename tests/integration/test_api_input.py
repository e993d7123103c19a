"""Bad input to the REST API is refused with 422 naming the rule, never a 500, on every
backend; a store that is down is a 503 with the declared error body.

Regressions of issue 6 item 3 (found by schemathesis): a ticket id of 2^63 or more, a
``since`` outside what InfluxDB can store, a number taken for a date.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aggregator_support import (
    T0,
    Publisher,
    api_token,
    bearer,
    data_topic,
    drift_events,
    drop_schema,
    payload,
    predictions,
    start_service,
    store_settings,
    wait_until,
)
from servers import InfluxDatabase, free_port

from aggregator.api.params import MAX_TICKET_ID, MAX_YEAR, MIN_YEAR
from aggregator.server import ServerThread
from contract.wire import MAX_NAME

pytestmark = pytest.mark.integration

RANGE = f"{MIN_YEAR}-01-01T00:00:00Z .. {MAX_YEAR}-12-31T23:59:59.999999Z"


class Service:
    """A running aggregator (embedded broker) and an HTTP client to it, with a write token."""

    def __init__(self, tmp_path: Path, **changes: Any) -> None:
        self.broker_port = free_port()
        self.server: ServerThread = start_service(
            store_settings(tmp_path, embedded_broker_port=self.broker_port, http_port=0, **changes)
        )
        self.http = httpx.Client(base_url=self.server.url, timeout=10,
                                 headers=bearer(api_token(self.server, "write")))

    def publish(self, agent: str, kind: str, raw: bytes) -> None:
        with Publisher("127.0.0.1", self.broker_port, data_topic(agent, kind)) as pub:
            pub.publish(raw)

    def close(self) -> None:
        self.http.close()
        self.server.stop()


def validation_messages(response: httpx.Response) -> str:
    """FastAPI's 422 body, its messages joined: what a client reads."""
    assert response.status_code == 422, response.text
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                      for e in response.json()["detail"])


# -- /drift on both series backends -------------------------------------------------------
@pytest.fixture(params=["sqlite", "influx1"])
def drift_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    """An aggregator on either series store, with 3 drift events of gw-1 (T0 .. T0+2min)."""
    changes: dict[str, Any] = {}
    if request.param == "influx1":
        influxdb: InfluxDatabase = request.getfixturevalue("influxdb")
        changes = {"influx_url": influxdb.url, "influx_database": influxdb.database}
    service = Service(tmp_path, **changes)
    try:
        service.publish("gw-1", "drift", payload("gw-1", 0, drift_events("pump-1", 3)))
        wait_until(lambda: len(service.http.get("/drift").json()) == 3, 10, what="3 events")
        yield service
    finally:
        service.close()


def test_since_outside_the_stored_range_is_422_naming_the_range(drift_api: Service) -> None:
    for since in ("0001-01-01T00:00:00Z", "2300-01-01T00:00:00Z", "1677-09-21T00:12:44Z"):
        message = validation_messages(drift_api.http.get("/drift", params={"since": since}))
        assert message == f"query.since: Value error, must lie in {RANGE} (the range every " \
            f"series backend stores), got {since}"


def test_since_must_be_an_iso_datetime_with_a_time_zone(drift_api: Service) -> None:
    for since in (
        "0.5",  # pydantic alone reads a number as seconds since the epoch
        "1772352000",
        "2026-03-01T08:00:00",  # no time zone
        "2026-03-01 08:00:00Z",
        "2026-03-01",
        "",
    ):
        message = validation_messages(drift_api.http.get("/drift", params={"since": since}))
        assert message == "query.since: Value error, must be an ISO-8601 date-time with a " \
            "time zone, e.g. 2026-03-01T08:00:00Z", since
    # A + left unencoded in a query string arrives as a space.
    message = validation_messages(
        drift_api.http.get("/drift?since=2026-03-01T09:00:00+01:00")
    )
    assert message.endswith("(in a URL, write the + of an offset as %2B)")
    for since in ("2026-02-30T08:00:00Z", "2026-03-01T08:00:00.1234567Z"):
        message = validation_messages(drift_api.http.get("/drift", params={"since": since}))
        assert message.startswith("query.since: "), since


def test_since_at_the_edges_of_the_range_is_answered(drift_api: Service) -> None:
    """The earliest and latest times the API accepts, with the offsets that push them
    furthest out, are times every backend can compare against."""

    def ats(since: str) -> list[datetime]:
        response = drift_api.http.get("/drift", params={"since": since})
        assert response.status_code == 200, response.text
        return [datetime.fromisoformat(e["at"]) for e in response.json()]

    everything = [T0 + timedelta(minutes=m) for m in (2, 1, 0)]
    assert ats(f"{MIN_YEAR}-01-01T00:00:00+23:59") == everything
    assert ats(f"{MIN_YEAR}-01-01T00:00:00Z") == everything
    assert ats(f"{MAX_YEAR}-12-31T23:59:59.999999-23:59") == []
    assert ats(f"{MAX_YEAR}-12-31T23:59:59Z") == []
    assert ats("2026-03-01T09:01:00+01:00") == everything[:2]  # = T0 + 1 min


def test_drift_filters_the_contract_forbids_are_422_and_the_rest_answered(
    drift_api: Service,
) -> None:
    for name, value in (
        ("agent", ""),
        ("agent", "x" * (MAX_NAME + 1)),
        ("asset", "pump\\1"),
        ("detector", "range\x00"),
        ("agent", "gw\n1"),
        ("limit", "0"),
        ("limit", "10001"),
        ("limit", "1.5"),
    ):
        message = validation_messages(drift_api.http.get("/drift", params={name: value}))
        assert message.startswith(f"query.{name}: "), (name, value)
    for params, found in (
        ({"agent": "x" * MAX_NAME}, 0),
        ({"asset": "pump 1, \"north\"='a'"}, 0),  # quotes, comma, =, space: InfluxQL literals
        ({"detector": "détecteur/ü+#"}, 0),
        ({"agent": "gw-1", "asset": "pump-1", "detector": "range", "limit": "2"}, 2),
    ):
        response = drift_api.http.get("/drift", params=params)
        assert response.status_code == 200, (params, response.text)
        assert len(response.json()) == found, params


def test_series_store_down_is_503_with_the_error_body(
    influxdb: InfluxDatabase, tmp_path: Path
) -> None:
    service = Service(tmp_path, influx_url=influxdb.url, influx_database=influxdb.database)
    try:
        influxdb.server.stop()
        response = service.http.get("/drift")
        assert response.status_code == 503
        assert set(response.json()) == {"detail"} and response.json()["detail"]
        schema = service.http.get("/openapi.json").json()
        declared = schema["paths"]["/drift"]["get"]["responses"]["503"]
        assert declared["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"
        }
        # /agents lives in SQL: it still answers, without health.
        assert service.http.get("/agents").status_code == 200
    finally:
        influxdb.server.start()
        service.close()


# -- ticket ids on both SQL backends ------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def tickets_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    """An aggregator on either SQL database, with one open maintenance ticket."""
    changes: dict[str, Any] = {}
    if request.param == "postgresql":
        changes = {"db_url": request.getfixturevalue("postgres_url")}
    service = Service(tmp_path, **changes)
    try:
        service.publish("gw-1", "predictions", payload("gw-1", 0, predictions("p", [0.9] * 3)))
        wait_until(lambda: service.http.get("/tickets").json(), 10, what="a ticket")
        yield service
    finally:
        service.close()
        if "db_url" in changes:  # the PostgreSQL database lives for the whole session
            drop_schema(changes["db_url"])


def test_ticket_ids_outside_the_column_are_422_inside_404_when_unknown(
    tickets_api: Service,
) -> None:
    requests = (
        ("GET", "/tickets/{}", None),
        ("POST", "/tickets/{}/ack", None),
        ("POST", "/tickets/{}/resolve", {"outcome": "other"}),
    )
    outside = ("20159108390010761216", str(2**63), str(2**63 - 1), str(MAX_TICKET_ID + 1),
               "0", "-1", "1.5", "1e3", "one")
    for method, path, body in requests:
        for ticket_id in outside:
            response = tickets_api.http.request(method, path.format(ticket_id), json=body)
            message = validation_messages(response)
            assert message.startswith("path.ticket_id: "), (method, path, ticket_id)
    (ticket,) = tickets_api.http.get("/tickets").json()
    for method, path, body in requests:
        for unknown in (MAX_TICKET_ID, ticket["id"] + 1):
            response = tickets_api.http.request(method, path.format(unknown), json=body)
            assert response.status_code == 404, (path, unknown, response.text)
            assert response.json() == {"detail": f"no ticket {unknown}"}
    acked = tickets_api.http.post(f"/tickets/{ticket['id']}/ack")
    assert (acked.status_code, acked.json()["status"]) == (200, "acknowledged")

    # A note is free text, but PostgreSQL cannot store a NUL: no control characters. (The
    # body's fields depend on its outcome, which the error's location names.)
    resolve = f"/tickets/{ticket['id']}/resolve"
    for note in ("a\x00b", "bell\x07", "esc\x1b[0m", "del\x7f", "x" * 4001):
        response = tickets_api.http.post(resolve, json={"outcome": "other", "note": note})
        assert validation_messages(response).startswith("body.other.note: "), note
    # A failure time goes with a confirmed failure only.
    response = tickets_api.http.post(resolve, json={"outcome": "no_fault_found",
                                                    "failed_at": "2026-03-01T08:00:00Z"})
    assert validation_messages(response).startswith("body.no_fault_found.failed_at: ")
    response = tickets_api.http.post(resolve, json={"outcome": "superseded"})
    assert response.status_code == 422  # the aggregator's own outcome
    note = "bearing replaced\n\tcage cracked\r\nsee photo \u00e9"
    resolved = tickets_api.http.post(resolve, json={"outcome": "confirmed_failure", "note": note})
    assert (resolved.status_code, resolved.json()["note"]) == (200, note)


def test_ticket_filters_outside_the_contract_are_422_an_unreadable_body_400(
    tickets_api: Service,
) -> None:
    for name, value in (
        ("status", "closed"), ("kind", "repair"), ("asset", ""), ("site", "plant\\1"),
        ("asset", "x" * (MAX_NAME + 1)),
    ):
        message = validation_messages(tickets_api.http.get("/tickets", params={name: value}))
        assert message.startswith(f"query.{name}: "), (name, value)
    (ticket,) = tickets_api.http.get("/tickets", params={"asset": "p", "site": "plant1"}).json()
    response = tickets_api.http.post(
        f"/tickets/{ticket['id']}/resolve", content=b"\xff",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


def test_sql_database_down_is_503_with_the_error_body(
    postgres_url: str, tmp_path: Path
) -> None:
    """The aggregator's own PostgreSQL database disappears under it (dropped, its
    connections ended): every route that reads SQL, or needs a token, answers 503, and
    says nothing about hosts or users."""
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"{admin.rsplit('/', 1)[1]}_down"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    service = Service(tmp_path, db_url=f"{postgres_url.rsplit('/', 1)[0]}/{name}")
    try:
        assert service.http.get("/tickets").status_code == 200
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        # Tokens live in SQL too: every route that needs one answers 503 the same way.
        for method, url in (
            ("GET", "/tickets"), ("GET", "/tickets/1"), ("POST", "/tickets/1/ack"),
            ("GET", "/agents"), ("GET", "/drift"), ("GET", "/tokens"),
            ("GET", "/tickets/1/history"),
        ):
            response = service.http.request(method, url)
            assert response.status_code == 503, (url, response.text)
            assert response.json() == {
                "detail": "the SQL database cannot be reached right now; retry later"
            }
        # The ingest path is not this test's business: it retries until the database is back.
    finally:
        service.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
