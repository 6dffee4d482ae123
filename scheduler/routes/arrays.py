"""Client routes for job arrays: an array's summary, and actions on all its tasks.

An array is submitted as a job whose spec carries ``array`` (POST /api/v1/jobs); its
tasks are listed with ``GET /api/v1/jobs?array=ID``.
"""

from __future__ import annotations

from aiohttp import web

from common.arrays import ArrayRetry, ArraySummary
from common.models import ActionResults
from scheduler.commands import ACTIONS
from scheduler.http import json_response, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()

_ACTION_PATTERN = "|".join(ACTIONS)


@routes.get(
    "/api/v1/arrays/{id}",
    summary="A job array: its tasks counted by state, spec, owner, created_at",
    reply=ArraySummary,
)
async def get_array(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    summary = await service(request).get_array(who, request.match_info["id"])
    return json_response(summary, headers={"X-Berth-Index": str(summary.index)})


@routes.post(
    f"/api/v1/arrays/{{id}}/{{action:{_ACTION_PATTERN}}}",
    summary="{action} an array's tasks",
    body=ArrayRetry,
    reply=ActionResults,
)
async def act_array(request: web.Request) -> web.Response:
    """The action on every task of the array it applies to, in one commit; each task is
    changed or refused on its own."""
    who = require_role(request, "submit")
    action, array_id = request.match_info["action"], request.match_info["id"]
    body = await read_body(request, ArrayRetry, empty_ok=True)
    results = await service(request).act_array(action, array_id, who, failed_only=body.failed_only)
    return json_response(ActionResults(results))
