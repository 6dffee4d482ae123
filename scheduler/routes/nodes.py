"""The node-status endpoint and drain, for clients."""

from __future__ import annotations

from aiohttp import web

from common.models import DrainRequest, Node, NodeList
from scheduler.http import json_response, query_int, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()


@routes.get("/api/v1/nodes", summary="Node status", reply=NodeList)
async def list_nodes(request: web.Request) -> web.Response:
    require_role(request, "read", "submit")
    return json_response(service(request).nodes())


@routes.get("/api/v1/nodes/{id}", summary="One node's status", reply=Node)
async def get_node(request: web.Request) -> web.Response:
    require_role(request, "read", "submit")
    return json_response(service(request).node(request.match_info["id"]))


@routes.post(
    "/api/v1/nodes/{id}/drain", summary="Drain or undrain a node", body=DrainRequest, reply=Node
)
async def drain(request: web.Request) -> web.Response:
    who = require_role(request)
    req = await read_body(request, DrainRequest, empty_ok=True)
    node = await service(request).drain(
        request.match_info["id"], req.drain, req.reason, who, requeue=req.requeue
    )
    return json_response(node)


@routes.delete(
    "/api/v1/nodes/{id}",
    summary="Forget a node (admin); 409 while it runs jobs unless force=1",
    query=(("force", "integer"),),
)
async def forget(request: web.Request) -> web.Response:
    """Forget a node (admin): its tokens stop working and its name may be registered
    again; 409 while it runs jobs unless ``?force=1``, which loses them."""
    who = require_role(request)
    force = bool(query_int(request, "force", 0, lo=0, hi=1))
    return json_response(
        await service(request).forget_node(request.match_info["id"], force=force, who=who)
    )
