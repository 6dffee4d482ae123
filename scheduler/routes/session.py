"""Log in to the dashboard with a token; the session lives in an HttpOnly cookie."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from msgspec import Meta, Struct

from common.errors import Unauthorized
from scheduler.http import PRINCIPAL, PRINCIPAL_BY_DIGEST, SESSIONS, json_response, read_body
from scheduler.routes.table import RouteTable
from scheduler.sessions import COOKIE, SESSION_TTL_S, Session
from scheduler.tokens import token_digest

routes = RouteTable()


class Login(Struct, forbid_unknown_fields=True):
    token: Annotated[str, Meta(min_length=1, max_length=512)]


def _describe(session: Session, role: str, name: str) -> dict[str, str]:
    return {"csrf": session.csrf, "role": role, "name": name}


@routes.post(
    "/api/v1/session",
    summary="Log in with a token: an HttpOnly session cookie",
    body="object",
    public=True,
    stateless=True,
)
async def login(request: web.Request) -> web.Response:
    req = await read_body(request, Login)
    row = request.app[PRINCIPAL](req.token)
    if row is None or row.role in ("join", "node"):
        raise Unauthorized("invalid token")
    session = await request.app[SESSIONS].open(token_digest(req.token))
    resp = json_response(_describe(session, row.role, row.name))
    resp.set_cookie(
        COOKIE,
        session.id,
        max_age=int(SESSION_TTL_S),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return resp


@routes.get(
    "/api/v1/session",
    summary="The session's user and CSRF token",
    public=True,
    stateless=True,
)
async def current(request: web.Request) -> web.Response:
    """Who is logged in, and the CSRF token to send with changes (after a page reload)."""
    session_id = request.cookies.get(COOKIE)
    session = await request.app[SESSIONS].get(session_id) if session_id else None
    row = request.app[PRINCIPAL_BY_DIGEST](session.token_digest) if session else None
    if session is None or row is None:
        raise Unauthorized("not logged in")
    return json_response(_describe(session, row.role, row.name))


@routes.delete("/api/v1/session", summary="Log out", public=True, stateless=True)
async def logout(request: web.Request) -> web.Response:
    session_id = request.cookies.get(COOKIE)
    if session_id:
        await request.app[SESSIONS].close(session_id)
    resp = json_response({"ok": True})
    resp.del_cookie(COOKIE, path="/")
    return resp
