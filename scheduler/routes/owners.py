"""Owners of jobs (token names): their quotas, what their jobs take, and their
fair-share usage."""

from __future__ import annotations

from aiohttp import web

from common.models import OwnerList, OwnerStatus, Quota
from scheduler.http import json_response, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()


@routes.get(
    "/api/v1/owners",
    summary="Owners with their quotas, running totals and fair-share usage",
    reply=OwnerList,
)
async def list_owners(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    return json_response(service(request).owners(who))


@routes.put(
    "/api/v1/owners/{name}/quota",
    summary="Set or lift (all fields unset) a token name's quota (admin)",
    body=Quota,
    reply=OwnerStatus,
)
async def set_quota(request: web.Request) -> web.Response:
    who = require_role(request)
    quota = await read_body(request, Quota)
    return json_response(await service(request).set_quota(request.match_info["name"], quota, who))
