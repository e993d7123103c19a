"""``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc), with every script, stylesheet and
icon served by the aggregator itself from ``aggregator/api/static/`` (see its README): a
plant network with no route to a CDN still gets its API documentation.

FastAPI's own recipe for self-hosted docs assets, plus a Content-Security-Policy that keeps
the browser on the aggregator's origin: nothing on these pages is fetched from elsewhere.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_PREFIX", "redoc", "router", "swagger_ui"]

STATIC_PREFIX = "/static"

# Inline scripts: FastAPI's pages start Swagger UI / ReDoc from one; ReDoc also runs a worker
# from a blob: URL. Images: the UIs' icons are data: URIs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)

router = APIRouter(include_in_schema=False)


def _prefix(request: Request) -> str:
    """The path the app is mounted at behind a proxy (``root_path``), without a final /."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _secured(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = _prefix(request)
    return _secured(
        get_swagger_ui_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PREFIX}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PREFIX}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PREFIX}/swagger-ui/favicon-32x32.png",
            # The validator badge would send the schema's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = _prefix(request)
    return _secured(
        get_redoc_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_PREFIX}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_PREFIX}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
    )
