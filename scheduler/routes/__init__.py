"""HTTP routes of API v1, one module per resource."""

from __future__ import annotations

from aiohttp import web

from common.models import Job
from scheduler import access
from scheduler.http import principal
from scheduler.service import Service

SERVICE = web.AppKey("service", Service)


def service(request: web.Request) -> Service:
    return request.app[SERVICE]


def visible_job(request: web.Request, job_id: str) -> Job:
    """The job, if the caller may see it: 404 for a job that does not exist (to those
    who see every job), 403 for one that is not the caller's."""
    who = principal(request)
    cluster = service(request).cluster
    if access.sees_all_jobs(who):
        return cluster.job(job_id)
    return access.check_job(who, cluster.find(job_id))
