"""Who may do what through the REST API (issue #10): API tokens and their scopes.

- Every route the app has (enumerated from ``app.routes``, so a new one cannot be
  forgotten) is in ``ROUTES`` with its scope; each answers 401 (``WWW-Authenticate:
  Bearer``, the ``ErrorOut`` body) without a token and with a malformed, unknown or revoked
  one, 403 with every scope below its own, and neither with its own.
- No ambient credential is accepted (cookies, HTTP basic auth, a query parameter), so a
  forged cross-site form or image cannot act, and CORS stays closed.
- Every change records the token's name: ``GET /tickets/{id}/history``; admins manage
  tokens with ``/tokens``; the aggregator warns at start while no token exists.
"""

from __future__ import annotations

import base64
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aggregator_support import (
    Publisher,
    api_token,
    bearer,
    data_topic,
    payload,
    predictions,
    store_settings,
    wait_until,
)
from fastapi.routing import iter_route_contexts
from servers import free_port
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Mount

from aggregator import audit, auth
from aggregator.api.app import create_app
from aggregator.api.routes.docs import STATIC_PREFIX
from aggregator.api.security import PUBLIC_PATHS, required_scope
from aggregator.web import STATIC_PREFIX as WEB_STATIC_PREFIX

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="Using `httpx` with `starlette.testclient`",
        category=StarletteDeprecationWarning,
    )
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

SCOPES = ("read", "write", "admin")
# Every route and the scope it needs (None: public). A new route fails
# test_every_route_is_in_the_table until it is added here, with its scope.
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/docs"): None,
    ("GET", "/redoc"): None,
    ("GET", "/openapi.json"): None,
    ("HEAD", "/openapi.json"): None,
    ("GET", "/agents"): "read",
    ("GET", "/agents/{agent_id}/completeness"): "read",
    ("GET", "/drift"): "read",
    ("GET", "/tickets"): "read",
    ("GET", "/tickets/{ticket_id}"): "read",
    ("GET", "/tickets/{ticket_id}/history"): "read",
    ("POST", "/tickets/{ticket_id}/ack"): "write",
    ("POST", "/tickets/{ticket_id}/assign"): "write",
    ("POST", "/tickets/{ticket_id}/notes"): "write",
    ("POST", "/tickets/{ticket_id}/resolve"): "write",
    ("POST", "/tickets/{ticket_id}/reopen"): "write",
    ("GET", "/failures"): "read",
    ("POST", "/failures"): "write",
    ("GET", "/assets/{asset}/scores"): "read",
    ("GET", "/assets/{asset}/events"): "read",
    ("GET", "/health/models"): "read",
    ("GET", "/reports/model-health"): "read",
    ("GET", "/tokens"): "admin",
    ("POST", "/tokens"): "admin",
    ("DELETE", "/tokens/{token_id}"): "admin",
    ("GET", "/notifications"): "read",
    ("GET", "/metrics"): "read",
    ("POST", "/registry/versions"): "admin",
    ("GET", "/registry/versions"): "read",
    ("GET", "/registry/versions/{name}/{version}"): "read",
    # Content-addressed and signed: agents fetch it by URL alone (routes/registry.py).
    ("GET", "/registry/artifacts/{sha256}"): None,
    ("GET", "/registry/assignments"): "read",
    ("POST", "/registry/assignments"): "admin",
    ("POST", "/registry/assignments/{assignment_id}/promote"): "admin",
    ("POST", "/registry/assignments/{assignment_id}/rollback"): "admin",
}
# The web pages (aggregator/web): a session cookie, not the Authorization header, with the
# same scopes (None: public). Tested in test_web.py: without a session they redirect to
# the sign-in form, and their forms need the session's CSRF token.
WEB_ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/"): None,
    ("GET", "/ui"): None,
    ("GET", "/ui/sign-in"): None,
    ("POST", "/ui/sign-in"): None,
    ("POST", "/ui/sign-out"): "read",
    ("GET", "/ui/tickets"): "read",
    ("GET", "/ui/tickets/{ticket_id}"): "read",
    ("POST", "/ui/tickets/{ticket_id}/ack"): "write",
    ("POST", "/ui/tickets/{ticket_id}/assign"): "write",
    ("POST", "/ui/tickets/{ticket_id}/notes"): "write",
    ("POST", "/ui/tickets/{ticket_id}/resolve"): "write",
    ("POST", "/ui/failures"): "write",
    ("GET", "/ui/fleet"): "read",
    ("GET", "/ui/models"): "read",
    ("GET", "/ui/health"): "read",
}
# A request each route accepts (given the scope), on ids that do not exist: nothing changes.
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/tickets/{ticket_id}/resolve"): {"outcome": "other"},
    ("POST", "/tickets/{ticket_id}/assign"): {"assignee": "alice"},
    ("POST", "/tickets/{ticket_id}/notes"): {"text": "checked"},
    ("POST", "/failures"): None,  # no body: 422 once authorized
    ("POST", "/tokens"): None,  # no body: 422 once authorized
    ("POST", "/registry/versions"): None,  # no body: 503 (no signing key) once authorized
    ("POST", "/registry/assignments"): None,
    ("POST", "/registry/assignments/{assignment_id}/rollback"): {"reason": "test"},
}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def url_of(path: str) -> str:
    return (path.replace("{ticket_id}", "999").replace("{token_id}", "999")
            .replace("{asset}", "pump-999").replace("{assignment_id}", "999")
            .replace("{name}", "m").replace("{version}", "9").replace("{sha256}", "0" * 64))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, int]]:
    """The aggregator under its lifespan (embedded broker, SQLite); no token yet."""
    port = free_port()
    with TestClient(create_app(store_settings(tmp_path, embedded_broker_port=port))) as client:
        assert client.app.state.subscriber.wait_ready(10)  # type: ignore[attr-defined]
        yield client, port


