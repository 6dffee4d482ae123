"""Stored secrets: set, list, show (never a value) and delete.

Changes are the leader's; a standby answers reads from what the store holds.
"""

from __future__ import annotations

from aiohttp import web

from common.secret_models import SecretDeleted, SecretInfo, SecretList, SecretSet
from scheduler.http import json_response, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()


@routes.post(
    "/api/v1/secrets",
    summary="Create a secret, or set a new value of one's own (201 when created)",
    name="setSecret",
    body=SecretSet,
    reply=SecretInfo,
    created=True,
)
async def set_secret(request: web.Request) -> web.Response:
    who = require_role(request, "submit")
    req = await read_body(request, SecretSet)
    info, created = await service(request).set_secret(req, who)
    headers = {"Location": f"/api/v1/secrets/{info.name}"}
    return json_response(info, status=201 if created else 200, headers=headers)


@routes.get("/api/v1/secrets", summary="List secrets (names, owners, times)", reply=SecretList)
async def list_secrets(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    return json_response(await service(request).list_secrets(who))


@routes.get("/api/v1/secrets/{name}", summary="One secret (never its value)", reply=SecretInfo)
async def get_secret(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    return json_response(await service(request).get_secret(request.match_info["name"], who))


@routes.delete(
    "/api/v1/secrets/{name}",
    summary="Delete a secret; queued jobs that need it fail",
    reply=SecretDeleted,
)
async def delete_secret(request: web.Request) -> web.Response:
    who = require_role(request, "submit")
    return json_response(await service(request).delete_secret(request.match_info["name"], who))
