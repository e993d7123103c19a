"""Property-based run of the REST API over its own OpenAPI schema (schemathesis).

Every operation the schema declares is called with generated requests, valid ones and
invalid ones, against the aggregator as it runs in production (uvicorn, its lifespan, the
embedded broker) with agents, tickets and drift events in it: once on the embedded stores
(SQLite), once on InfluxDB 1.x and PostgreSQL. ``CHECKS`` fail the run on a server error, a
status the schema does not declare for that operation, a body or content type that does not
match the declared one, an invalid request (per the schema) that is not refused with a 4xx,
and a valid one that is refused.

Authenticated: every case carries a fresh token of exactly the scope its operation asks
for (read, write, admin: a fresh one, since ``DELETE /tokens/{id}`` may revoke any
token), so a valid request refused with 401 or 403 fails ``positive_data_acceptance``.
The token goes through a schemathesis auth provider, not headers given to the call:
schemathesis then leaves it out of the negative cases that drop the ``Authorization``
header on purpose, which must be refused. (The provider runs when a case is generated,
for some cases at collection, before the service runs: it writes the scope, and the test
sends a fresh token of that scope in its place.) ``ignored_auth`` sends each operation again
without the token and with a wrong one, and fails unless it is refused.

Bounded and deterministic: ``MAX_EXAMPLES`` per operation in the fuzzing phase, plus
schemathesis' coverage cases (boundaries, wrong types, missing values); Hypothesis
derandomized, no example database. About 500 requests per store configuration.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from aggregator_support import (
    MODEL,
    T0,
    Publisher,
    api_token,
    bearer,
    data_topic,
    drift_events,
    drop_schema,
    health_report,
    payload,
    predictions,
    start_service,
    store_settings,
    wait_until,
)
from fastapi.routing import iter_route_contexts
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance
from servers import InfluxServer, free_port

from aggregator.api.app import create_app
from aggregator.api.security import required_scope
from aggregator.server import ServerThread
from contract.wire import Status, encode

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
# Open tickets with small ids, so that generated ids often name a ticket that exists.
TICKETS = 12
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "ignored_auth",
]

APP = create_app(store_settings(Path("/nonexistent")))
# (METHOD, path template) -> the scope the operation asks for
SCOPES = {
    (method, context.path): required_scope(context)
    for context in iter_route_contexts(APP.routes)
    for method in context.methods or ()
}

# The schema the app builds; the test below checks that the running service serves it.
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
schema.config.checks.update(included_check_names=CHECKS)
# A valid request with a token of the right scope is accepted: not 401 or 403 (which
# schemathesis would let pass by default), nor 5xx.
schema.config.checks.positive_data_acceptance.expected_statuses = ["2xx", "404", "409"]
PLACEHOLDER = "scope:"
# POST /registry/versions takes a model artifact's raw bytes: sent as generated. No
# generated body is a signed-off artifact (a gzipped tar of a card and the model it
# hashes), and this service has no signing key (503: the registry is off), so a valid
# request cannot be accepted here; tests/integration/test_registry.py covers the upload.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
NO_VALID_BODY = {("POST", "/registry/versions")}


@schema.auth(refresh_interval=None)  # no caching: asked for every case
class ScopedToken:
    """Marks a case as carrying a token of the scope its operation asks for; none for the
    probes and for methods a path does not have (schemathesis tries TRACE and the like)."""

    def get(self, case: schemathesis.Case, context: Any) -> str | None:
        scope = SCOPES.get((case.method.upper(), case.path))
        return None if scope is None else PLACEHOLDER + scope

    def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": data}


def seed(url: str, broker_port: int, token: str) -> None:
    """Give the service at ``url`` (its embedded broker on ``broker_port``) two agents'
    data: ``TICKETS`` tickets (one acknowledged, assigned and with a note, two resolved,
    one with a failure time, the rest open, with an audit history), a reported failure,
    drift events (one fleet-wide), a health report; ``token`` may write."""
    with Publisher("127.0.0.1", broker_port, data_topic("gw-1")) as pub:
        for agent in ("gw-1", "gw-2"):
            pub.publish(
                encode(Status(schema=1, agent=agent, state="online", ts=T0, model=MODEL)),
                data_topic(agent, "status"),
            )
        for seq in range(TICKETS):
            pub.publish(payload("gw-1", seq, predictions(f"pump-{seq}", [0.9, 0.95, 0.99])))
        events = drift_events("pump-1", 3) + drift_events(
            None, 1, start=3, detector="ADWIN", monitor="score"
        )
        pub.publish(payload("gw-2", 0, events), data_topic("gw-2", "drift"))
        pub.publish(payload("gw-2", 1, [health_report(5, 40)]), data_topic("gw-2", "health"))
    with httpx.Client(base_url=url, timeout=10, headers=bearer(token)) as http:
        wait_until(lambda: len(http.get("/tickets").json()) == TICKETS, 10, what="tickets")
        wait_until(lambda: len(http.get("/drift").json()) == 4, 10, what="4 events")
        first, second, third, *_ = http.get("/tickets").json()
        assert http.post(f"/tickets/{first['id']}/ack").status_code == 200
        assert http.post(f"/tickets/{first['id']}/assign", json={"assignee": "bob"}
                         ).status_code == 200
        assert http.post(f"/tickets/{first['id']}/notes", json={"text": "looked at it"}
                         ).status_code == 201
        resolved = http.post(
            f"/tickets/{second['id']}/resolve", json={"outcome": "no_fault_found"}
        )
        assert resolved.status_code == 200
        failed = http.post(f"/tickets/{third['id']}/resolve", json={
            "outcome": "confirmed_failure", "failed_at": T0.isoformat()})
        assert failed.status_code == 200
        missed = http.post("/failures", json={
            "site": "plant1", "line": "line3", "asset": "pump-99", "at": T0.isoformat()})
        assert missed.status_code == 201


@pytest.fixture(scope="module", params=["embedded", "influx1+postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """The aggregator on a free port, seeded (see :func:`seed`): once on the embedded
    stores (SQLite for both), once on the session's InfluxDB 1.x and PostgreSQL."""
    changes: dict[str, Any] = {}
    influxd: InfluxServer | None = None
    if request.param == "influx1+postgresql":
        influxd = request.getfixturevalue("influxd")
        changes = {
            "influx_url": influxd.url,
            "influx_database": f"api_schema_{uuid.uuid4().hex[:12]}",
            "db_url": request.getfixturevalue("postgres_url"),
        }
        influxd.create_database(changes["influx_database"])
    port = free_port()
    tmp = tmp_path_factory.mktemp("api-schema")
    server = start_service(
        store_settings(tmp, embedded_broker_port=port, http_port=0, **changes)
    )
    try:
        seed(server.url, port, api_token(server, "write", "seeder"))
        yield server
    finally:
        server.stop()
        if influxd is not None:
            influxd.drop_database(changes["influx_database"])
            drop_schema(changes["db_url"])


