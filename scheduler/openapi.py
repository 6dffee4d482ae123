"""The OpenAPI 3.1 document of API v1, built from the route table
(:mod:`scheduler.routes.registry`) and the same msgspec models that validate requests
and encode replies, so the schema cannot drift from the code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from common import __version__
from scheduler.routes.registry import ROUTES
from scheduler.routes.table import Route

JSON = "application/json"

#: bounds of query parameters, the same wherever they appear
_QUERY_BOUNDS: dict[str, dict[str, int]] = {
    "attempt": {"minimum": 1},
    "offset": {"minimum": 0},
    "limit": {"minimum": 1},
    "after": {"minimum": 0},
    "since": {"minimum": 0},
    "index": {"minimum": 0},
    "wait": {"minimum": 0},
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def _content(kind: Any, refs: dict[type, dict[str, str]]) -> dict[str, Any]:
    if kind == "binary":
        return {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    if kind == "text":
        return {"text/plain": {"schema": {"type": "string"}}}
    if kind == "events":
        return {JSON: {"schema": {"type": "object"}}, "text/event-stream": {"schema": {}}}
    if kind == "object":
        return {JSON: {"schema": {"type": "object"}}}
    return {JSON: {"schema": refs[kind]}}


def document(routes: Sequence[Route] = ROUTES) -> dict[str, Any]:
    """The document of those of ``routes`` that have a summary."""
    models = sorted(
        {k for r in routes if r.summary for k in (r.body, r.reply) if isinstance(k, type)},
        key=lambda t: t.__name__,
    )
    schemas, components = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(models, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        for path, summary in route.documented():
            paths.setdefault(path, {})[route.method.lower()] = _operation(
                route, path, summary, refs
            )
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Berth API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    # Through JSON and back: defaults such as () become plain JSON values.
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(doc))
    return out


def _operation(
    route: Route, path: str, summary: str, refs: dict[type, dict[str, str]]
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": p.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
        for p in path.split("/")
        if p.startswith("{")
    ]
    params += [
        {
            "name": name,
            "in": "query",
            "required": name in route.required,
            "schema": {"type": kind, **_QUERY_BOUNDS.get(name, {})},
        }
        for name, kind in route.query
    ]
    params += [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
        for name in route.headers
    ]
    ok = {"description": "OK", "content": _content(route.reply, refs)}
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params,
        "responses": {
            "201" if route.created else "200": ok,
            "4XX": {"description": "Refused", "content": {JSON: {"schema": _ERROR}}},
        },
    }
    if route.public:
        op["security"] = []
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": _content(route.body, refs)}
    return op
