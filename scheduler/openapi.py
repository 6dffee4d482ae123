"""The OpenAPI 3.1 document of API v1, built from the same msgspec models that validate
requests and encode replies, so the schema cannot drift from the code."""

from __future__ import annotations

from typing import Any

import msgspec

from common import __version__
from common.models import (
    ActionResults,
    AssignmentsReply,
    AuditPage,
    DrainRequest,
    HeartbeatReply,
    HeartbeatRequest,
    Job,
    JobBatch,
    JobList,
    JobSelection,
    JobSpec,
    JoinToken,
    Node,
    NodeList,
    RegisterReply,
    RegisterRequest,
    Report,
    ReportBatch,
    ReportBatchReply,
    ReportReply,
    Stats,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    TokenList,
)
from scheduler.routes.groups import GroupLimit

JSON = "application/json"
#: (method, path, summary, request body, reply, query parameters)
_Op = tuple[str, str, str, Any, Any, tuple[tuple[str, str], ...]]

_PAGE = (("state", "string"), ("limit", "integer"), ("cursor", "string"))
_BLOCK = (("index", "integer"), ("wait", "number"))
_STREAM = (("since", "integer"), ("topics", "string"), ("job", "string"))

OPERATIONS: list[_Op] = [
    ("post", "/api/v1/jobs", "Submit a job (Idempotency-Key honoured)", JobSpec, Job, ()),
    ("post", "/api/v1/jobs/batch", "Submit up to 1,000 jobs, all or none", JobBatch, JobList, ()),
    ("get", "/api/v1/jobs", "List jobs, newest first", None, JobList, _PAGE + _BLOCK),
    ("get", "/api/v1/jobs/{id}", "One job; blocks with index and wait", None, Job, _BLOCK),
    *[
        ("post", f"/api/v1/jobs/{{id}}/{a}", f"{a.capitalize()} a job", None, Job, ())
        for a in ("cancel", "retry", "pause", "resume")
    ],
    *[
        (
            "post",
            f"/api/v1/jobs/{a}",
            f"{a.capitalize()} many jobs",
            JobSelection,
            ActionResults,
            (),
        )
        for a in ("cancel", "retry", "pause", "resume")
    ],
    (
        "get",
        "/api/v1/jobs/{id}/logs",
        "A job's logs (text, follow, or SSE)",
        None,
        "text",
        (
            ("attempt", "integer"),
            ("offset", "integer"),
            ("follow", "string"),
            ("download", "string"),
        ),
    ),
    (
        "get",
        "/api/v1/jobs/{id}/events",
        "A job's events (JSON page or SSE)",
        None,
        "events",
        (("since", "integer"),),
    ),
    ("get", "/api/v1/jobs/{id}/outputs", "The archive of a job's outputs", None, "binary", ()),
    (
        "get",
        "/api/v1/events",
        "Events (JSON page or SSE), replay from since",
        None,
        "events",
        _STREAM,
    ),
    ("get", "/api/v1/nodes", "Node status", None, NodeList, ()),
    ("get", "/api/v1/nodes/{id}", "One node's status", None, Node, ()),
    ("post", "/api/v1/nodes/{id}/drain", "Drain or undrain a node", DrainRequest, Node, ()),
    (
        "delete",
        "/api/v1/nodes/{id}",
        "Forget a node (admin); 409 while it runs jobs unless force=1",
        None,
        "object",
        (("force", "integer"),),
    ),
    ("get", "/api/v1/stats", "Jobs and nodes by state, capacity", None, Stats, ()),
    ("get", "/api/v1/groups", "Concurrency groups", None, "object", ()),
    ("put", "/api/v1/groups/{name}", "Set a group's limit", GroupLimit, "object", ()),
    ("post", "/api/v1/blobs", "Store an archive (content-addressed)", "binary", "object", ()),
    ("get", "/api/v1/blobs/{digest}", "Fetch an archive", None, "binary", ()),
    (
        "post",
        "/api/v1/nodes/register",
        "Register an agent (join token)",
        RegisterRequest,
        RegisterReply,
        (),
    ),
    (
        "post",
        "/api/v1/nodes/{id}/heartbeat",
        "An agent's heartbeat",
        HeartbeatRequest,
        HeartbeatReply,
        (),
    ),
    (
        "get",
        "/api/v1/nodes/{id}/assignments",
        "Long-poll an agent's assignments",
        None,
        AssignmentsReply,
        (("after", "integer"), ("wait", "number")),
    ),
    (
        "post",
        "/api/v1/nodes/{id}/jobs/{job}/report",
        "Report on an attempt",
        Report,
        ReportReply,
        (),
    ),
    (
        "post",
        "/api/v1/nodes/{id}/reports",
        "Many reports at once",
        ReportBatch,
        ReportBatchReply,
        (),
    ),
    (
        "post",
        "/api/v1/nodes/{id}/jobs/{job}/logs",
        "Append log bytes",
        "binary",
        "object",
        (("attempt", "integer"), ("offset", "integer")),
    ),
    (
        "post",
        "/api/v1/nodes/{id}/jobs/{job}/checkpoint",
        "Upload a checkpoint",
        "binary",
        "object",
        (("attempt", "integer"),),
    ),
    (
        "post",
        "/api/v1/session",
        "Log in with a token: an HttpOnly session cookie",
        "object",
        "object",
        (),
    ),
    ("get", "/api/v1/session", "The session's user and CSRF token", None, "object", ()),
    ("delete", "/api/v1/session", "Log out", None, "object", ()),
    ("post", "/api/v1/tokens", "Create a token (admin)", TokenCreate, TokenCreated, ()),
    (
        "get",
        "/api/v1/tokens",
        "List tokens, never their secrets (admin)",
        None,
        TokenList,
        (("revoked", "string"),),
    ),
    ("delete", "/api/v1/tokens/{id}", "Revoke a token by id or name (admin)", None, TokenInfo, ()),
    ("post", "/api/v1/tokens/join/rotate", "Replace the join token (admin)", None, JoinToken, ()),
    (
        "get",
        "/api/v1/audit",
        "The audit log: who did what, oldest first (admin)",
        None,
        AuditPage,
        (
            ("after", "integer"),
            ("limit", "integer"),
            ("actor", "string"),
            ("action", "string"),
            ("target", "string"),
        ),
    ),
    ("get", "/healthz", "Liveness probe", None, "object", ()),
    ("get", "/readyz", "Readiness probe", None, "object", ()),
    ("get", "/metrics", "Prometheus metrics", None, "text", ()),
]

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
#: query parameters a route cannot do without
_REQUIRED_QUERY = {
    ("/api/v1/nodes/{id}/jobs/{job}/logs", "attempt"),
    ("/api/v1/nodes/{id}/jobs/{job}/logs", "offset"),
    ("/api/v1/nodes/{id}/jobs/{job}/checkpoint", "attempt"),
}
#: request headers a route reads, besides Authorization
_HEADERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/api/v1/jobs"): ("Idempotency-Key",),
    ("get", "/api/v1/events"): ("Last-Event-ID",),
    ("get", "/api/v1/jobs/{id}/events"): ("Last-Event-ID",),
    ("get", "/api/v1/jobs/{id}/logs"): ("Last-Event-ID",),
}
#: routes whose success is 201 Created
_CREATED = ("/api/v1/jobs", "/api/v1/jobs/batch", "/api/v1/blobs", "/api/v1/tokens")

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


def document() -> dict[str, Any]:
    models = sorted(
        {k for op in OPERATIONS for k in (op[3], op[4]) if isinstance(k, type)},
        key=lambda t: t.__name__,
    )
    schemas, components = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(models, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, reply, query in OPERATIONS:
        params: list[dict[str, Any]] = [
            {"name": p.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
            for p in path.split("/")
            if p.startswith("{")
        ]
        params += [
            {
                "name": name,
                "in": "query",
                "required": (path, name) in _REQUIRED_QUERY,
                "schema": {"type": kind, **_QUERY_BOUNDS.get(name, {})},
            }
            for name, kind in query
        ]
        params += [
            {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
            for name in _HEADERS.get((method, path), ())
        ]
        op: dict[str, Any] = {
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": _content(reply, refs)},
                "4XX": {"description": "Refused", "content": {JSON: {"schema": _ERROR}}},
            },
        }
        if method == "post" and path in _CREATED:
            op["responses"]["201"] = op["responses"].pop("200")
        if path in ("/healthz", "/readyz", "/api/v1/session"):
            op["security"] = []
        if body is not None:
            op["requestBody"] = {"required": True, "content": _content(body, refs)}
        paths.setdefault(path, {})[method] = op
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
