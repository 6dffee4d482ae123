"""Concurrency groups: their limits, and how many of their jobs run and wait."""

from __future__ import annotations

from aiohttp import web

from common.errors import InvalidRequest
from common.models import GroupLimit
from scheduler.http import json_response, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()


@routes.get("/api/v1/groups", summary="Concurrency groups")
async def list_groups(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    return json_response({"groups": service(request).groups(who)})


@routes.put("/api/v1/groups/{name}", summary="Set a group's limit", body=GroupLimit)
async def set_group(request: web.Request) -> web.Response:
    who = require_role(request)
    name = request.match_info["name"]
    if "\x00" in name or len(name) > 128:
        # As a job's group is checked: stored as text, which holds no NUL.
        raise InvalidRequest(
            "a group name has at most 128 characters and no NUL", {"field": "name"}
        )
    req = await read_body(request, GroupLimit)
    return json_response(await service(request).set_group_limit(name, req.max_concurrent, who))