def app_routes(client: TestClient) -> dict[tuple[str, str], str | None]:
    """(METHOD, path) -> scope, for every route of the running app but the static mount."""
    found: dict[tuple[str, str], str | None] = {}
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        if isinstance(context.original_route, Mount):
            assert context.path in (STATIC_PREFIX, WEB_STATIC_PREFIX)
            continue
        for method in context.methods or ():
            found[(method, context.path)] = required_scope(context)
    return found


def assert_unauthorized(response: httpx.Response, why: str = "") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "Authorization: Bearer" in detail and why in detail


def test_every_route_is_in_the_table(api: tuple[TestClient, int]) -> None:
    client, _ = api
    assert app_routes(client) == ROUTES | WEB_ROUTES
    assert {path for (_, path), scope in ROUTES.items() if scope is None} == PUBLIC_PATHS
    for (method, path), scope in ROUTES.items():
        if method in MUTATING:
            assert scope in ("write", "admin"), (method, path)
    for (method, path), scope in WEB_ROUTES.items():
        if method in MUTATING and path not in ("/ui/sign-in", "/ui/sign-out"):
            assert scope in ("write", "admin"), (method, path)


def test_every_route_needs_a_token_of_its_scope(api: tuple[TestClient, int]) -> None:
    client, _ = api
    tokens = {scope: api_token(client.app, scope, f"as-{scope}") for scope in SCOPES}
    revoked = api_token(client.app, "admin", "gone")
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        auth.revoke_token(session, "gone", audit.Actor("tests"))
        session.commit()
    for (method, path), needed in app_routes(client).items():
        if (method, path) in WEB_ROUTES:
            continue  # no bearer tokens there: test_web.py
        body = BODIES.get((method, path))

        def call(method: str = method, url: str = url_of(path), body: Any = body,
                 **headers: str) -> httpx.Response:
            return client.request(method, url, json=body, headers=headers)

        if needed is None:
            # readyz may say 503; no artifact has the sha256 asked for.
            ok = (404,) if path == "/registry/artifacts/{sha256}" else (200, 503)
            assert call().status_code in ok, (method, path)
            continue
        assert_unauthorized(call(), "needs an API token")
        for wrong in ("Bearer", "Bearer nonsense", f"Bearer {auth.new_secret()}",
                      f"Token {tokens['admin']}", f"bearer{tokens['admin']}"):
            assert_unauthorized(call(Authorization=wrong))
        assert_unauthorized(call(**bearer(revoked)), "'gone' (lw_")
        for scope in SCOPES:
            response = call(**bearer(tokens[scope]))
            if SCOPES.index(scope) < SCOPES.index(needed):
                assert response.status_code == 403, (method, path, scope, response.text)
                assert response.json() == {"detail": f"this needs a token with scope {needed}; "
                                           f"token 'as-{scope}' has scope {scope}"}
                assert response.headers["www-authenticate"] == (
                    f'Bearer error="insufficient_scope", scope="{needed}"')
            else:
                assert response.status_code not in (401, 403), (method, path, scope)
    # The docs' assets need no token either.
    assert client.get(f"{STATIC_PREFIX}/swagger-ui/swagger-ui.css").status_code == 200


