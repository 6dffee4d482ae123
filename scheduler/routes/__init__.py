"""HTTP routes of API v1, one module per resource."""

from __future__ import annotations

from aiohttp import web

from scheduler.service import Service

SERVICE = web.AppKey("service", Service)


def service(request: web.Request) -> Service:
    return request.app[SERVICE]
