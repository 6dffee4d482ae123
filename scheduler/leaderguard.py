"""Standbys refuse what only the leader may do: every write and every agent call is
answered 503 ``not_leader`` with the leader's URL, before anything is done, so the
caller sends the same request there (``common.client`` does so on its own)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from common.errors import NotLeader
from scheduler.routes import SERVICE

#: (method, canonical path) of the routes only the leader serves, from the route table
LEADER_ROUTES: web.AppKey[frozenset[tuple[str, str]]] = web.AppKey("leader_routes")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def leader_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    svc = request.app[SERVICE]
    if not svc.leading():
        route = request.match_info.route.resource
        canonical = route.canonical if route is not None else request.path
        if (request.method, canonical) in request.app[LEADER_ROUTES]:
            raise NotLeader(
                "this scheduler stands by; writes and agent calls go to the leader "
                "(nothing was done)",
                {"leader_url": svc.leader_url},
            )
    return await handler(request)
