"""Admin routes for tokens (create, list, revoke, rotate the join token) and the audit
log."""

from __future__ import annotations

import msgspec
from aiohttp import web

from common.errors import InvalidRequest
from common.models import (
    AuditEntry,
    AuditPage,
    JoinToken,
    Quota,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    TokenList,
)
from scheduler.http import json_response, query_int, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable
from scheduler.tokens import TokenRow

routes = RouteTable()

AUDIT_PAGE = 500
MAX_AUDIT_PAGE = 5000


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=row.role,
        all_jobs=row.all_jobs,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
    )


@routes.post(
    "/api/v1/tokens",
    summary="Create a token (admin)",
    body=TokenCreate,
    reply=TokenCreated,
    created=True,
)
async def create_token(request: web.Request) -> web.Response:
    who = require_role(request)
    req = await read_body(request, TokenCreate)
    svc = service(request)
    quota = Quota(req.max_running_cpu, req.max_running_memory_mb, req.max_running_jobs)
    row, secret = await svc.create_token(
        req.role, req.name, all_jobs=req.all_jobs, who=who, quota=quota
    )
    body = TokenCreated(**msgspec.structs.asdict(_info(row)), token=secret)
    return json_response(body, status=201, headers={"Cache-Control": "no-store"})


@routes.get(
    "/api/v1/tokens",
    summary="List tokens, never their secrets (admin)",
    reply=TokenList,
    query=(("revoked", "string"),),
)
async def list_tokens(request: web.Request) -> web.Response:
    require_role(request)
    revoked = request.query.get("revoked") in ("1", "true", "yes")
    rows = service(request).tokens(revoked=revoked)
    return json_response(TokenList(tokens=[_info(r) for r in rows]))


@routes.delete(
    "/api/v1/tokens/{id}",
    summary="Revoke a token by id or name (admin)",
    name="revokeToken",
    reply=TokenInfo,
)
async def revoke_token(request: web.Request) -> web.Response:
    who = require_role(request)
    svc = service(request)
    row = await svc.revoke_token(request.match_info["id"], who)
    return json_response(_info(row))


@routes.post(
    "/api/v1/tokens/join/rotate",
    summary="Replace the join token (admin)",
    name="rotateJoinToken",
    reply=JoinToken,
)
async def rotate_join(request: web.Request) -> web.Response:
    who = require_role(request)
    svc = service(request)
    row, secret = await svc.rotate_join_token(who)
    return json_response(JoinToken(id=row.id, token=secret), headers={"Cache-Control": "no-store"})


@routes.get(
    "/api/v1/audit",
    summary="The audit log: who did what, oldest first (admin)",
    reply=AuditPage,
    query=(
        ("after", "integer"),
        ("limit", "integer"),
        ("actor", "string"),
        ("action", "string"),
        ("target", "string"),
    ),
)
async def audit(request: web.Request) -> web.Response:
    require_role(request)
    after = query_int(request, "after", 0) or 0
    limit = query_int(request, "limit", AUDIT_PAGE, lo=1, hi=MAX_AUDIT_PAGE) or AUDIT_PAGE
    filters: dict[str, str | None] = {}
    for name in ("actor", "action", "target"):
        value = request.query.get(name) or None
        if value is not None and len(value) > 200:
            raise InvalidRequest(f"{name} is too long", {"field": name})
        filters[name] = value
    rows = await service(request).audit_log(
        after, limit, actor=filters["actor"], action=filters["action"], target=filters["target"]
    )
    entries = [
        AuditEntry(
            id=i,
            at=r.at,
            actor=r.actor,
            role=r.role,
            action=r.action,
            target=r.target,
            details=r.details,
        )
        for i, r in rows
    ]
    return json_response(AuditPage(entries=entries, next=entries[-1].id if entries else after))
