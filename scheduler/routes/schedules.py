"""Periodic jobs: create, list, show, replace, delete a schedule, and run one now.

Changes and runs are the leader's; a standby answers reads from what the store holds.
"""

from __future__ import annotations

from aiohttp import web

from common.schedule_models import Schedule, ScheduleFired, ScheduleList, ScheduleSpec
from scheduler.http import json_response, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()


@routes.post(
    "/api/v1/schedules",
    summary="Create a schedule (a periodic job)",
    body=ScheduleSpec,
    reply=Schedule,
    created=True,
)
async def create_schedule(request: web.Request) -> web.Response:
    who = require_role(request, "submit")
    spec = await read_body(request, ScheduleSpec)
    schedule = await service(request).create_schedule(spec, who)
    headers = {"Location": f"/api/v1/schedules/{schedule.name}"}
    return json_response(schedule, status=201, headers=headers)


@routes.get("/api/v1/schedules", summary="List schedules", reply=ScheduleList)
async def list_schedules(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    return json_response(await service(request).list_schedules(who))


@routes.get("/api/v1/schedules/{name}", summary="One schedule", reply=Schedule)
async def get_schedule(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    return json_response(await service(request).get_schedule(request.match_info["name"], who))


@routes.put(
    "/api/v1/schedules/{name}", summary="Replace a schedule", body=ScheduleSpec, reply=Schedule
)
async def replace_schedule(request: web.Request) -> web.Response:
    who = require_role(request, "submit")
    spec = await read_body(request, ScheduleSpec)
    name = request.match_info["name"]
    return json_response(await service(request).replace_schedule(name, spec, who))


@routes.delete("/api/v1/schedules/{name}", summary="Delete a schedule", reply=Schedule)
async def delete_schedule(request: web.Request) -> web.Response:
    who = require_role(request, "submit")
    return json_response(await service(request).delete_schedule(request.match_info["name"], who))


@routes.post(
    "/api/v1/schedules/{name}/run",
    summary="Run a schedule's job now",
    reply=ScheduleFired,
    created=True,
)
async def run_schedule(request: web.Request) -> web.Response:
    who = require_role(request, "submit")
    fired = await service(request).run_schedule(request.match_info["name"], who)
    headers = {"Location": f"/api/v1/jobs/{fired.job.id}"}
    return json_response(fired, status=201, headers=headers)
