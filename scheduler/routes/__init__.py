"""HTTP routes of API v1, one module per resource. A route parses and authorises, then
calls one command of the scheduler (scheduler.commands); it never touches the state."""

from __future__ import annotations

from aiohttp import web

from scheduler.commands import Scheduler

SERVICE = web.AppKey("service", Scheduler)


def service(request: web.Request) -> Scheduler:
    return request.app[SERVICE]
