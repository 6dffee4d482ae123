"""Prometheus metrics of the scheduler, on a registry of its own (no globals).

Counts that follow from the state (jobs and nodes by state, queue depth, heartbeat lag)
are read at scrape time; what happens over time (placement passes, events, requests)
is counted as it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.states import JobState, NodeState
from scheduler.http import Handler
from scheduler.state import State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StateCollector(Collector):
    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        c = self.state
        jobs = GaugeMetricFamily("berth_jobs", "Jobs by state.", labels=["state"])
        for job_state in JobState:
            jobs.add_metric([job_state.value], c.counts[job_state])
        yield jobs
        yield GaugeMetricFamily("berth_queue_depth", "Jobs waiting to be placed.", len(c.queue))
        nodes = GaugeMetricFamily("berth_nodes", "Nodes by state.", labels=["state"])
        by_state = dict.fromkeys(NodeState, 0)
        for node in c.nodes.values():
            by_state[node.state] += 1
        for state, n in by_state.items():
            nodes.add_metric([state.value], n)
        yield nodes
        lag = GaugeMetricFamily(
            "berth_heartbeat_lag_seconds",
            "Seconds since the last heartbeat of each node that is not offline.",
            labels=["node"],
        )
        now = c.clock()
        for node in c.nodes.values():
            if node.state is not NodeState.OFFLINE and node.last_heartbeat_at is not None:
                lag.add_metric([node.name], max(0.0, now - node.last_heartbeat_at.timestamp()))
        yield lag
        yield GaugeMetricFamily(
            "berth_event_index", "Index of the last committed event.", c.events.committed_index
        )


#: (role, epoch, seconds since the state last caught up with the store) of a
#: scheduler that shares its store with others
RoleFigures = Callable[[], tuple[str, int, float]]


class _RoleCollector(Collector):
    def __init__(self, figures: RoleFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        role, epoch, lag = self.figures()
        leader = GaugeMetricFamily(
            "berth_role", "1 for this scheduler's role (leader or standby).", labels=["role"]
        )
        for name in ("leader", "standby"):
            leader.add_metric([name], 1.0 if role == name else 0.0)
        yield leader
        yield GaugeMetricFamily(
            "berth_epoch", "The leader's epoch as this scheduler knows it.", epoch
        )
        yield GaugeMetricFamily(
            "berth_apply_lag_seconds",
            "A standby: seconds since its state last caught up with the store (0 on the leader).",
            lag,
        )


class ConnectionFigures(NamedTuple):
    """What the connection guard sees (scheduler/connguard.py)."""

    authenticated: int
    unauthenticated: int
    open_fds: int
    fd_limit: int
    fd_reserve: int


class _ConnectionCollector(Collector):
    def __init__(self, figures: Callable[[], ConnectionFigures]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        f = self.figures()
        conns = GaugeMetricFamily(
            "berth_connections",
            "Open client connections: authenticated (a request on them carried a valid "
            "token) or not yet.",
            labels=["state"],
        )
        conns.add_metric(["authenticated"], f.authenticated)
        conns.add_metric(["unauthenticated"], f.unauthenticated)
        yield conns
        yield GaugeMetricFamily("berth_open_fds", "File descriptors open.", f.open_fds)
        yield GaugeMetricFamily("berth_fd_limit", "The open-files limit in force.", f.fd_limit)
        yield GaugeMetricFamily(
            "berth_fd_reserve",
            "Descriptors kept free for the store, blobs and agents: past limit - reserve "
            "unauthenticated connections are closed.",
            f.fd_reserve,
        )


class Metrics:
    def watch_roles(self, figures: RoleFigures) -> None:
        """Report leading and following (schedulers sharing a store)."""
        self.registry.register(_RoleCollector(figures))

    def watch_connections(self, figures: Callable[[], ConnectionFigures]) -> None:
        """Report open connections and descriptors (the scheduler's listening port)."""
        self.registry.register(_ConnectionCollector(figures))

    def __init__(self, state: State) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(state))
        self.placement_seconds = Histogram(
            "berth_placement_pass_seconds",
            "Time one placement pass takes.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.placements = Counter(
            "berth_placements", "Jobs placed on nodes.", registry=self.registry
        )
        self.events = Counter(
            "berth_events", "Events committed, by type.", ["type"], registry=self.registry
        )
        self.blobs_swept = Counter(
            "berth_blobs_swept",
            "Blobs deleted because no kept job named them, and abandoned uploads, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.blob_bytes_swept = Counter(
            "berth_blob_bytes_swept",
            "Bytes freed by deleting blobs no kept job named and abandoned uploads.",
            registry=self.registry,
        )
        self.stream_cutoffs = Counter(
            "berth_stream_cutoffs",
            "Event subscribers cut off for falling too far behind, by kind (sse, ws).",
            ["kind"],
            registry=self.registry,
        )
        self.connections_shed = Counter(
            "berth_connections_shed",
            "Connections closed or refused to keep the scheduler reachable, by reason: "
            "header_timeout, body_timeout, address_cap, fd_reserve.",
            ["reason"],
            registry=self.registry,
        )
        self.accept_pauses = Counter(
            "berth_accept_pauses",
            "Times accepting connections paused: descriptors down to the reserve and no "
            "unauthenticated connection left to close.",
            registry=self.registry,
        )
        self.requests = Counter(
            "berth_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        requests = self.requests

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            # The route's pattern, not its path: ids would make unbounded label values.
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            try:
                response = await handler(request)
            except web.HTTPException as e:
                requests.labels(request.method, route, str(e.status)).inc()
                raise
            requests.labels(request.method, route, str(response.status)).inc()
            return response

        return count
