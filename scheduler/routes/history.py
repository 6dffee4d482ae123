"""The cluster's history and a job's usage over time (scheduler.sampler)."""

from __future__ import annotations

from aiohttp import web

from common.errors import InvalidRequest
from common.history_models import History, JobUsage
from scheduler import history
from scheduler.http import json_response, principal, query_int, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()


@routes.get(
    "/api/v1/stats/history",
    summary="The cluster's history: queue, jobs and resources over time, per node too",
    reply=History,
    query=(("since", "string"), ("step", "integer")),
)
async def stats_history(request: web.Request) -> web.Response:
    """``since``: a duration back from now (``15m``, ``1h``, ``7d``) or a Unix time,
    default 1h; ``step``: seconds per point, default the stored resolution coarsened to
    at most 720 points."""
    require_role(request, "read", "submit")
    svc = service(request)
    until = svc.sampler.now()
    try:
        since = history.parse_since(request.query.get("since"), until)
    except ValueError as e:
        raise InvalidRequest(str(e), {"field": "since"}) from None
    try:
        step = history.parse_step(request.query.get("step"))
        reply = await svc.sampler.history(since, until, step)
    except ValueError as e:
        raise InvalidRequest(str(e), {"field": "step"}) from None
    return json_response(reply)


@routes.get(
    "/api/v1/jobs/{id}/usage",
    summary="An attempt's CPU and memory samples",
    reply=JobUsage,
    query=(("attempt", "integer"),),
)
async def job_usage(request: web.Request) -> web.Response:
    require_role(request, "read", "submit")
    job_id = request.match_info["id"]
    svc = service(request)
    await svc.visible_job(principal(request), job_id)
    attempt = query_int(request, "attempt", None, lo=1, hi=1_000_000)
    return json_response(await svc.sampler.usage(job_id, attempt))
