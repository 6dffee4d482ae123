"""HTTP plumbing shared by every route: the one place that turns an exception into an
error response, authentication, body limits, and JSON replies."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from common import codec
from common.errors import (
    BerthError,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
)
from scheduler.sessions import COOKIE, CSRF_HEADER, SessionBackend
from scheduler.tokens import TokenRow

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: what needs a token: the API and metrics (the dashboard's static files do not)
PROTECTED_PREFIXES = ("/api/", "/metrics")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TokenLookup = Callable[[str], TokenRow | None]
PRINCIPAL: web.AppKey[TokenLookup] = web.AppKey("principal_lookup")
PRINCIPAL_BY_DIGEST: web.AppKey[TokenLookup] = web.AppKey("principal_by_digest")
SESSIONS = web.AppKey("sessions", SessionBackend)
#: paths anyone may call, from the route table (:attr:`scheduler.routes.table.Route.public`)
PUBLIC_PATHS: web.AppKey[frozenset[str]] = web.AppKey("public_paths")


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON reply; ``obj`` may be already-encoded bytes (a snapshot taken before an await)."""
    body = obj if isinstance(obj, bytes) else codec.encode(obj)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def error_response(err: BerthError) -> web.Response:
    headers = {}
    if isinstance(err, TooManyRequests):
        headers["Retry-After"] = str(err.retry_after_s)
    return web.Response(
        body=codec.dumps(err.to_body()),
        status=err.status,
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BerthError as e:
        return error_response(e)
    except web.HTTPRequestEntityTooLarge:
        max_bytes = request.app[MAX_BODY]
        return error_response(
            PayloadTooLarge("request body too large", {"field": "$", "max_bytes": max_bytes})
        )
    except web.HTTPException as e:
        if e.status >= 400:
            code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
            body = {"error": {"code": code, "message": e.reason, "details": {}}}
            return web.Response(
                body=codec.dumps(body), status=e.status, content_type="application/json"
            )
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(BerthError("internal error"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A Bearer token, or a dashboard session cookie (with its CSRF header on mutations)."""
    if request.path in request.app[PUBLIC_PATHS] or not request.path.startswith(PROTECTED_PREFIXES):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        # Tokens are ASCII; other bytes in the header (decoded with surrogates) could
        # not even be hashed.
        row = request.app[PRINCIPAL](token.strip()) if token.isascii() else None
    elif COOKIE in request.cookies:
        row = await _session_principal(request)
    else:
        raise Unauthorized("a Bearer token is required")
    if row is None:
        raise Unauthorized("invalid token")
    request["principal"] = row
    return await handler(request)


async def _session_principal(request: web.Request) -> TokenRow | None:
    session = await request.app[SESSIONS].get(request.cookies[COOKIE])
    if session is None:
        raise Unauthorized("the session has ended; log in again")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        # compare_digest refuses str with non-ASCII characters instead of answering False
        if not sent.isascii() or not hmac.compare_digest(sent, session.csrf):
            raise Forbidden(f"a {CSRF_HEADER} header is required with a session cookie")
    request["session"] = session
    return request.app[PRINCIPAL_BY_DIGEST](session.token_digest)


#: the one answer to a token that may not do what it asked: it says nothing more
NOT_ALLOWED = "this token may not do that"


def principal(request: web.Request) -> TokenRow:
    row: TokenRow = request["principal"]
    return row


def require_role(request: web.Request, *roles: str) -> TokenRow:
    """The caller's token, if its role is one of ``roles`` (admin may do anything)."""
    row = principal(request)
    if row.role != "admin" and row.role not in roles:
        raise Forbidden(NOT_ALLOWED)
    return row


def require_node(request: web.Request, node_id: str) -> TokenRow:
    """A node token acts only for its own node."""
    row = principal(request)
    if row.role == "admin":
        return row
    if row.role != "node" or row.node_id != node_id:
        raise Forbidden(NOT_ALLOWED)
    return row


async def read_body(request: web.Request, type_: type[T], *, empty_ok: bool = False) -> T:
    """Read and validate a JSON body; errors name the field."""
    if request.content_length is not None and request.content_length > request.app[MAX_BODY]:
        raise PayloadTooLarge(
            "request body too large", {"field": "$", "max_bytes": request.app[MAX_BODY]}
        )
    data = await request.read()
    if not data.strip():
        if empty_ok:
            return codec.decode(b"{}", type_)
        raise InvalidRequest("a JSON body is required", {"field": "$"})
    return codec.decode(data, type_)


MAX_BODY = web.AppKey("max_body", int)
#: the largest integer a query parameter may hold (SQLite's largest)
MAX_QUERY_INT = 2**63 - 1


def query_int(
    request: web.Request, name: str, default: int | None, *, lo: int = 0, hi: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", {"field": name}) from None
    # Without a bound of its own a value still has SQLite's: past it a store read fails.
    top = MAX_QUERY_INT if hi is None else hi
    if value < lo or value > top:
        if hi is not None:
            bounds = f"between {lo} and {hi}"
        else:
            bounds = f"at least {lo}" if value < lo else f"at most {MAX_QUERY_INT}"
        raise InvalidRequest(f"{name} must be {bounds}", {"field": name})
    return value


def query_float(request: web.Request, name: str, default: float, *, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number", {"field": name}) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo:g} and {hi:g}", {"field": name})
    return value