def test_the_scheme_is_in_the_openapi_schema_for_swagger_uis_authorize(
    api: tuple[TestClient, int],
) -> None:
    client, _ = api
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIToken"] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "bearerFormat": "lw_ and 43 characters",
        "description": "",
    }
    ack = schema["paths"]["/tickets/{ticket_id}/ack"]["post"]
    assert ack["security"] == [{"APIToken": ["write"]}]
    assert {"401", "403"} <= set(ack["responses"])
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert client.get("/docs").status_code == 200


def test_no_ambient_credential_is_accepted(api: tuple[TestClient, int]) -> None:
    """What a browser attaches to a cross-site request by itself (cookies, basic auth) or
    what a link can carry (the URL) is never a credential: a forged form post or image
    tag cannot act, even when the victim holds a valid token."""
    client, _ = api
    token = api_token(client.app, "admin")
    basic = base64.b64encode(f"admin:{token}".encode()).decode()
    for name in ("token", "access_token", "Authorization", "session"):
        assert_unauthorized(client.post("/tickets/999/ack", headers={"Cookie": f"{name}={token}"}))
        assert_unauthorized(client.get("/tickets", headers={"Cookie": f'{name}="Bearer {token}"'}))
    assert_unauthorized(client.post("/tickets/999/ack",
                                    headers={"Authorization": f"Basic {basic}"}))
    assert_unauthorized(client.get("/tickets", auth=("admin", token)))
    for query in ("token", "access_token", "api_key"):
        assert_unauthorized(client.get("/tickets", params={query: token}))
    # The forged form itself: a simple cross-site POST (no preflight), urlencoded.
    forged = client.post(
        "/tickets/999/resolve", content="outcome=no_fault_found",
        headers={"Cookie": f"token={token}", "Content-Type": "application/x-www-form-urlencoded",
                 "Origin": "https://evil.example", "Referer": "https://evil.example/"},
    )
    assert_unauthorized(forged)
    assert client.post("/tickets/999/ack", headers=bearer(token)).status_code == 404


