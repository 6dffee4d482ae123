"""The scheduler's routes as data: one :class:`Route` per method and path.

Everything the HTTP layer knows about a route is read from its record: the router
registers it, :mod:`scheduler.openapi` documents it, the auth middleware lets its
path through without a token when it is public, and the write guard lets it use the
disk reserve (bookkeeping) or leaves it alone (stateless). Each route module declares
its routes with a :class:`RouteTable`; :mod:`scheduler.routes.registry` lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
#: query parameters as (name, JSON schema type)
Query = tuple[tuple[str, str], ...]

#: a path segment that matches one of a few words, such as ``{action:cancel|retry}``
_CHOICE = re.compile(r"\{(\w+):(\w+(?:\|\w+)*)\}")
#: a path segment with a pattern of its own (patterns with braces are not supported)
_PATTERN = re.compile(r"\{(\w+):[^{}]*\}")


@dataclass(frozen=True, slots=True)
class Route:
    """One method on one path, and what the HTTP layer needs to know about it.

    ``body`` and ``reply`` are a msgspec model or one of ``"binary"``, ``"text"``,
    ``"events"`` and ``"object"`` (``body`` None: no request body). ``summary`` None
    leaves the route out of the OpenAPI document (the WebSocket, the document itself,
    the dashboard's files). The middlewares look ``public``, ``bookkeeping`` and
    ``stateless`` up by path, so each holds for every method of a path or for none.
    """

    #: upper case; a GET also answers HEAD
    method: str
    #: as the router matches it; a ``{name:a|b}`` segment is documented once per word
    path: str
    handler: Handler
    #: one line for the document; ``{name}`` is replaced by the capitalised word of a
    #: ``{name:a|b}`` segment
    summary: str | None = None
    #: the operationId (camelCase), where the one :mod:`scheduler.openapi` derives from
    #: the method and path would not say what it does; ``{name}`` as in ``summary``
    name: str | None = None
    body: Any = None
    reply: Any = "object"
    query: Query = ()
    #: query parameters the route cannot do without
    required: tuple[str, ...] = ()
    #: request headers the route reads, besides Authorization
    headers: tuple[str, ...] = ()
    #: success is 201 Created
    created: bool = False
    #: anyone may call it, without a token
    public: bool = False
    #: an agent's small write that keeps running work accounted for: taken while only
    #: the disk reserve is left
    bookkeeping: bool = False
    #: a write that touches no state on disk: never refused by the write guard
    stateless: bool = False
    #: only the leader serves it (a standby answers 503 not_leader); None: every
    #: method but GET that is not stateless. Agent calls that only read say True.
    leader: bool | None = None

    @property
    def leader_only(self) -> bool:
        if self.leader is not None:
            return self.leader
        return self.method != "GET" and not self.stateless

    def documented(self) -> Iterator[Documented]:
        """Each operation the document lists for this route."""
        if self.summary is None:
            return
        choice = _CHOICE.search(self.path)
        if choice is None:
            yield Documented(self.path, self.summary, self.name)
            return
        key, words = choice.groups()
        for word in words.split("|"):
            path = self.path[: choice.start()] + word + self.path[choice.end() :]
            summary = self.summary.replace(f"{{{key}}}", word.capitalize())
            name = self.name.replace(f"{{{key}}}", word) if self.name else None
            yield Documented(path, summary, name)


class Documented(NamedTuple):
    """One operation of the document: a route, or one word of its ``{name:a|b}``."""

    path: str
    summary: str
    #: the route's own operationId, if it names one
    name: str | None


class RouteTable:
    """The routes of one module, declared with a decorator on each handler::

    routes = RouteTable()

    @routes.get("/api/v1/nodes", summary="Node status", reply=NodeList)
    async def list_nodes(request: web.Request) -> web.Response: ...
    """

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def route(self, method: str, path: str, **about: Any) -> Callable[[H], H]:
        def register(handler: H) -> H:
            self._routes.append(Route(method, path, handler, **about))
            return handler

        return register

    def get(self, path: str, **about: Any) -> Callable[[H], H]:
        return self.route("GET", path, **about)

    def post(self, path: str, **about: Any) -> Callable[[H], H]:
        return self.route("POST", path, **about)

    def put(self, path: str, **about: Any) -> Callable[[H], H]:
        return self.route("PUT", path, **about)

    def delete(self, path: str, **about: Any) -> Callable[[H], H]:
        return self.route("DELETE", path, **about)


def add_routes(router: web.UrlDispatcher, routes: Iterable[Route]) -> None:
    """Register ``routes`` in their order, the order the router tries them in."""
    for r in routes:
        if r.method == "GET":
            router.add_get(r.path, r.handler)
        else:
            router.add_route(r.method, r.path, r.handler)


def leader_routes(routes: Iterable[Route]) -> frozenset[tuple[str, str]]:
    """(method, canonical path) of the routes only the leader serves."""
    return frozenset((r.method, canonical(r.path)) for r in routes if r.leader_only)


def public_paths(routes: Iterable[Route]) -> frozenset[str]:
    """Paths anyone may call, without a token."""
    return _paths(routes, lambda r: r.public)


def bookkeeping_paths(routes: Iterable[Route]) -> frozenset[str]:
    """Writes the write guard takes while only the disk reserve is left."""
    return _paths(routes, lambda r: r.bookkeeping)


def stateless_paths(routes: Iterable[Route]) -> frozenset[str]:
    """Writes the write guard never refuses."""
    return _paths(routes, lambda r: r.stateless)


def canonical(path: str) -> str:
    """The path as aiohttp names its resource: ``{name:pattern}`` becomes ``{name}``."""
    return _PATTERN.sub(r"{\1}", path)


def _paths(routes: Iterable[Route], flag: Callable[[Route], bool]) -> frozenset[str]:
    """Canonical paths whose routes have ``flag``. The middlewares look a flag up by
    path, so it must hold for every method of a path or for none."""
    by_path: dict[str, set[bool]] = {}
    for r in routes:
        by_path.setdefault(canonical(r.path), set()).add(flag(r))
    mixed = sorted(p for p, flags in by_path.items() if len(flags) > 1)
    if mixed:
        raise ValueError(f"a flag set on some methods of a path only: {', '.join(mixed)}")
    return frozenset(p for p, flags in by_path.items() if flags == {True})
