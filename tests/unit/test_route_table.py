"""The route table: one record per route, from which the router, the OpenAPI document
and the middlewares' path sets are read."""

from __future__ import annotations

import pytest
from aiohttp import web

from scheduler.routes.registry import ROUTES
from scheduler.routes.table import (
    Route,
    RouteTable,
    add_routes,
    bookkeeping_paths,
    canonical,
    public_paths,
    stateless_paths,
)


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


def test_a_choice_segment_is_documented_once_per_word() -> None:
    route = Route("POST", "/jobs/{id}/{action:cancel|retry}", _handler, summary="{action} it")
    assert list(route.documented()) == [
        ("/jobs/{id}/cancel", "Cancel it", None),
        ("/jobs/{id}/retry", "Retry it", None),
    ]


def test_a_route_s_own_operation_name_takes_the_word_of_its_choice_segment() -> None:
    route = Route(
        "POST", "/jobs/{action:cancel|retry}", _handler, summary="{action} many", name="{action}All"
    )
    assert [d.name for d in route.documented()] == ["cancelAll", "retryAll"]


def test_a_route_without_a_summary_is_not_documented() -> None:
    assert list(Route("GET", "/api/v1/ws", _handler).documented()) == []


def test_canonical_drops_patterns_as_the_router_does() -> None:
    app = web.Application()
    add_routes(app.router, [Route("GET", "/ui/{path:.+}", _handler)])
    (resource,) = app.router.resources()
    assert canonical("/ui/{path:.+}") == resource.canonical == "/ui/{path}"


def test_a_get_also_answers_head() -> None:
    app = web.Application()
    add_routes(app.router, [Route("GET", "/healthz", _handler)])
    assert sorted(r.method for r in app.router.routes()) == ["GET", "HEAD"]


def test_a_flag_set_on_some_methods_of_a_path_only_is_refused() -> None:
    table = RouteTable()
    table.get("/api/v1/session", public=True)(_handler)
    table.delete("/api/v1/session")(_handler)
    with pytest.raises(ValueError, match="/api/v1/session"):
        public_paths(table)


def test_an_unknown_detail_fails_at_declaration() -> None:
    with pytest.raises(TypeError):
        RouteTable().get("/x", sumary="typo")(_handler)


def test_every_method_and_path_is_declared_once() -> None:
    keys = [(r.method, canonical(r.path)) for r in ROUTES]
    assert len(keys) == len(set(keys))


def test_the_scheduler_s_public_bookkeeping_and_stateless_paths() -> None:
    assert public_paths(ROUTES) == {
        "/healthz",
        "/readyz",
        "/api/v1/openapi.json",
        "/api/v1/session",
    }
    assert bookkeeping_paths(ROUTES) == {
        "/api/v1/nodes/register",
        "/api/v1/nodes/{id}/heartbeat",
        "/api/v1/nodes/{id}/jobs/{job}/report",
        "/api/v1/nodes/{id}/reports",
    }
    assert stateless_paths(ROUTES) == {"/api/v1/session"}
