"""Routes of the playground: the page at ``/`` and its vendored files under ``/static``.

The page is public (it holds no data); every API call it makes carries the visitor's
token, so the page itself never needs one. Everything it loads is served from this
package, so it works offline and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
import mimetypes
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from sdserve.errors import NotFound

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATES_DIR = WEB_DIR / "templates"

#: No inline script or style and no third-party origin; images may be output URLs on a
#: public URL or a CDN in front of the file store, and previews arrive as data URIs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src * data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def web_router(*, auth_required: bool) -> APIRouter:
    """The playground router. ``auth_required`` makes the page ask for a token up front."""
    router = APIRouter(include_in_schema=False)
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
    )

    @router.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = environment.get_template("index.html").render(
            auth_required=auth_required, asset_version=asset_version()
        )
        return HTMLResponse(page, headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})

    @router.get("/static/{path:path}")
    async def static(path: str) -> Response:
        file = static_file(path)
        media_type = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
        return Response(
            file.read_bytes(),
            media_type=media_type or "application/octet-stream",
            headers={**_SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"},
        )

    return router


def static_file(path: str) -> Path:
    """The file under ``static/`` named by ``path``; :class:`NotFound` for anything else."""
    candidate = (STATIC_DIR / path).resolve()
    # resolve() follows "..", so anything outside the folder fails this check
    if not candidate.is_relative_to(STATIC_DIR) or not candidate.is_file():
        raise NotFound(f"no static file {path!r}")
    return candidate


@lru_cache(maxsize=1)
def asset_version() -> str:
    """A short hash of the static files, so browsers reload them after an upgrade."""
    digest = hashlib.sha256()
    for file in sorted(STATIC_DIR.rglob("*")):
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]
