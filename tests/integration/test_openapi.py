"""The OpenAPI document is valid, served without a token, and names every route."""

from __future__ import annotations

import aiohttp
from openapi_spec_validator import validate

from scheduler.app import build_app
from scheduler.config import SchedulerConfig
from scheduler.openapi import document
from tests.support import SchedulerProcess


async def test_the_served_document_is_valid_openapi(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sched.url}/api/v1/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    validate(doc)
    spec = doc["components"]["schemas"]["JobSpec"]
    assert spec["required"] == ["image"]
    assert spec["properties"]["priority"]["maximum"] == 100


def test_every_route_of_the_app_is_in_the_document() -> None:
    app = build_app(SchedulerConfig())
    served = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*"):
            continue
        served.add((route.method.lower(), info))
    documented = {(m, p) for p, ops in document()["paths"].items() for m in ops}
    # The action routes are declared with a pattern; the document lists each action.
    actions = {"cancel", "retry", "pause", "resume"}
    expanded = set()
    for method, path in served:
        if "{action" in path:
            expanded |= {(method, path.split("{action")[0] + a) for a in actions}
        else:
            expanded.add((method, path))
    api = {(m, p) for m, p in expanded if p.startswith("/api/") or p in ("/healthz", "/metrics")}
    # The dashboard's pages and files are not part of the API.
    missing = api - documented - {("get", "/api/v1/ws"), ("get", "/api/v1/openapi.json")}
    assert not missing
