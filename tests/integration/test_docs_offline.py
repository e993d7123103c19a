"""``/docs`` and ``/redoc`` work on a network with no way out: every script, stylesheet,
icon and the schema itself come from the aggregator, and nothing vendored asks a font or
CDN host for anything."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from aggregator_support import start_service, store_settings
from servers import free_port

from aggregator.api.app import STATIC_DIR
from aggregator.api.routes.docs import CONTENT_SECURITY_POLICY
from aggregator.server import ServerThread

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Attributes through which a page makes the browser fetch something.
URL_ATTRIBUTES = {"src", "href", "spec-url", "action", "data"}
OUTSIDE_HOSTS = re.compile(
    r"fonts\.googleapis\.com|fonts\.gstatic\.com|cdn\.jsdelivr\.net|unpkg\.com"
)


class _References(HTMLParser):
    """Every URL-valued attribute of a page, and the text of its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in URL_ATTRIBUTES and v is not None]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = store_settings(
        tmp_path_factory.mktemp("docs"), embedded_broker_port=free_port(), http_port=0
    )
    server = start_service(settings)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "openapi.json"}),
        ("/redoc", {"redoc.standalone.js", "favicon-32x32.png", "openapi.json"}),
    ],
)
def test_docs_page_loads_everything_from_the_aggregator(
    service: ServerThread, page: str, expected: set[str]
) -> None:
    with httpx.Client(base_url=service.url, timeout=10) as http:
        response = http.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY

        parsed = _References()
        parsed.feed(response.text)
        # Swagger UI is given the schema's URL in its inline start-up script.
        inline = [m for s in parsed.scripts for m in re.findall(r"url: '([^']*)'", s)]
        urls = parsed.urls + inline
        assert {u.rsplit("/", 1)[-1] for u in urls} == expected
        for url in urls:
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc) == ("", ""), f"{page} refers to {url}"
            assert url.startswith("/"), url
            asset = http.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 500, url  # the smallest, the favicon, has 628 bytes
        assert "http://" not in response.text and "https://" not in response.text


def test_content_security_policy_allows_only_the_aggregator() -> None:
    sources = {
        source
        for directive in CONTENT_SECURITY_POLICY.split("; ")
        for source in directive.split()[1:]
    }
    assert sources == {"'self'", "'unsafe-inline'", "data:", "blob:"}


def test_vendored_assets_ask_no_font_or_cdn_host() -> None:
    files = [p for p in STATIC_DIR.rglob("*") if p.suffix in {".js", ".css"}]
    assert {p.name for p in files} == {
        "swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"
    }
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not OUTSIDE_HOSTS.search(text), path
        if path.suffix == ".css":
            # Every url() in the stylesheet is inline data: no image or font to fetch.
            targets = re.findall(r"url\(\s*['\"]?([^'\")]*)", text)
            assert targets and all(t.startswith("data:") for t in targets), path


def test_wheel_ships_every_static_file() -> None:
    """setuptools' package data covers everything under aggregator/api/static."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["aggregator.api"]
    # setuptools expands the patterns with glob, relative to the package's directory.
    shipped = {p for pattern in patterns for p in STATIC_DIR.parent.glob(pattern)}
    files = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert len(files) >= 10
    assert files <= shipped, sorted(str(f) for f in files - shipped)
