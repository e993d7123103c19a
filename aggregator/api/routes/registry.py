"""The model registry: upload signed model versions, assign them to agents, promote them
through the gate, roll them back (``aggregator.registry`` says how each works).

Scopes: reading needs ``read``; uploads, assignments, promotion and rollback ``admin``,
each with its audit entry. ``GET /registry/artifacts/{sha256}`` needs no token, on
purpose: the agents fetch it with nothing but the URL their assignment carries, and the
bytes are content-addressed (their sha256 is the URL) and signed with the key the agents
trust, so a copy anyone fetches can neither be altered unnoticed nor run unsigned. A model
is no secret here; do not upload one that is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from aggregator import audit
from aggregator.api.deps import SessionDep, SettingsDep
from aggregator.api.responses import AUTH, BAD_BODY, DB_DOWN, Responses
from aggregator.api.schemas import ErrorOut
from aggregator.api.security import READ, AdminToken
from aggregator.errors import AggregatorError
from aggregator.registry import lifecycle, store
from aggregator.registry.models import ModelAssignment, ModelVersion
from aggregator.registry.publisher import ModelPublisher
from contract.wire import Name

__all__ = [
    "ArtifactOut",
    "AgentsTarget",
    "AssignmentIn",
    "AssignmentOut",
    "DecisionOut",
    "GateRefusedOut",
    "PromoteIn",
    "RollbackIn",
    "SiteTarget",
    "VersionDetailOut",
    "VersionOut",
    "assign",
    "download_artifact",
    "get_version",
    "list_assignments",
    "list_versions",
    "promote",
    "rollback",
    "router",
    "upload",
]

router = APIRouter(prefix="/registry", tags=["registry"])

_GZIP = "application/gzip"
Sha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="the artifact's sha256")]
AssignmentId = Annotated[int, Path(ge=1, le=2**31 - 1, description="an assignment's id")]


def _error(status: int, description: str) -> Responses:
    return {status: {"model": ErrorOut, "description": description}}


OFF = _error(503, "the registry is off (no LINEWATCH_SIGNING_KEY_FILE), or the SQL "
             "database cannot be reached")
NOT_FOUND = _error(404, "no such model version, artifact or assignment")
CONFLICT = _error(409, "other bytes for a stored version; an assignment that cannot do "
                  "this; a promotion the gate refused (with its reasons and figures)")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class VersionOut(_Out):
    name: str
    version: str
    sha256: str
    size: int
    signature: str
    uploaded_by: str
    uploaded_at: datetime
    answers_ticket: int | None


class AssignmentOut(_Out):
    id: int
    model_name: str
    version: str
    stage: str
    target_agents: list[str] | None
    target_site: str | None
    target_line: str | None
    share: float | None
    baseline_version: str | None
    previous_id: int | None
    state: str
    created_by: str
    created_at: datetime
    ended_at: datetime | None
    reason: str
    figures: list[dict[str, Any]] = Field(description="the gate's verdict at each decision")
    agents: list[str] = Field(default_factory=list,
                              description="the agents it covers now (a canary: those drawn)")


class VersionDetailOut(VersionOut):
    card: dict[str, Any]
    assignments: list[AssignmentOut]


class ArtifactOut(BaseModel):
    """The answer to an upload: the version, and whether these bytes were new."""

    created: bool
    version: VersionOut


class AgentsTarget(BaseModel):
    """These agents, by id."""

    model_config = ConfigDict(extra="forbid")

    agents: list[Name] = Field(min_length=1, max_length=10_000)


class SiteTarget(BaseModel):
    """Every agent of a site, or of one of its lines."""

    model_config = ConfigDict(extra="forbid")

    site: Name
    line: Name | None = None


class AssignmentIn(BaseModel):
    """A version at a stage on a target: ``{"agents": [...]}`` or ``{"site": ..., "line":
    ...}`` (line optional)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    version: Name
    stage: Literal["shadow", "canary", "live"]
    target: AgentsTarget | SiteTarget
    share: float | None = Field(None, gt=0, le=1, description="canaries only: the share of "
                                "the target's agents that run it live")

    def as_target(self) -> lifecycle.Target:
        if isinstance(self.target, AgentsTarget):
            return lifecycle.Target(agents=tuple(self.target.agents))
        return lifecycle.Target(site=self.target.site, line=self.target.line)


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    share: float | None = Field(None, gt=0, le=1, description="shadow -> canary: the share")


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, pattern=r"[^\x00-\x20\x7f]")
    ticket: bool = Field(False, description="also open a retraining ticket saying why")


