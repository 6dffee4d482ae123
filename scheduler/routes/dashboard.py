"""The web dashboard: static HTML, CSS and ES modules from ``scheduler/web``, no build step.

The page itself needs no token (the auth middleware only guards the API); it logs in
through ``/api/v1/session`` and talks to the API with its session cookie. Every file is
served with a strict Content-Security-Policy: only this origin's scripts, styles and
connections, no inline script, no framing.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from scheduler.routes.table import RouteTable

routes = RouteTable()

#: where the dashboard's files live (package data of ``scheduler``)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: the URL prefix of the dashboard's assets
ASSETS = "/ui"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Files change with the scheduler's version: revalidate (ETag, Last-Modified) each time.
    "Cache-Control": "no-cache",
}
#: content types set explicitly: ES modules must be served as JavaScript everywhere
CONTENT_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
}


def _file(path: Path) -> web.FileResponse:
    resp = web.FileResponse(path, headers=SECURITY_HEADERS)
    resp.content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    if resp.content_type.startswith("text/") or path.suffix in (".svg", ".json"):
        resp.charset = "utf-8"
    return resp


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return _file(WEB_DIR / "index.html")


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.FileResponse:
    return _file(WEB_DIR / "favicon.svg")


@routes.get(ASSETS + "/{path:.+}")
async def asset(request: web.Request) -> web.FileResponse:
    """A file under WEB_DIR; nothing outside it, no directory listings, no dotfiles."""
    rel = request.match_info["path"]
    root = WEB_DIR.resolve()
    path = (root / rel).resolve()
    if (
        not path.is_relative_to(root)
        or any(part.startswith(".") for part in path.relative_to(root).parts)
        or not path.is_file()
    ):
        raise web.HTTPNotFound()
    return _file(path)