def test_cors_stays_closed(api: tuple[TestClient, int]) -> None:
    client, _ = api
    token = api_token(client.app, "read")
    evil = {"Origin": "https://evil.example"}
    read = client.get("/tickets", headers=evil | bearer(token))
    assert read.status_code == 200
    preflight = client.options("/tickets/1/ack", headers=evil | {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert not 200 <= preflight.status_code < 300
    for response in (read, preflight, client.get("/healthz", headers=evil)):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_changes_are_recorded_with_the_tokens_name(api: tuple[TestClient, int]) -> None:
    client, port = api
    with Publisher("127.0.0.1", port, data_topic("gw-1")) as pub:
        pub.publish(payload("gw-1", 0, predictions("pump-1", [0.9, 0.95, 0.99])))
    reader = bearer(api_token(client.app, "read", "dashboard"))
    (ticket,) = wait_until(lambda: client.get("/tickets", headers=reader).json(), 10)
    history = f"/tickets/{ticket['id']}/history"
    assert client.get(history, headers=reader).json() == []

    alice = bearer(api_token(client.app, "write", "alice"))
    bob = bearer(api_token(client.app, "admin", "bob"))
    assert client.post(f"/tickets/{ticket['id']}/ack", headers=alice).status_code == 200
    assert client.post(f"/tickets/{ticket['id']}/ack", headers=bob).status_code == 200  # no-op
    resolved = client.post(f"/tickets/{ticket['id']}/resolve", headers=bob,
                           json={"outcome": "confirmed_failure", "note": "bearing"})
    assert resolved.status_code == 200
    again = client.post(f"/tickets/{ticket['id']}/resolve", headers=alice,
                        json={"outcome": "other"})
    assert again.status_code == 409  # refused: rolled back, recorded nowhere

    entries = client.get(history, headers=reader).json()
    assert [(e["actor"], e["action"], e["detail"]) for e in entries] == [
        ("alice", "acknowledge", {"from": "open", "to": "acknowledged"}),
        ("bob", "resolve", {"from": "acknowledged", "to": "resolved",
                            "outcome": "confirmed_failure", "note": "bearing"}),
    ]
    assert entries[1]["at"] == resolved.json()["resolved_at"]
    assert {(e["subject_type"], e["subject_id"]) for e in entries} == {
        ("ticket", str(ticket["id"]))}
    assert client.get("/tickets/999/history", headers=reader).status_code == 404


def test_admins_manage_tokens_through_the_api(api: tuple[TestClient, int]) -> None:
    client, _ = api
    admin = bearer(api_token(client.app, "admin", "root"))
    created = client.post("/tokens", json={"name": "ci-bot", "scope": "read"}, headers=admin)
    assert created.status_code == 201, created.text
    new = created.json()
    assert (new["name"], new["scope"], new["created_by"], new["revoked_at"]) == (
        "ci-bot", "read", "root", None)
    assert auth.TOKEN_PATTERN.fullmatch(new["token"])
    assert new["token"].startswith(new["prefix"])
    ci = bearer(new["token"])
    assert client.get("/tickets", headers=ci).status_code == 200
    assert client.post("/tokens", json={"name": "x", "scope": "admin"}, headers=ci
                       ).status_code == 403

    taken = client.post("/tokens", json={"name": "ci-bot", "scope": "write"}, headers=admin)
    assert taken.status_code == 409 and "ci-bot" in taken.json()["detail"]
    for bad in ({"name": "1x", "scope": "read"}, {"name": "x", "scope": "root"},
                {"name": "x", "scope": "read", "token": "lw_mine"}):
        assert client.post("/tokens", json=bad, headers=admin).status_code == 422, bad

    listed = client.get("/tokens", headers=admin).json()
    assert [t["name"] for t in listed] == ["root", "ci-bot"]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert new["token"] not in client.get("/tokens", headers=admin).text
    assert listed[1]["last_used_at"] is not None  # it was used above

    revoked = client.delete(f"/tokens/{new['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_unauthorized(client.get("/tickets", headers=ci), "revoked")
    assert client.delete(f"/tokens/{new['id']}", headers=admin).json() == revoked.json()
    assert client.delete("/tokens/999", headers=admin).status_code == 404
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        trail = audit.history(session, "token", new["id"])
        assert [(e.actor, e.action) for e in trail] == [("root", "create"), ("root", "revoke")]
    # The name is free again.
    again = client.post("/tokens", json={"name": "ci-bot", "scope": "read"}, headers=admin)
    assert again.status_code == 201


def test_startup_warns_while_no_token_exists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = store_settings(tmp_path, embedded_broker_port=free_port())
    caplog.set_level(logging.INFO, logger="aggregator.api.app")

    def warnings_at_start() -> list[str]:
        caplog.clear()
        with TestClient(create_app(settings)):
            pass
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    (warning,) = warnings_at_start()
    assert re.match(r"no API token yet: create one with `linewatch token create --scope "
                    r"admin --name you`", warning)
    api_token(settings.db_url, "admin")
    assert warnings_at_start() == []
