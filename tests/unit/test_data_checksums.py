"""The data sets in models/data are the bytes their READMEs describe.

``models/data/SHA256SUMS`` (``sha256sum`` format) lists every data file; each set's
README.md gives the same sha256s and, for the gzip files, the sha256 of the uncompressed
content. Training metrics and test expectations are only meaningful for exactly these bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "models" / "data"
# Not data: our own descriptions, the checksum list itself, and the git attributes.
NOT_DATA = {"README.md", "SHA256SUMS", ".gitattributes"}
# A row of a README's "Files" table for a compressed file:
# | `name.gz` | bytes | `sha256 of this file` | uncompressed bytes | `sha256 of content` | lines |
GZ_ROW = re.compile(
    r"^\| `(?P<name>[^`]+\.gz)` \| [\d,]+ \| `(?P<sha256>[0-9a-f]{64})` \| "
    r"(?P<size>[\d,]+) \| `(?P<content_sha256>[0-9a-f]{64})` \|",
    re.MULTILINE,
)


def _listed() -> dict[str, str]:
    """Relative path -> sha256, from SHA256SUMS."""
    listed = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    return listed


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


LISTED = _listed()


def test_every_data_file_is_listed() -> None:
    on_disk = {
        p.relative_to(DATA).as_posix()
        for p in DATA.rglob("*")
        if p.is_file() and p.name not in NOT_DATA
    }
    assert on_disk == set(LISTED)
    # The three sets, with the 13 raw IMS snapshots.
    assert {name.split("/")[0] for name in LISTED} == {
        "ai4i2020",
        "cmapss_fd001",
        "ims_bearing_test2",
    }
    assert sum(name.startswith("ims_bearing_test2/2nd_test/") for name in LISTED) == 13


@pytest.mark.parametrize("name", sorted(LISTED))
def test_file_matches_sha256sums_and_its_readme(name: str) -> None:
    assert _sha256((DATA / name).read_bytes()) == LISTED[name]
    readme = (DATA / name.split("/")[0] / "README.md").read_text(encoding="utf-8")
    assert LISTED[name] in readme


def test_gzip_content_matches_readme() -> None:
    rows = [
        (folder.name, match)
        for folder in sorted(DATA.iterdir())
        if (folder / "README.md").is_file()
        for match in GZ_ROW.finditer((folder / "README.md").read_text(encoding="utf-8"))
    ]
    gz_listed = sorted(name for name in LISTED if name.endswith(".gz"))
    assert sorted(f"{folder}/{m['name']}" for folder, m in rows) == gz_listed
    # C-MAPSS FD001: the train and test tables are the compressed ones.
    assert gz_listed == ["cmapss_fd001/test_FD001.txt.gz", "cmapss_fd001/train_FD001.txt.gz"]
    for folder, match in rows:
        raw = (DATA / folder / match["name"]).read_bytes()
        assert _sha256(raw) == match["sha256"]
        content = gzip.decompress(raw)
        assert len(content) == int(match["size"].replace(",", ""))
        assert _sha256(content) == match["content_sha256"], match["name"]
