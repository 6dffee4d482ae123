"""The OpenAPI 3.1 document of API v1, built from the route table
(:mod:`scheduler.routes.registry`) and the same msgspec models that validate requests
and encode replies, so the schema cannot drift from the code.

Every operation has an ``operationId``, the name generated clients give its function:
the route's own ``name`` where it has one, else one made from the method and the path
(:func:`operation_id`), so that a new route is named without anyone thinking of it. Its
tag is the area of the API, the route module that declares it. Every refusal (4xx) and
server-side failure (5xx) has the one body Berth's errors have, the ``Error`` schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from common import __version__
from scheduler.fielddocs import describe_fields
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
#: the areas of the API: the route modules, in the order a reader meets them
TAGS: dict[str, str] = {
    "jobs": "Submit, list, follow and act on jobs",
    "arrays": "Job arrays: their tasks counted by state, acting on all of them",
    "nodes": "Node status, draining, forgetting a node",
    "agents": "What agents call: registration, heartbeats, assignments, reports, logs",
    "events": "The event stream (SSE) and its replay",
    "logs": "Jobs' logs",
    "blobs": "Input archives, outputs and checkpoints",
    "groups": "Concurrency groups",
    "session": "The dashboard's login session",
    "tokens": "API tokens, the join token and the audit log",
    "owners": "Owners' quotas and fair-share usage",
    "schedules": "Periodic jobs",
    "secrets": "Secrets jobs read in their environment",
    "system": "Probes, metrics, statistics, the schedulers sharing a store",
    "history": "The cluster's history and jobs' usage samples over time",
}
ERROR_REF = "#/components/schemas/Error"
#: Berth's one error body (common.errors.BerthError.to_body)
_ERROR_SCHEMAS: dict[str, Any] = {
    "Error": {
        "title": "Error",
        "description": "What every refused or failed request answers.",
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"$ref": "#/components/schemas/ErrorInfo"}},
    },
    "ErrorInfo": {
        "title": "ErrorInfo",
        "type": "object",
        "required": ["code", "message", "details"],
        "properties": {
            "code": {
                "type": "string",
                "description": "Stable, for programs: invalid, not_found, conflict, ...",
            },
            "message": {"type": "string", "description": "For people."},
            "details": {
                "type": "object",
                "additionalProperties": True,
                "description": "For a bad request, ``field``: the path of the field at fault.",
            },
        },
    },
}
_ERROR_CONTENT = {JSON: {"schema": {"$ref": ERROR_REF}}}
_ERROR_RESPONSES = {
    "4XX": {"description": "Refused: the error says why", "content": _ERROR_CONTENT},
    "5XX": {
        "description": "Not served now (a standby, the store unavailable)",
        "content": _ERROR_CONTENT,
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
    describe_fields(models, components)
    clash = _ERROR_SCHEMAS.keys() & components.keys()
    if clash:
        raise ValueError(f"a model is named as the error schema: {', '.join(sorted(clash))}")
    collections = _collections(routes)
    paths: dict[str, dict[str, Any]] = {}
    named: dict[str, str] = {}
    tags: set[str] = set()
    for route in routes:
        for op in route.documented():
            name = op.name or operation_id(route.method, op.path, collections)
            where = f"{route.method} {op.path}"
            if named.setdefault(name, where) != where:
                # Generated clients name a function per operationId: one would be lost.
                raise ValueError(f"operationId {name} of {where} is {named[name]}'s already")
            tags.add(area(route))
            paths.setdefault(op.path, {})[route.method.lower()] = _operation(
                route, op.path, op.summary, name, refs
            )
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Berth API", "version": __version__},
        "tags": [
            {"name": t, "description": TAGS[t]} if t in TAGS else {"name": t}
            for t in sorted(
                tags, key=lambda t: (list(TAGS).index(t) if t in TAGS else len(TAGS), t)
            )
        ],
        "paths": paths,
        "components": {
            "schemas": {**components, **_ERROR_SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    # Through JSON and back: defaults such as () become plain JSON values.
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(doc))
    return out


def _operation(
    route: Route, path: str, summary: str, name: str, refs: dict[type, dict[str, str]]
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
        "operationId": name,
        "tags": [area(route)],
        "summary": summary,
        "parameters": params,
        "responses": {
            "201" if route.created else "200": ok,
            **_ERROR_RESPONSES,
        },
    }
    if route.public:
        op["security"] = []
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": _content(route.body, refs)}
    return op


def area(route: Route) -> str:
    """The tag of a route: the module that declares it (``scheduler.routes.jobs``: jobs)."""
    return route.handler.__module__.rpartition(".")[2]


#: where API paths start: what the names are made of is below it
_PREFIX = "/api/v1/"
_PARAM = re.compile(r"^\{.*\}$")
#: what a method does to the thing a path names
_VERBS = {"GET": "get", "PUT": "set", "DELETE": "delete", "POST": "update", "PATCH": "update"}


def operation_id(method: str, path: str, collections: frozenset[str] = frozenset()) -> str:
    """A camelCase name for an operation from its method and path, such as
    ``getJob``, ``listJobs``, ``cancelJob``, ``getJobUsage`` or ``getStatsHistory``.

    ``collections`` are the paths that have items (``/api/v1/jobs``, for there is a
    ``/api/v1/jobs/{id}``): a GET of one lists them, a POST to one creates an item.
    Otherwise a GET gets what the path names, and the last segment of a POST to a path
    that names no item is what it does::

        GET  /jobs                  listJobs         (a collection)
        GET  /jobs/{id}             getJob           (an item)
        GET  /jobs/{id}/usage       getJobUsage      (an item's part)
        GET  /stats/history         getStatsHistory
        POST /schedules             createSchedule   (to a collection)
        POST /jobs/{id}/cancel      cancelJob        (a verb on an item)
        POST /jobs/cancel           cancelJobs       (a verb on a collection)
        PUT  /owners/{name}/quota   setOwnerQuota
        DELETE /tokens/{id}         deleteToken
    """
    segments = path.removeprefix(_PREFIX).strip("/").split("/")
    on_item = bool(_PARAM.match(segments[-1]))
    # A noun in the singular where one item of it is named next.
    nouns = [
        _singular(seg) if i + 1 < len(segments) and _PARAM.match(segments[i + 1]) else seg
        for i, seg in enumerate(segments)
        if not _PARAM.match(seg)
    ]
    collection = path in collections
    if method == "GET":
        verb = "list" if collection else "get"
    elif method == "POST" and collection:
        verb, nouns[-1] = "create", _singular(nouns[-1])
    elif method == "POST" and not on_item and len(nouns) > 1:
        verb = nouns.pop()
    elif method == "POST" and not on_item:
        verb = "create"
    else:
        verb = _VERBS.get(method, method.lower())
    return verb + "".join(_camel(n) for n in nouns)


def _collections(routes: Iterable[Route]) -> frozenset[str]:
    """Paths with items: some route's path is one of them followed by a parameter."""
    out = set()
    for route in routes:
        for op in route.documented():
            segments = op.path.split("/")
            for i in range(1, len(segments)):
                if _PARAM.match(segments[i]):
                    out.add("/".join(segments[:i]))
    return frozenset(out)


def _singular(noun: str) -> str:
    return noun[:-1] if noun.endswith("s") and not noun.endswith("ss") else noun


def _camel(segment: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", segment) if w)
