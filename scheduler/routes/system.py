"""Probes and cluster-wide statistics."""

from __future__ import annotations

from aiohttp import web

from common import codec
from common.models import Stats
from scheduler.http import json_response, require_role
from scheduler.metrics import CONTENT_TYPE
from scheduler.openapi import document
from scheduler.routes import service

routes = web.RouteTableDef()
OPENAPI = web.AppKey("openapi", bytes)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    svc = service(request)
    if not svc.ready:
        return json_response({"status": "starting"}, status=503)
    refused = svc.guard.status()
    if refused is not None:
        # Writes are refused (the disk is full): send clients elsewhere.
        return json_response(refused, status=503)
    return json_response({"status": "ready"})


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document, built once from the models."""
    app = request.app
    if OPENAPI not in app:
        app[OPENAPI] = codec.dumps(document())
    return web.Response(body=app[OPENAPI], content_type="application/json")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (any token that may read; Prometheus sends it as a bearer token)."""
    require_role(request, "read", "submit")
    body = service(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    require_role(request, "read", "submit")
    s = service(request).cluster.stats()
    return json_response(Stats(**s))
