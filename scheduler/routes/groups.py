"""Concurrency groups: their limits, and how many of their jobs run and wait."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from msgspec import Meta, Struct

from scheduler import access
from scheduler.http import json_response, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()


class GroupLimit(Struct, forbid_unknown_fields=True):
    max_concurrent: Annotated[int, Meta(ge=1, le=100_000)]


@routes.get("/api/v1/groups", summary="Concurrency groups")
async def list_groups(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    # A submit token sees its own jobs only, in groups as anywhere else.
    groups = service(request).cluster.groups(access.owner_filter(who))
    return json_response({"groups": groups})


@routes.put("/api/v1/groups/{name}", summary="Set a group's limit", body=GroupLimit)
async def set_group(request: web.Request) -> web.Response:
    who = require_role(request)
    name = request.match_info["name"]
    req = await read_body(request, GroupLimit)
    svc = service(request)
    svc.cluster.set_group_limit(name, req.max_concurrent)
    svc.cluster.audit(who, "group.limit", name, {"max_concurrent": req.max_concurrent})
    body = {"name": name, **svc.cluster.groups()[name]}
    await svc.commit()
    return json_response(body)
