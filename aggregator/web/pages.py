"""The web pages' routes: sign in, tickets (risk cards and the actions), fleet, models
(versions per agent and the promotion gate's figures), model health.

Who may do what is the API's rule: a session acts with its token's name and scope (read
to look, write to act), and every change calls the REST API's own route function
(``api.routes.tickets``, ``api.routes.failures``), so the checks, the 404/409 rules and the
audit entry are the API's. Every figure on the model health page comes from
``modelhealth.model_health``, the computation behind ``GET /health/models`` and the report;
the fleet is ``GET /agents``'s answer; a chart is the asset's scores from the series store,
as ``GET /assets/{asset}/scores`` reads them.

Forms are posted as ``application/x-www-form-urlencoded`` and read with the standard
library (no multipart parser needed); each carries the session's CSRF token, checked after
the session and before anything else. A page without a session redirects to the sign-in
form (303), which returns to the page after.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import SecurityScopes
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from aggregator import audit, auth, tickets
from aggregator.api.deps import SeriesDep, SessionDep, SettingsDep
from aggregator.api.routes import agents as agents_api
from aggregator.api.routes import failures as failures_api
from aggregator.api.routes import tickets as tickets_api
from aggregator.api.schemas import AgentOut, AssignIn, FailureIn, NoteIn, ResolveIn
from aggregator.api.security import scope_checker
from aggregator.db import AssetCondition, Ticket
from aggregator.errors import (
    FailureTicketedError,
    SeriesUnavailableError,
    TicketNotFoundError,
    TicketStateError,
)
from aggregator.figures import GroupFigures, HealthFigures
from aggregator.modelhealth import DEFAULT_PERIOD, model_health, parse_period, period_ending
from aggregator.outcomes import NOT_COUNTED, OUTCOME_MEANINGS
from aggregator.registry import store as registry_store
from aggregator.registry.models import ModelAssignment
from aggregator.rollout.gate import GatePolicy, ModelKey, Verdict, evaluate
from aggregator.rules import SENSOR_DETECTORS
from aggregator.web import risk, sessions

__all__ = [
    "COOKIE",
    "DASHBOARD",
    "STATIC_DIR",
    "STATIC_PREFIX",
    "Form",
    "FormRefused",
    "NotAllowed",
    "SignInNeeded",
    "ack",
    "acting_form",
    "assign",
    "fleet_page",
    "ShadowPair",
    "health_page",
    "install",
    "models_page",
    "note",
    "report_failure",
    "resolve",
    "root",
    "router",
    "sign_in",
    "sign_in_form",
    "sign_out",
    "signed_in",
    "ticket_page",
    "tickets_page",
    "ui",
]

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_PREFIX = "/ui/static"
DASHBOARD = "/ui/tickets"
SIGN_IN = "/ui/sign-in"
COOKIE = "lw_session"
SIGN_IN_COOKIE = "lw_sign_in"  # the sign-in form's own CSRF token (double submit)
MAX_FORM_BYTES = 64 * 1024
KIND_ORDER = ("maintenance", "sensor", "inspect", "retraining")
OPEN_SHOWN = 500  # open tickets listed per status
CHART_SPAN = timedelta(days=7)  # score history before the newest window
CHART_POINTS = 5000
TIMELINE_EVENTS = 200
# No other host, no inline script: what the pages need and nothing more.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
DONE = {
    "ack": "Acknowledged.", "assign": "Assignment saved.", "note": "Note added.",
    "resolve": "Resolved.", "failure": "Missed failure reported.",
}

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


# --------------------------------------------------------------------------- formatting


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (datetime.now(UTC) - value).total_seconds()
    for unit, size in (("day", 86_400), ("h", 3_600), ("min", 60)):
        if abs(seconds) >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if unit == 'day' and n != 1 else ''} ago"
    return "just now"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if abs(hours) >= 48 else f"{hours:.1f} h"


templates.env.filters.update(when=_when, ago=_ago, pct=_pct, duration=_duration)
templates.env.globals.update(static=STATIC_PREFIX, outcomes=OUTCOME_MEANINGS)


# --------------------------------------------------------------------------- sign-in


class SignInNeeded(Exception):
    """No valid session: the browser goes to the sign-in form, then back to ``then``."""

    def __init__(self, then: str) -> None:
        super().__init__(then)
        self.then = then


class NotAllowed(Exception):
    """A session whose token's scope is too low for what it asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FormRefused(Exception):
    """A form post without the session's CSRF token (or not a form at all)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@scope_checker
def signed_in(request: Request, security_scopes: SecurityScopes) -> sessions.Signed:
    """The signed-in browser, if its session is valid and its token's scope covers what
    the page asks for."""
    session_id = request.cookies.get(COOKIE)
    signed = None
    if session_id:
        with request.app.state.session_factory() as session:
            signed = sessions.find(session, session_id)
    if signed is None:
        then = request.url.path if request.method == "GET" else DASHBOARD
        if request.method == "GET" and request.url.query:
            then += f"?{request.url.query}"
        raise SignInNeeded(then)
    needed: auth.Scope = "write" if "write" in security_scopes.scopes else "read"
    if not signed.principal.allows(needed):
        raise NotAllowed(f"this needs a token with scope {needed}; you signed in with "
                         f"{signed.principal.name!r}, which has scope "
                         f"{signed.principal.scope}")
    request.state.signed = signed
    return signed


Viewer = Annotated[sessions.Signed, Security(signed_in, scopes=["read"])]
Actor = Annotated[sessions.Signed, Security(signed_in, scopes=["write"])]


async def _fields(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormRefused("this needs a form sent from the page")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormRefused(f"the form is over {MAX_FORM_BYTES // 1024} KiB")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormRefused("the form is not UTF-8 text") from exc
    return dict(parse_qsl(text, keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class Form:
    """A posted form whose CSRF token matched, and who posted it."""

    signed: sessions.Signed
    fields: dict[str, str]

    def get(self, name: str) -> str:
        return self.fields.get(name, "").strip()


async def acting_form(request: Request, signed: Actor) -> Form:
    """The posted form of a write action, once its CSRF token matched the session's."""
    fields = await _fields(request)
    if not sessions.csrf_matches(signed.csrf, fields.get("csrf")):
        raise FormRefused("this form is out of date or was not sent from this site: "
                          "reload the page and try again")
    return Form(signed, fields)


