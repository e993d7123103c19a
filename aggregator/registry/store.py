"""Model versions in: check an uploaded artifact, sign it, keep it; and read them back.

An upload is the exact bytes of ``contract.artifact.pack``: the registry unpacks them into
a scratch directory (the same refusals an agent applies: only the known files, as regular
files), reads the card with ``contract.card.ModelCard`` and checks that ``model.onnx``
hashes to the card's sha256. The card names the version; the same bytes again change
nothing (an upload can be retried), other bytes under a stored name and version are a
conflict: a version, once an agent may have run it, never changes.

Without a signing key the registry is off: it stores nothing it cannot sign, since no
agent would accept it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db import Ticket
from aggregator.errors import AggregatorError
from aggregator.registry.models import ModelVersion
from aggregator.settings import Settings
from contract import artifact
from contract.card import ModelCard
from contract.errors import ContractError
from contract.wire import Artifact, Name

__all__ = [
    "ArtifactRejectedError",
    "RegistryOffError",
    "VersionConflictError",
    "VersionNotFoundError",
    "Upload",
    "artifact_of",
    "artifact_url",
    "f1_target",
    "find",
    "get",
    "list_versions",
    "read_artifact",
    "signing_key",
    "upload",
]

_NAME: TypeAdapter[str] = TypeAdapter(Name)


class RegistryOffError(AggregatorError):
    """The registry cannot do this without a setting (a signing key, a public URL)."""


class ArtifactRejectedError(AggregatorError):
    """An uploaded artifact that is no valid model version; the message says why.
    ``field``: ``body``, or ``answers`` for a ticket that does not exist."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


class VersionConflictError(AggregatorError):
    """Other bytes for a name and version already stored."""


class VersionNotFoundError(AggregatorError):
    """No such model version (or artifact)."""


@dataclass(frozen=True, slots=True)
class Upload:
    version: ModelVersion
    created: bool  # False: the same bytes were stored already


def signing_key(settings: Settings) -> bytes:
    """The private key's PEM; RegistryOffError naming the setting when there is none."""
    path = settings.signing_key_file
    if path is None:
        raise RegistryOffError(
            "the model registry is off: set LINEWATCH_SIGNING_KEY_FILE to an ed25519 key "
            "(`linewatch registry keygen --out DIR` writes one); nothing is stored unsigned")
    try:
        pem = Path(path).read_bytes()
        artifact.load_private_key(pem)
    except OSError as exc:
        raise RegistryOffError(f"LINEWATCH_SIGNING_KEY_FILE {path}: cannot read it: "
                               f"{exc.strerror or exc}") from exc
    except artifact.ArtifactError as exc:
        raise RegistryOffError(f"LINEWATCH_SIGNING_KEY_FILE {path}: {exc.detail}") from exc
    return pem


def artifact_url(settings: Settings, sha256: str) -> str:
    if settings.public_url is None:
        raise RegistryOffError(
            "assignments cannot be published: set LINEWATCH_PUBLIC_URL to the base URL the "
            "agents reach this aggregator at")
    return f"{settings.public_url.rstrip('/')}/registry/artifacts/{sha256}"


def artifact_of(settings: Settings, row: ModelVersion) -> Artifact:
    """The wire description of a stored version, as an assignment carries it."""
    return Artifact(name=row.name, version=row.version, sha256=row.sha256, size=row.size,
                    url=artifact_url(settings, row.sha256), signature=row.signature)


def _card_of(data: bytes) -> ModelCard:
    with tempfile.TemporaryDirectory(prefix="linewatch-upload-") as scratch:
        where = Path(scratch) / "model"
        try:
            artifact.unpack(data, where)
            card = ModelCard.load(where)
            card.verify(where)
        except ContractError as exc:
            raise ArtifactRejectedError(f"not a valid model artifact: {exc}") from exc
    for field, value in (("name", card.name), ("version", card.version)):
        try:
            _NAME.validate_python(value)
        except ValidationError:
            raise ArtifactRejectedError(
                f"the card's {field} {value!r} cannot travel on the wire: 1 to 128 letters, "
                "digits, '.', '_' or '-'") from None
    return card


def upload(session: Session, settings: Settings, data: bytes, *, uploaded_by: str,
           answers: int | None = None, now: datetime | None = None) -> Upload:
    """Check, sign and add an artifact (not committed); see the module docstring."""
    key = signing_key(settings)
    if not data:
        raise ArtifactRejectedError("an empty body: send the bytes of contract.artifact.pack")
    if len(data) > artifact.MAX_ARTIFACT_BYTES:
        raise ArtifactRejectedError(
            f"{len(data)} bytes, more than {artifact.MAX_ARTIFACT_BYTES} an agent accepts")
    card = _card_of(data)
    sha256 = artifact.sha256_bytes(data)
    stored = find(session, card.name, card.version)
    if stored is not None:
        if stored.sha256 == sha256:
            return Upload(stored, created=False)
        raise VersionConflictError(
            f"{card.name} {card.version} is stored with other bytes (sha256 "
            f"{stored.sha256}); a version never changes: give the card a new version")
    same_bytes = session.scalar(select(ModelVersion).where(ModelVersion.sha256 == sha256))
    if same_bytes is not None:  # unreachable unless a card was edited without its bytes
        raise VersionConflictError(f"these bytes are stored as {same_bytes.name} "
                                   f"{same_bytes.version}")
    if answers is not None and session.get(Ticket, answers) is None:
        raise ArtifactRejectedError(f"answers={answers}: no such ticket", "answers")
    row = ModelVersion(
        name=card.name, version=card.version,
        card=card.model_dump(mode="json"), sha256=sha256, size=len(data),
        signature=artifact.sign(key, card.name, card.version, sha256), artifact=data,
        uploaded_by=uploaded_by, uploaded_at=now or datetime.now(UTC),
        answers_ticket=answers)
    try:
        with session.begin_nested():  # another upload of it may win the race
            session.add(row)
    except IntegrityError:
        stored = find(session, card.name, card.version)
        if stored is not None and stored.sha256 == sha256:
            return Upload(stored, created=False)
        raise VersionConflictError(f"{card.name} {card.version} was stored with other "
                                   "bytes meanwhile") from None
    return Upload(row, created=True)


def find(session: Session, name: str, version: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.name == name,
                                                     ModelVersion.version == version))


def get(session: Session, name: str, version: str) -> ModelVersion:
    row = find(session, name, version)
    if row is None:
        raise VersionNotFoundError(f"no model version {name} {version} in the registry")
    return row


def list_versions(session: Session, name: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.uploaded_at,
                                          ModelVersion.id)
    if name is not None:
        query = query.where(ModelVersion.name == name)
    return list(session.scalars(query))


def read_artifact(session: Session, sha256: str) -> bytes:
    data = session.scalar(select(ModelVersion.artifact).where(ModelVersion.sha256 == sha256))
    if data is None:
        raise VersionNotFoundError(f"no artifact with sha256 {sha256}")
    return bytes(data)


def f1_target(card: dict[str, Any]) -> float | None:
    """The card's per-window test F1: what the gate judges a candidate's estimate by."""
    metric = card.get("metrics", {}).get("test_window_f1")
    return None if metric is None else float(metric["value"])