class GateRefusedOut(BaseModel):
    """A promotion the gate refused (409): why, and the figures it judged by."""

    detail: str
    reasons: list[str]
    ready: bool = Field(description="false: not enough common windows to judge yet")
    figures: dict[str, Any] | None


class DecisionOut(BaseModel):
    assignment: AssignmentOut
    new_assignment: AssignmentOut | None = None
    ticket: int | None = None


def _publisher(request: Request) -> ModelPublisher | None:
    found: ModelPublisher | None = getattr(request.app.state, "model_publisher", None)
    return found


def _assignment_out(session: SessionDep, row: ModelAssignment) -> AssignmentOut:
    out = AssignmentOut.model_validate(row)
    if row.state == "active":
        out.agents = lifecycle.judged_agents(session, row)
    return out


def _fail(exc: AggregatorError) -> HTTPException:
    status: int = {store.RegistryOffError: 503, store.ArtifactRejectedError: 422,
              store.VersionConflictError: 409, store.VersionNotFoundError: 404,
              lifecycle.AssignmentNotFoundError: 404,
              lifecycle.AssignmentStateError: 409}.get(type(exc), 500)
    return HTTPException(status, str(exc))


_ERRORS = (store.RegistryOffError, store.ArtifactRejectedError, store.VersionConflictError,
           store.VersionNotFoundError, lifecycle.AssignmentNotFoundError,
           lifecycle.AssignmentStateError)


@router.post("/versions", status_code=201,
             responses=AUTH | OFF | CONFLICT | BAD_BODY | {200: {"model": ArtifactOut}})
def upload(data: Annotated[bytes, Body(media_type=_GZIP)], response: Response,
           session: SessionDep, settings: SettingsDep, caller: AdminToken,
           answers: Annotated[int | None, Query(ge=1, le=2**31 - 1, description=(
               "the retraining ticket this version answers"))] = None) -> ArtifactOut:
    """Upload a model version: the body is the exact bytes of ``contract.artifact.pack``
    (``linewatch registry publish`` sends them). The registry checks the card and the
    model's sha256 and signs it. 201 stored; 200 the same bytes were stored already; 409
    other bytes under that name and version; 422 not a valid artifact (the message names
    the problem); 503 no signing key."""
    try:
        done = store.upload(session, settings, data, uploaded_by=caller.actor.name,
                            answers=answers)
    except store.ArtifactRejectedError as exc:
        # FastAPI's own 422 body, so one schema describes every refused request.
        where = ("query", "answers") if exc.field == "answers" else ("body",)
        raise RequestValidationError([{"type": "value_error", "loc": where,
                                       "msg": str(exc), "input": None}]) from exc
    except _ERRORS as exc:
        raise _fail(exc) from exc
    row = done.version
    if done.created:
        audit.record(session, caller.actor, "registry.upload", "model_version",
                     f"{row.name}@{row.version}",
                     {"sha256": row.sha256, "size": row.size, "answers": answers})
        session.commit()
    else:
        response.status_code = 200
    return ArtifactOut(created=done.created, version=VersionOut.model_validate(row))


@router.get("/versions", dependencies=[READ], responses=AUTH | DB_DOWN)
def list_versions(session: SessionDep, name: Annotated[Name | None, Query(
        description="only this model's versions")] = None) -> list[VersionOut]:
    """Every stored version (by model name, oldest first); never the bytes."""
    return [VersionOut.model_validate(v) for v in store.list_versions(session, name)]


@router.get("/versions/{name}/{version}", dependencies=[READ],
            responses=AUTH | DB_DOWN | NOT_FOUND)
def get_version(name: Annotated[str, Path(max_length=128)],
                version: Annotated[str, Path(max_length=128)],
                session: SessionDep) -> VersionDetailOut:
    """One version: its card, and every assignment of it with the gate's figures."""
    try:
        row: ModelVersion = store.get(session, name, version)
    except store.VersionNotFoundError as exc:
        raise _fail(exc) from exc
    rows = session.query(ModelAssignment).filter(
        ModelAssignment.model_name == name, ModelAssignment.version == version
    ).order_by(ModelAssignment.id).all()
    return VersionDetailOut.model_validate({
        **VersionOut.model_validate(row).model_dump(), "card": row.card,
        "assignments": [_assignment_out(session, r) for r in rows]})


