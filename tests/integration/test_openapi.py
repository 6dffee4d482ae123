"""The OpenAPI document is valid, served without a token, and names every route; each
operation has a unique operationId and a tag, and every error answer one schema."""

from __future__ import annotations

import re

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from scheduler.app import build_app
from scheduler.config import SchedulerConfig
from scheduler.openapi import TAGS, document, operation_id
from scheduler.routes.table import Route
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


def test_every_operation_has_a_unique_camel_case_operation_id_and_a_tag() -> None:
    doc = document()
    ops = [(p, m, op) for p, by in doc["paths"].items() for m, op in by.items()]
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z0-9]*)+", i) for i in ids), ids
    declared = {t["name"] for t in doc["tags"]}
    assert {t for _, _, op in ops for t in op["tags"]} == declared
    assert declared <= set(TAGS)
    by_id = {op["operationId"]: (m.upper(), p) for p, m, op in ops}
    assert by_id["submitJob"] == ("POST", "/api/v1/jobs")
    assert by_id["listJobs"] == ("GET", "/api/v1/jobs")
    assert by_id["getJob"] == ("GET", "/api/v1/jobs/{id}")
    assert by_id["cancelJob"] == ("POST", "/api/v1/jobs/{id}/cancel")
    assert by_id["cancelJobs"] == ("POST", "/api/v1/jobs/cancel")
    assert by_id["drainNode"] == ("POST", "/api/v1/nodes/{id}/drain")
    assert doc["paths"]["/api/v1/nodes/{id}/heartbeat"]["post"]["tags"] == ["agents"]


def test_operation_ids_follow_from_the_method_and_path() -> None:
    jobs = frozenset({"/api/v1/jobs", "/api/v1/schedules"})
    assert operation_id("GET", "/api/v1/stats/history") == "getStatsHistory"
    assert operation_id("GET", "/api/v1/jobs/{id}/usage", jobs) == "getJobUsage"
    assert operation_id("GET", "/api/v1/jobs", jobs) == "listJobs"
    assert operation_id("POST", "/api/v1/schedules", jobs) == "createSchedule"
    assert operation_id("POST", "/api/v1/schedules/{name}/run", jobs) == "runSchedule"
    assert operation_id("PUT", "/api/v1/owners/{name}/quota") == "setOwnerQuota"
    assert operation_id("DELETE", "/api/v1/secrets/{name}") == "deleteSecret"


def test_two_operations_of_one_name_are_refused() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    twins = [
        Route("GET", "/api/v1/things", handler, summary="Things", name="things"),
        Route("GET", "/api/v1/others", handler, summary="Others", name="things"),
    ]
    with pytest.raises(ValueError, match="things"):
        document(twins)


def test_every_error_answer_is_the_one_error_schema() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    assert schemas["Error"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorInfo"}
    assert schemas["ErrorInfo"]["required"] == ["code", "message", "details"]
    for by in doc["paths"].values():
        for op in by.values():
            errors = {k: v for k, v in op["responses"].items() if k[0] in "45"}
            assert set(errors) == {"4XX", "5XX"}
            for answer in errors.values():
                assert answer["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                }