def test_service_serves_the_schema_under_test(service: ServerThread) -> None:
    served = httpx.get(f"{service.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == schema.raw_schema


@schema.parametrize()
@settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms(case: schemathesis.Case, service: ServerThread) -> None:
    marked = (case.headers or {}).get("Authorization", "")
    headers = None
    if marked.startswith(PLACEHOLDER):
        # A fresh token each time: DELETE /tokens/{id} may have revoked any earlier one.
        # Given to the call, not written into the case: a case may be run again, against
        # the other store configuration's service.
        headers = bearer(api_token(service, marked.removeprefix(PLACEHOLDER)))
    excluded = ([not_a_server_error, positive_data_acceptance]
                if (case.method.upper(), case.path) in NO_VALID_BODY else None)
    case.call_and_validate(base_url=service.url, headers=headers, timeout=10,
                           excluded_checks=excluded)


def test_every_operation_asks_for_a_scope_but_the_probes() -> None:
    """The table the run above relies on: a scope for every operation in the schema but
    the two probes."""
    operations = {(m.upper(), p) for p, ops in schema.raw_schema["paths"].items() for m in ops}
    public = {op for op in operations if SCOPES[op] is None}
    assert public == {("GET", "/healthz"), ("GET", "/readyz"),
                      ("GET", "/registry/artifacts/{sha256}")}
    for method, path in operations - public:
        declared = schema.raw_schema["paths"][path][method.lower()]["security"]
        assert declared == [{"APIToken": [SCOPES[(method, path)]]}], (method, path)