ActingForm = Annotated[Form, Depends(acting_form)]


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _safe_then(then: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    if not then or not then.startswith("/") or then.startswith("//"):
        return DASHBOARD
    parts = urlsplit(then)
    if parts.scheme or parts.netloc or "\\" in then:
        return DASHBOARD
    return then


def _page(request: Request, name: str, context: Mapping[str, Any], status: int = 200
          ) -> HTMLResponse:
    signed: sessions.Signed | None = getattr(request.state, "signed", None)
    response = templates.TemplateResponse(
        request, name, {"signed": signed, **context}, status_code=status)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/")
def root() -> RedirectResponse:
    """The dashboard."""
    return RedirectResponse(DASHBOARD, 303)


@router.get("/ui")
def ui() -> RedirectResponse:
    return RedirectResponse(DASHBOARD, 303)


def _sign_in_form(request: Request, then: str, error: str | None, status: int) -> Response:
    token = auth.new_secret()  # any unguessable value; not an API token
    response = _page(request, "sign_in.html",
                     {"then": then, "csrf": token, "error": error}, status)
    response.set_cookie(SIGN_IN_COOKIE, token, max_age=3600, path=SIGN_IN, httponly=True,
                        samesite="strict", secure=_cookie_secure(request))
    return response


@router.get(SIGN_IN)
def sign_in_form(request: Request, then: str | None = None) -> Response:
    return _sign_in_form(request, _safe_then(then), None, 200)


@router.post(SIGN_IN)
async def sign_in(request: Request) -> Response:
    """Check the token, open a session, set its cookie and go back to the page."""
    try:
        fields = await _fields(request)
    except FormRefused as exc:
        return _sign_in_form(request, DASHBOARD, exc.message, 400)
    then = _safe_then(fields.get("then"))
    expected = request.cookies.get(SIGN_IN_COOKIE)
    if expected is None or not sessions.csrf_matches(expected, fields.get("csrf")):
        return _sign_in_form(request, then, "The sign-in form was out of date: try again.",
                             403)
    token = fields.get("token", "").strip()
    try:
        with request.app.state.session_factory() as session:
            session_id, signed = sessions.start(session, token)
            session.commit()
    except auth.InvalidTokenError as exc:
        logger.info("web sign-in refused: %s", exc)
        return _sign_in_form(request, then, f"Not signed in: {exc}.", 401)
    logger.info("web sign-in: token %r (scope %s)", signed.principal.name,
                signed.principal.scope)
    response = RedirectResponse(then, 303)
    response.set_cookie(COOKIE, session_id, max_age=int(sessions.LIFETIME.total_seconds()),
                        path="/", httponly=True, samesite="strict",
                        secure=_cookie_secure(request))
    response.delete_cookie(SIGN_IN_COOKIE, path=SIGN_IN)
    return response


@router.post("/ui/sign-out")
async def sign_out(request: Request, signed: Viewer) -> Response:
    fields = await _fields(request)
    if not sessions.csrf_matches(signed.csrf, fields.get("csrf")):
        raise FormRefused("this form is out of date or was not sent from this site: "
                          "reload the page and try again")
    session_id = request.cookies.get(COOKIE, "")
    with request.app.state.session_factory() as session:
        sessions.end(session, session_id)
        session.commit()
    response = RedirectResponse(SIGN_IN, 303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --------------------------------------------------------------------------- tickets


def _similar_outcomes(session: Session, site: str, line: str, kind: str,
                      not_id: int | None = None) -> list[str | None]:
    query = (select(Ticket.outcome)
             .where(Ticket.site == site, Ticket.line == line, Ticket.kind == kind,
                    Ticket.status == "resolved", Ticket.outcome.is_not(None),
                    Ticket.outcome.not_in(sorted(NOT_COUNTED)))
             .order_by(Ticket.resolved_at.desc(), Ticket.id.desc()).limit(risk.SIMILAR))
    if not_id is not None:
        query = query.where(Ticket.id != not_id)
    return list(session.scalars(query))


class _Cards:
    """Risk cards of tickets, reading each line's outcomes and each card once."""

    def __init__(self, session: Session, models_dir: Path | None) -> None:
        self.session = session
        self.models_dir = models_dir
        self.outcomes: dict[tuple[str, str, str], list[str | None]] = {}

    def of(self, t: Ticket) -> risk.RiskCard:
        key = (t.site, t.line, t.kind)
        if key not in self.outcomes:
            self.outcomes[key] = _similar_outcomes(self.session, *key)
        card = risk.card_of(self.models_dir, t.model_name, t.model_version)
        return risk.risk_card(t.kind, t.line, t.threshold, t.evidence or {}, card,
                              self.outcomes[key])


def _urgency(t: Ticket, card: risk.RiskCard) -> tuple[float, float, int, datetime]:
    """Most urgent first: a higher chance (or score), more escalations, opened earlier."""
    p = card.chance.probability
    score = card.score.score if card.score is not None else 0.0
    return (-(p if p is not None else -1.0), -score, -t.escalations, t.opened_at)


@router.get("/ui/tickets")
def tickets_page(request: Request, session: SessionDep, settings: SettingsDep,
                 signed: Viewer, done: str | None = None) -> Response:
    """Open tickets by kind, most urgent first, each as a risk card."""
    found = [t for status in ("open", "acknowledged")
             for t in tickets.find(session, status=status, limit=OPEN_SHOWN)]
    cards = _Cards(session, settings.models_dir)
    by_kind: dict[str, list[tuple[Ticket, risk.RiskCard]]] = {k: [] for k in KIND_ORDER}
    for t in found:
        by_kind.setdefault(t.kind, []).append((t, cards.of(t)))
    for kind in by_kind:
        by_kind[kind].sort(key=lambda tc: _urgency(*tc))
    return _page(request, "tickets.html", {
        "by_kind": by_kind, "total": len(found), "done": DONE.get(done or ""),
        "csrf": signed.csrf, "can_act": signed.principal.allows("write"),
        "now": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M"),
    })


def _chart(series: SeriesDep, t: Ticket, card: risk.RiskCard) -> dict[str, Any] | None:
    """The asset's score history up to its newest scored window, with the threshold."""
    if t.kind == "retraining":
        return None
    end = card.score.window_end if card.score is not None else datetime.now(UTC)
    try:
        points = series.scores(t.asset, site=t.site, since=end - CHART_SPAN,
                               until=end + timedelta(seconds=1), limit=CHART_POINTS)
    except SeriesUnavailableError as exc:
        return {"error": f"the series store cannot be reached right now: {exc}"}
    points = [p for p in points if p.model == t.model_name]
    return {
        "x": [p.window_end.timestamp() for p in points],
        "score": [p.score for p in points],
        "threshold": t.threshold,
        "asset": t.asset,
    }


def _ticket_page(request: Request, session: Session, series: SeriesDep, settings: SettingsDep,
                 signed: sessions.Signed, ticket_id: int, *, done: str | None = None,
                 error: str | None = None, status: int = 200) -> Response:
    try:
        t = tickets.get(session, ticket_id)
    except TicketNotFoundError:
        return _page(request, "error.html", {"title": "No such ticket",
                                             "message": f"There is no ticket {ticket_id}."}, 404)
    outcomes = _similar_outcomes(session, t.site, t.line, t.kind, not_id=t.id)
    card = risk.risk_card(t.kind, t.line, t.threshold, t.evidence or {},
                          risk.card_of(settings.models_dir, t.model_name, t.model_version),
                          outcomes)
    return _page(request, "ticket.html", {
        "t": t, "card": card, "chart": _chart(series, t, card),
        "history": audit.history(session, "ticket", t.id),
        "evidence": json.dumps(t.evidence, indent=2, sort_keys=True, default=str),
        "done": DONE.get(done or ""), "error": error, "csrf": signed.csrf,
        "can_act": signed.principal.allows("write"),
        "now": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M"),
    }, status)


@router.get("/ui/tickets/{ticket_id}")
def ticket_page(request: Request, ticket_id: int, session: SessionDep, series: SeriesDep,
                settings: SettingsDep, signed: Viewer, done: str | None = None) -> Response:
    """One ticket: its risk card, the asset's score history, evidence, notes, history and
    what can be done about it."""
    return _ticket_page(request, session, series, settings, signed, ticket_id, done=done)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    return f"{where}: {err.get('msg', 'not valid')}" if where else str(err.get("msg"))


def _aware(text: str) -> str:
    """A ``datetime-local`` field's value, read as UTC (the form says so)."""
    if text and len(text) == 16 and "T" in text:
        return text + ":00+00:00"
    return text


def _act(request: Request, session: Session, series: SeriesDep, settings: SettingsDep,
         form: Form, ticket_id: int, what: str, action: Any) -> Response:
    """Run an API route function; back to the ticket, with what happened."""
    try:
        action()
    except ValidationError as exc:
        session.rollback()
        return _ticket_page(request, session, series, settings, form.signed, ticket_id,
                            error=f"Not saved: {_first_error(exc)}", status=422)
    except TicketNotFoundError as exc:
        session.rollback()
        return _page(request, "error.html", {"title": "No such ticket", "message": str(exc)},
                     404)
    except TicketStateError as exc:
        session.rollback()
        return _ticket_page(request, session, series, settings, form.signed, ticket_id,
                            error=f"Not saved: {exc}", status=409)
    return RedirectResponse(f"/ui/tickets/{ticket_id}?done={what}", 303)


@router.post("/ui/tickets/{ticket_id}/ack")
def ack(request: Request, ticket_id: int, session: SessionDep, series: SeriesDep,
        settings: SettingsDep, form: ActingForm) -> Response:
    caller = form.signed.principal
    return _act(request, session, series, settings, form, ticket_id, "ack",
                lambda: tickets_api.acknowledge_ticket(ticket_id, session, caller))


@router.post("/ui/tickets/{ticket_id}/assign")
def assign(request: Request, ticket_id: int, session: SessionDep, series: SeriesDep,
           settings: SettingsDep, form: ActingForm) -> Response:
    caller = form.signed.principal

    def run() -> None:
        body = AssignIn(assignee=form.get("assignee") or None)
        tickets_api.assign_ticket(ticket_id, body, session, caller)

    return _act(request, session, series, settings, form, ticket_id, "assign", run)


@router.post("/ui/tickets/{ticket_id}/notes")
def note(request: Request, ticket_id: int, session: SessionDep, series: SeriesDep,
         settings: SettingsDep, form: ActingForm) -> Response:
    caller = form.signed.principal

    def run() -> None:
        tickets_api.add_note(ticket_id, NoteIn(text=form.get("text")), session, caller)

    return _act(request, session, series, settings, form, ticket_id, "note", run)


_RESOLVE: TypeAdapter[Any] = TypeAdapter(ResolveIn)


@router.post("/ui/tickets/{ticket_id}/resolve")
def resolve(request: Request, ticket_id: int, session: SessionDep, series: SeriesDep,
            settings: SettingsDep, form: ActingForm) -> Response:
    caller = form.signed.principal

    def run() -> None:
        fields: dict[str, Any] = {"outcome": form.get("outcome"),
                                  "note": form.get("note") or None}
        if fields["outcome"] == "confirmed_failure" and form.get("failed_at"):
            fields["failed_at"] = _aware(form.get("failed_at"))
        tickets_api.resolve_ticket(ticket_id, _RESOLVE.validate_python(fields), session,
                                   caller, series, settings)

    return _act(request, session, series, settings, form, ticket_id, "resolve", run)


@router.post("/ui/failures")
def report_failure(request: Request, session: SessionDep, series: SeriesDep,
                   settings: SettingsDep, form: ActingForm) -> Response:
    """A failure no ticket warned of, through ``POST /failures``'s own function."""
    try:
        body = FailureIn(site=form.get("site"), line=form.get("line"),
                         asset=form.get("asset"), at=_aware(form.get("at")),
                         note=form.get("note") or None)
        failures_api.report_failure(body, session, form.signed.principal, series, settings)
    except ValidationError as exc:
        session.rollback()
        return _page(request, "error.html", {
            "title": "Not reported", "message": f"Not reported: {_first_error(exc)}",
            "back": DASHBOARD}, 422)
    except FailureTicketedError as exc:
        session.rollback()
        return _page(request, "error.html", {
            "title": "Not reported", "message": f"Not reported: {exc}", "back": DASHBOARD}, 409)
    return RedirectResponse(f"{DASHBOARD}?done=failure", 303)


# --------------------------------------------------------------------------- fleet


@router.get("/ui/fleet")
def fleet_page(request: Request, session: SessionDep, series: SeriesDep,
               signed: Viewer) -> Response:
    """Every agent, as ``GET /agents`` lists it."""
    agents = agents_api.list_agents(session, series)
    return _page(request, "fleet.html", {
        "agents": agents,
        "online": sum(a.state == "online" for a in agents),
    })


# --------------------------------------------------------------------------- models

MODELS_PERIOD = "24h"  # the gate figures shown by default: the last day's


@dataclass(frozen=True)
class ShadowPair:
    """A (live, shadow) pair of model versions, the agents running it, and the promotion
    gate's figures over the last day with its verdict in plain words."""

    live: ModelKey
    shadow: ModelKey
    agents: list[str]
    verdict: Verdict | None  # None when the series store did not answer
    summary: str
    # The live version is a canary judged against the old version as its shadow (the
    # candidate is the live one); otherwise the shadow is the candidate.
    canary: bool = False


def _summary(v: Verdict, policy: GatePolicy) -> str:
    """The verdict in one phrase: ready, not yet (and how far), or would fail (why)."""
    if v.passed:
        return "ready to promote"
    # Before it is ready the first reason is the window count; the rest are failures.
    failed = "; ".join(v.reasons if v.ready else v.reasons[1:])
    if v.ready:
        return f"would fail: {failed}"
    text = f"not yet: {v.figures.windows} of {policy.min_windows} windows"
    return f"{text}; would fail: {failed}" if failed else text


def _pairs(session: Session, series: SeriesDep, settings: SettingsDep,
           agents: list[AgentOut], since: datetime, until: datetime, policy: GatePolicy
           ) -> list[ShadowPair]:
    by_pair: dict[tuple[ModelKey, ModelKey], list[str]] = {}
    for a in agents:
        if a.model_name and a.model_version and a.shadow_model_name and a.shadow_model_version:
            key = (ModelKey(a.model_name, a.model_version),
                   ModelKey(a.shadow_model_name, a.shadow_model_version))
            by_pair.setdefault(key, []).append(a.agent)
    canaries = {ModelKey(name, version) for name, version in session.execute(
        select(ModelAssignment.model_name, ModelAssignment.version).where(
            ModelAssignment.state == "active", ModelAssignment.stage == "canary"))}
    out = []
    for (live, shadow), names in sorted(by_pair.items(), key=lambda kv: (
            kv[0][0].name, kv[0][0].version, kv[0][1].name, kv[0][1].version)):
        canary = live in canaries
        candidate, baseline = (live, shadow) if canary else (shadow, live)
        try:
            verdict: Verdict | None = evaluate(
                series, session, candidate=candidate, baseline=baseline, agents=names,
                since=since, until=until, f1_target=_f1_target(session, settings, candidate),
                policy=policy)
        except SeriesUnavailableError as exc:
            logger.warning("models page without gate figures: %s", exc)
            verdict = None
        summary = "figures unavailable: the series store does not answer" \
            if verdict is None else _summary(verdict, policy)
        out.append(ShadowPair(live, shadow, names, verdict, summary, canary))
    return out


def _f1_target(session: Session, settings: SettingsDep, model: ModelKey) -> float | None:
    """The card's per-window test F1 of a version: the registry's copy of its card, else
    the card in the models directory."""
    uploaded = registry_store.find(session, model.name, model.version)
    if uploaded is not None:
        return registry_store.f1_target(uploaded.card)
    card = risk.card_of(settings.models_dir, model.name, model.version)
    target = None if card is None else card.metrics.get("test_window_f1")
    return None if target is None else target.value


@router.get("/ui/models")
def models_page(request: Request, session: SessionDep, series: SeriesDep,
                settings: SettingsDep, signed: Viewer, period: str = MODELS_PERIOD
                ) -> Response:
    """Which model versions each agent runs (live, shadow), its latest deployment's
    outcome, and for each shadow beside a live version the promotion gate's figures over
    the period (the last 24 h unless asked): the same ``gate.evaluate`` the registry
    promotes and rolls back by."""
    try:
        since, until = period_ending(None, parse_period(period))
    except ValueError as exc:
        return _page(request, "error.html", {"title": "Models", "message": str(exc),
                                             "back": "/ui/models"}, 422)
    agents = agents_api.list_agents(session, series)
    policy = settings.gate_policy()
    return _page(request, "models.html", {
        "agents": agents, "period": period,
        "pairs": _pairs(session, series, settings, agents, since, until, policy),
        "policy": policy,
        "refused": sum(a.deployment is not None and a.deployment.state == "refused"
                       for a in agents),
    })


# --------------------------------------------------------------------------- model health


def _groups(f: HealthFigures) -> list[GroupFigures]:
    return [f.overall, *f.by_model, *f.by_line]


def _group_of(f: HealthFigures, key: str) -> GroupFigures | None:
    for g in (f.overall, *f.by_model, *f.by_line):
        if g.group.key == key:
            return g
    return None


def _months(session: Session, series: SeriesDep, settings: SettingsDep, f: HealthFigures,
            key: str) -> list[tuple[GroupFigures, GroupFigures | None]]:
    """Each month of the period, with the selected group's figures in it: the overall
    months come with the period's figures; another group's are model_health's answer
    for that month alone."""
    if key == "all":
        return [(m, m) for m in f.by_month]
    out = []
    for m in f.by_month:
        month = model_health(session, series, settings, since=m.start, until=m.end)
        out.append((m, _group_of(month, key)))
    return out


def _in_group(g: GroupFigures, site: str, line: str | None, name: str, version: str
              ) -> bool:
    return g.group.matches(site, line, name, version)


def _timeline(session: Session, g: GroupFigures, since: datetime, until: datetime
              ) -> list[dict[str, Any]]:
    """Drift and data-quality conditions of the group overlapping the period, as bars."""
    query = select(AssetCondition).where(
        AssetCondition.since < until,
        or_(AssetCondition.ended_at.is_(None), AssetCondition.ended_at >= since),
    ).order_by(AssetCondition.since, AssetCondition.id)
    span = (until - since).total_seconds()
    rows = []
    for c in session.scalars(query):
        if not _in_group(g, c.site, c.line, c.model_name, c.model_version):
            continue
        start = max(c.since, since)
        end = min(c.ended_at or until, until)
        rows.append({
            "c": c, "quality": c.detector in SENSOR_DETECTORS,
            "left": round(100 * (start - since).total_seconds() / span, 2),
            "width": max(0.6, round(100 * (end - start).total_seconds() / span, 2)),
        })
        if len(rows) >= TIMELINE_EVENTS:
            break
    return rows


def _retraining(session: Session, g: GroupFigures, since: datetime, until: datetime
                ) -> list[Ticket]:
    query = select(Ticket).where(
        Ticket.kind == "retraining", Ticket.opened_at < until,
        or_(Ticket.resolved_at.is_(None), Ticket.resolved_at >= since),
    ).order_by(Ticket.opened_at.desc(), Ticket.id.desc())
    return [t for t in session.scalars(query)
            if _in_group(g, t.site, t.line, t.model_name, t.model_version)]


@router.get("/ui/health")
def health_page(request: Request, session: SessionDep, series: SeriesDep,
                settings: SettingsDep, signed: Viewer, period: str = DEFAULT_PERIOD,
                group: str = "all") -> Response:
    """Model health for a project manager: the figures of ``GET /health/models`` for the
    chosen model version or line, by month, with the drift timeline and retraining."""
    try:
        since, until = period_ending(None, parse_period(period))
    except ValueError as exc:
        return _page(request, "error.html", {"title": "Model health", "message": str(exc),
                                             "back": "/ui/health"}, 422)
    f = model_health(session, series, settings, since=since, until=until)
    g = _group_of(f, group)
    if g is None:
        group, g = "all", f.overall
    months = _months(session, series, settings, f, group)
    chart: dict[str, list[float | None]] = {"x": [m.start.timestamp() for m, _ in months]}
    for name in ("precision", "recall", "f1"):
        chart[name] = [None if mg is None else getattr(mg, name).value for _, mg in months]
        chart[f"{name}_low"] = [None if mg is None else getattr(mg, name).low
                                for _, mg in months]
        chart[f"{name}_high"] = [None if mg is None else getattr(mg, name).high
                                 for _, mg in months]
    return _page(request, "health.html", {
        "f": f, "g": g, "group": group, "groups": _groups(f), "period": period,
        "months": months, "chart": chart, "timeline": _timeline(session, g, since, until),
        "retraining": _retraining(session, g, since, until),
    })


# --------------------------------------------------------------------------- errors


def _error_page(request: Request, title: str, message: str, status: int) -> Response:
    return _page(request, "error.html", {"title": title, "message": message}, status)


async def _sign_in_needed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInNeeded)
    return RedirectResponse(f"{SIGN_IN}?then={quote(exc.then, safe='')}", 303)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotAllowed)
    return _error_page(request, "Not allowed", exc.message, 403)


async def _form_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormRefused)
    logger.info("web form refused: %s %s: %s", request.method, request.url.path, exc.message)
    return _error_page(request, "Form refused", exc.message, 403)


def install(app: FastAPI) -> None:
    """Add the pages, their static files and their error pages to the aggregator's app."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="web-static")
    app.add_exception_handler(SignInNeeded, _sign_in_needed)
    app.add_exception_handler(NotAllowed, _not_allowed)
    app.add_exception_handler(FormRefused, _form_refused)
