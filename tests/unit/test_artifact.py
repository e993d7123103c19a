"""contract.artifact: the same model directory packs to the same bytes; unpacking lets
only the known files through; verification refuses wrong bytes, keys and signatures."""

from __future__ import annotations

import base64
import gzip
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from contract import artifact
from contract.artifact import ArtifactError

MODEL = Path(__file__).resolve().parents[2] / "models" / "cmapss_fd001"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(MODEL, tmp_path / "model"))


@pytest.fixture(scope="module")
def key() -> bytes:
    return artifact.generate_key()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_pack_gives_the_same_bytes_whatever_the_files_times(model_dir: Path) -> None:
    first = artifact.pack(model_dir)
    for path in model_dir.iterdir():
        os.utime(path, (1_000_000, 1_000_000))
    (model_dir / "notes.txt").write_text("not part of the artifact")
    assert artifact.pack(model_dir) == first
    (model_dir / "card.json").write_bytes((model_dir / "card.json").read_bytes() + b"\n")
    assert artifact.pack(model_dir) != first


def test_unpack_gives_back_the_files(model_dir: Path, tmp_path: Path) -> None:
    out = artifact.unpack(artifact.pack(model_dir), tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["CARD.md", "card.json", "model.onnx"]
    for name in ("card.json", "model.onnx", "CARD.md"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()


def test_pack_refuses_a_directory_without_its_model(model_dir: Path) -> None:
    (model_dir / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx") as caught:
        artifact.pack(model_dir)
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize("members, what", [
    ([_file("card.json", b"{}"), _file("model.onnx", b"x"), _file("../evil", b"x")],
     "../evil"),
    ([_file("card.json", b"{}"), _file("/etc/model.onnx", b"x")], "/etc/model.onnx"),
    ([_file("card.json", b"{}"), _file("model.onnx", b"x"), _file("extra.bin", b"x")],
     "extra.bin"),
    ([_file("card.json", b"{}"), _file("sub/model.onnx", b"x")], "sub/model.onnx"),
], ids=["traversal", "absolute", "extra", "nested"])
def test_unpack_refuses_unknown_members(members: list[tuple[tarfile.TarInfo, bytes]],
                                         what: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="unexpected member") as caught:
        artifact.unpack(_tar(members), tmp_path / "out")  # type: ignore[arg-type]
    assert what in caught.value.detail and caught.value.reason == "malformed"
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                                  tarfile.CHRTYPE])
def test_unpack_refuses_links_and_other_non_files(kind: bytes, tmp_path: Path) -> None:
    link = tarfile.TarInfo("model.onnx")
    link.type, link.linkname = kind, "/etc/passwd"
    with pytest.raises(ArtifactError, match="unexpected member 'model.onnx'"):
        artifact.unpack(_tar([_file("card.json", b"{}"), (link, None)]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpack_refuses_missing_files_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no model.onnx"):
        artifact.unpack(_tar([_file("card.json", b"{}")]), tmp_path / "a")
    with pytest.raises(ArtifactError, match="not a gzipped tar"):
        artifact.unpack(b"not an artifact", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_verify_accepts_the_signed_artifact(model_dir: Path, key: bytes) -> None:
    data = artifact.pack(model_dir)
    sha = artifact.sha256_bytes(data)
    signature = artifact.sign(key, "m", "2", sha)
    other = artifact.generate_key()
    # Any one trusted key that verifies will do (a key being rotated in).
    artifact.verify([artifact.public_pem(other), artifact.public_pem(key)], data, name="m",
                    version="2", sha256=sha, signature=signature)


def test_verify_refuses_bytes_that_are_not_the_announced_ones(model_dir: Path,
                                                              key: bytes) -> None:
    data = artifact.pack(model_dir)
    sha = artifact.sha256_bytes(data)
    signature = artifact.sign(key, "m", "2", sha)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ArtifactError) as caught:
        artifact.verify([artifact.public_pem(key)], tampered, name="m", version="2",
                        sha256=sha, signature=signature)
    assert caught.value.reason == "sha256"


def test_verify_refuses_a_wrong_key_bad_base64_and_a_moved_signature(model_dir: Path,
                                                                     key: bytes) -> None:
    data = artifact.pack(model_dir)
    sha = artifact.sha256_bytes(data)
    signature = artifact.sign(key, "m", "2", sha)
    trusted = [artifact.public_pem(key)]

    def refused(keys: list[bytes], version: str, sig: str) -> ArtifactError:
        with pytest.raises(ArtifactError) as caught:
            artifact.verify(keys, data, name="m", version=version, sha256=sha, signature=sig)
        return caught.value

    assert refused([artifact.public_pem(artifact.generate_key())], "2", signature
                   ).reason == "signature"
    assert "not base64" in refused(trusted, "2", "not*base64!").detail
    # A valid signature of version 2 does not make the same bytes version 3.
    assert refused(trusted, "3", signature).reason == "signature"
    flipped = base64.b64decode(signature)
    flipped = bytes([flipped[0] ^ 1]) + flipped[1:]
    assert refused(trusted, "2", base64.b64encode(flipped).decode()).reason == "signature"
    assert refused([], "2", signature).reason == "signature"


def test_keys_that_are_not_ed25519_pem_are_refused() -> None:
    with pytest.raises(ArtifactError) as caught:
        artifact.load_private_key(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    assert caught.value.reason == "key"
    with pytest.raises(ArtifactError):
        artifact.load_public_key(artifact.generate_key())  # a private key is no public one