@router.get("/artifacts/{sha256}", response_class=Response,
            responses={200: {"content": {_GZIP: {}}, "description": "the artifact's bytes"}}
            | NOT_FOUND | DB_DOWN)
def download_artifact(sha256: Sha256, session: SessionDep, request: Request) -> Response:
    """The bytes of an artifact, ``ETag`` its sha256. No token needed: see the module
    docstring (content-addressed and signed)."""
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    try:
        data = store.read_artifact(session, sha256)
    except store.VersionNotFoundError as exc:
        raise _fail(exc) from exc
    return Response(data, media_type=_GZIP, headers={
        "ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/assignments", dependencies=[READ], responses=AUTH | DB_DOWN)
def list_assignments(session: SessionDep, state: Annotated[
        Literal["active", "promoted", "rolled_back", "superseded"] | None,
        Query(description="only assignments in this state")] = None) -> list[AssignmentOut]:
    """Assignments, newest first."""
    query = session.query(ModelAssignment).order_by(ModelAssignment.id.desc())
    if state is not None:
        query = query.filter(ModelAssignment.state == state)
    return [_assignment_out(session, r) for r in query.all()]


@router.post("/assignments", status_code=201,
             responses=AUTH | DB_DOWN | NOT_FOUND | CONFLICT | BAD_BODY)
def assign(body: AssignmentIn, request: Request, session: SessionDep,
           caller: AdminToken) -> AssignmentOut:
    """Assign a version: ``shadow`` (runs beside the live model, judged, opens no
    ticket), ``canary`` (live on ``share`` of the target's agents) or ``live``. The agents
    get it on their retained ``model`` command topic within a second (once
    ``LINEWATCH_PUBLIC_URL`` is set: the artifacts' URLs start with it)."""
    try:
        row = lifecycle.assign(
            session, name=body.name, version=body.version, stage=body.stage,
            target=body.as_target(),
            share=body.share, actor=caller.actor)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    session.commit()
    _wake(request)
    return _assignment_out(session, row)


@router.post("/assignments/{assignment_id}/promote",
             responses=AUTH | DB_DOWN | NOT_FOUND | BAD_BODY | {409: {
                 "model": GateRefusedOut | ErrorOut,
                 "description": "the gate refused (its reasons and figures), or the "
                 "assignment cannot be promoted (not active, live already, no baseline)"}})
def promote(assignment_id: AssignmentId, request: Request, session: SessionDep,
            caller: AdminToken, body: PromoteIn | None = None) -> DecisionOut:
    """Promote shadow -> canary (give ``share``) or canary -> live, if the promotion gate
    passes; otherwise 409 with the gate's ``reasons`` and ``figures`` (kept with the
    assignment either way)."""
    judge: lifecycle.Judge = request.app.state.registry_judge
    try:
        verdict, new = lifecycle.promote(session, assignment_id, judge, actor=caller.actor,
                                         share=None if body is None else body.share)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    session.commit()
    if new is None:
        last = session.get(ModelAssignment, assignment_id)
        figures = last.figures[-1] if last is not None and last.figures else {}
        refused = GateRefusedOut(
            detail="the promotion gate refused: " + ("; ".join(verdict.reasons)
                                                     or "not passed"),
            reasons=list(verdict.reasons), ready=verdict.ready,
            figures=figures.get("figures"))
        return JSONResponse(status_code=409,  # type: ignore[return-value]
                            content=refused.model_dump(mode="json"))
    _wake(request)
    old = session.get(ModelAssignment, assignment_id)
    assert old is not None
    return DecisionOut(assignment=_assignment_out(session, old),
                       new_assignment=_assignment_out(session, new))


@router.post("/assignments/{assignment_id}/rollback",
             responses=AUTH | DB_DOWN | NOT_FOUND | CONFLICT | BAD_BODY)
def rollback(assignment_id: AssignmentId, body: RollbackIn, request: Request,
             session: SessionDep, caller: AdminToken) -> DecisionOut:
    """End an active assignment: its agents go back to what they ran before (a canary's
    to the previous live, without shadow). ``ticket``: also open a retraining ticket."""
    try:
        row, ticket = lifecycle.rollback(session, assignment_id, reason=body.reason,
                                         actor=caller.actor, open_ticket=body.ticket)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    session.commit()
    _wake(request)
    return DecisionOut(assignment=_assignment_out(session, row),
                       ticket=None if ticket is None else ticket.id)


def _wake(request: Request) -> None:
    publisher = _publisher(request)
    if publisher is not None:
        publisher.wake()
