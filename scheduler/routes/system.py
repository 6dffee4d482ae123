"""Probes and cluster-wide statistics."""

from __future__ import annotations

from aiohttp import web

from common.models import Stats
from scheduler.http import json_response, require_role
from scheduler.metrics import CONTENT_TYPE
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()
#: the OpenAPI document, encoded
OPENAPI = web.AppKey("openapi", bytes)


@routes.get("/healthz", summary="Liveness probe", public=True)
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz", summary="Readiness probe", public=True, query=(("leader", "string"),))
async def readyz(request: web.Request) -> web.Response:
    svc = service(request)
    if not svc.ready:
        return json_response({"status": "starting"}, status=503)
    if not svc.leading():
        # A standby serves reads while it keeps up; load balancers that send writes
        # ask with ?leader=1.
        status = {"status": "standby", "leader_url": svc.leader_url}
        ok = svc.roles is not None and svc.roles.following()
        if request.query.get("leader") in ("1", "true") or not ok:
            return json_response(status if ok else {**status, "status": "behind"}, status=503)
        return json_response(status)
    refused = svc.guard.status()
    if refused is not None:
        # Writes are refused (the disk is full): send clients elsewhere.
        return json_response(refused, status=503)
    return json_response({"status": "ready"})


@routes.get("/api/v1/openapi.json", public=True)
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document, built from the route table as the app is built."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


@routes.get("/metrics", summary="Prometheus metrics", reply="text")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (any token that may read; Prometheus sends it as a bearer token)."""
    require_role(request, "read", "submit")
    body = service(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/api/v1/stats", summary="Jobs and nodes by state, capacity", reply=Stats)
async def stats(request: web.Request) -> web.Response:
    require_role(request, "read", "submit")
    s = service(request).stats()
    return json_response(Stats(**s))


@routes.get("/api/v1/schedulers", summary="The schedulers sharing the store", name="listSchedulers")
async def schedulers(request: web.Request) -> web.Response:
    """Every scheduler seen lately: id, advertised URL, role, epoch, applied index and
    when it last noted itself; a scheduler alone on its store lists itself."""
    require_role(request, "read", "submit")
    return json_response({"schedulers": await service(request).schedulers()})
