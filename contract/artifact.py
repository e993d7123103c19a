"""A model version as one signed file: what the registry stores and the agents fetch.

An artifact is a gzipped tar of a model directory's ``card.json`` and ``model.onnx`` (and
``CARD.md`` when present), built byte for byte the same from the same files, so its sha256
names its content. The registry signs ``signed_message(name, version, sha256)`` with an
ed25519 key whose public half every agent trusts: an agent refuses an artifact whose bytes
do not hash to the announced sha256, or whose signature no trusted key verifies, before it
unpacks a single file.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public), what ``openssl genpkey
-algorithm ed25519`` writes. ``cryptography`` is imported here only, and only when a key
is used, so reading the wire contract does not need it.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from contract.card import CARD_FILE, MODEL_FILE
from contract.errors import ContractError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "ARTIFACT_FILES",
    "MAX_ARTIFACT_BYTES",
    "ArtifactError",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "pack",
    "public_pem",
    "sha256_bytes",
    "sign",
    "signed_message",
    "unpack",
    "verify",
]

# What an artifact holds, in this order; anything else in a model directory stays out.
ARTIFACT_FILES = (CARD_FILE, MODEL_FILE, "CARD.md")
REQUIRED_FILES = (CARD_FILE, MODEL_FILE)
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024


class ArtifactError(ContractError):
    """An artifact or a key that cannot be trusted or read; ``reason`` is one word:
    ``sha256``, ``signature``, ``malformed``, ``too_large`` or ``key``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(model_dir: str | Path) -> bytes:
    """The artifact of a model directory: the same files give the same bytes (fixed
    order, times, owners and modes; gzip without a name or time)."""
    root = Path(model_dir)
    missing = [n for n in REQUIRED_FILES if not (root / n).is_file()]
    if missing:
        raise ArtifactError("malformed", f"{root} has no {', '.join(missing)}")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ARTIFACT_FILES:
            path = root / name
            if not path.is_file():
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(tar_bytes.getvalue())
    return out.getvalue()


def unpack(data: bytes, dest: str | Path) -> Path:
    """Write an artifact's files into ``dest`` (created; it must not exist) and return it.
    Only the known file names, as regular files: no path, link or device gets through."""
    target = Path(dest)
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ArtifactError("too_large", f"{len(data)} bytes > {MAX_ARTIFACT_BYTES}")
    try:
        raw = gzip.decompress(data)
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise ArtifactError("malformed", f"not a gzipped tar: {exc}") from exc
    files: dict[str, bytes] = {}
    with tar:
        for member in tar.getmembers():
            if member.name not in ARTIFACT_FILES or not member.isfile():
                raise ArtifactError("malformed", f"unexpected member {member.name!r}")
            extracted = tar.extractfile(member)
            if extracted is None:
                raise ArtifactError("malformed", f"unreadable member {member.name!r}")
            files[member.name] = extracted.read()
    missing = [n for n in REQUIRED_FILES if n not in files]
    if missing:
        raise ArtifactError("malformed", f"artifact has no {', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=False)
    for name, content in files.items():
        with open(target / name, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    return target


def signed_message(name: str, version: str, sha256: str) -> bytes:
    """What a signature covers: the model's name and version and the artifact's sha256, so
    a valid signature cannot be moved to other bytes or another version."""
    return f"linewatch-artifact/1\n{name}\n{version}\n{sha256}".encode()


def generate_key() -> bytes:
    """A new ed25519 private key, PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ArtifactError("key", f"not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError("key", f"an {type(key).__name__}, not an ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ArtifactError("key", f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError("key", f"an {type(key).__name__}, not an ed25519 key")
    return key


def public_pem(private_pem: bytes) -> bytes:
    """The public half of a private key, PEM: what the agents are given to trust."""
    from cryptography.hazmat.primitives import serialization

    return load_private_key(private_pem).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(private_pem: bytes, name: str, version: str, sha256: str) -> str:
    """The base64 signature of an artifact, as ``wire.Artifact.signature`` carries it."""
    key = load_private_key(private_pem)
    return base64.b64encode(key.sign(signed_message(name, version, sha256))).decode()


def verify(public_pems: list[bytes], data: bytes, *, name: str, version: str, sha256: str,
           signature: str) -> None:
    """Raise ArtifactError unless ``data`` hashes to ``sha256`` and one of the trusted keys
    verifies ``signature`` over it; checked before anything is unpacked."""
    from cryptography.exceptions import InvalidSignature

    got = sha256_bytes(data)
    if got != sha256:
        raise ArtifactError("sha256", f"the artifact hashes to {got}, announced {sha256}")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArtifactError("signature", f"not base64: {exc}") from exc
    message = signed_message(name, version, sha256)
    for pem in public_pems:
        try:
            load_public_key(pem).verify(raw, message)
            return
        except InvalidSignature:
            continue
    raise ArtifactError("signature", f"no trusted key ({len(public_pems)}) verifies the "
                                     f"signature of {name} {version}")
