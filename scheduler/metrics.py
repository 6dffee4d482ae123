"""Prometheus metrics of the scheduler, on a registry of its own (no globals).

Counts that follow from the state (jobs and nodes by state, queue depth, heartbeat lag,
what each node offers and has allocated, event subscribers, the store's commits) are
read at scrape time; what happens over time (placement passes, events, requests, jobs
waiting and running) is counted as it happens.

Every label has a bounded set of values: routes are the route table's templates (never
a raw path), methods the HTTP ones, statuses their class, job states and node names
those of the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from common.states import TERMINAL, JobState, NodeState
from scheduler.http import Handler
from scheduler.state import State
from scheduler.store.commit import Tally

if TYPE_CHECKING:
    from scheduler.bus import EventBus
    from scheduler.events import Event
    from scheduler.store.base import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MIB = 1024 * 1024
#: methods named in labels; any other is "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
#: an HTTP request's duration (seconds): long polls and streams last up to minutes
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: how long a job waits in the queue, and how long an attempt runs (seconds)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
#: jobs whose queue entry or start is remembered for the histograms, at most
MAX_TRACKED_JOBS = 1_000_000
_TERMINAL = frozenset(s.value for s in TERMINAL)


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
        yield from _node_resources(c)


def _node_resources(c: State) -> Iterator[GaugeMetricFamily]:
    """What each node that is not offline offers (its capacity less what it keeps for
    itself) and has allocated to jobs."""
    families = {
        (what, kind): GaugeMetricFamily(
            f"berth_node_{what}_{kind}{unit}",
            f"{label} {'offered to jobs' if kind == 'capacity' else 'allocated to jobs'}"
            ", per node that is not offline.",
            labels=["node"],
        )
        for what, unit, label in (
            ("cpu", "_cores", "CPU cores"),
            ("memory", "_bytes", "Memory"),
            ("gpus", "", "GPUs"),
        )
        for kind in ("capacity", "allocated")
    }
    for node in c.nodes.values():
        if node.state is NodeState.OFFLINE:
            continue
        cap, held, kept = node.capacity, node.allocated, node.reserved
        values = {
            ("cpu", "capacity"): max(0.0, cap.cpu - kept.cpu),
            ("cpu", "allocated"): held.cpu,
            ("memory", "capacity"): max(0, cap.memory_mb - kept.memory_mb) * _MIB,
            ("memory", "allocated"): held.memory_mb * _MIB,
            ("gpus", "capacity"): max(0, cap.gpus - kept.gpus),
            ("gpus", "allocated"): held.gpus,
        }
        for key, value in values.items():
            families[key].add_metric([node.name], float(value))
    yield from families.values()


class _StoreCollector(Collector):
    """The store's group commit: each batch's transaction time and size."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        stats = self.store.commit_stats
        yield _histogram(
            "berth_store_commit_seconds",
            "Time one batch's transaction took (batches that were written).",
            stats.seconds,
        )
        yield _histogram(
            "berth_store_commit_batch_size",
            "Commits (callers' change sets) written together in one transaction.",
            stats.batch,
        )
        failures = CounterMetricFamily(
            "berth_store_commit_failures", "Batches whose transaction failed (retried)."
        )
        failures.add_metric([], stats.failures)
        yield failures


def _histogram(name: str, documentation: str, tally: Tally) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    seen = 0
    for bound, count in zip(tally.bounds, tally.counts, strict=False):
        seen += count
        buckets.append((_bound(bound), seen))
    buckets.append(("+Inf", seen + tally.counts[-1]))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=tally.sum)


def _bound(bound: float) -> str:
    # As prometheus_client writes its own buckets: "0.005", "1.0".
    return repr(float(bound))


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


class _BusCollector(Collector):
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "berth_event_subscriptions",
            "Live event subscriptions: one per SSE stream, any number per WebSocket.",
            len(self.bus),
        )


class Metrics:
    """The scheduler's metrics. Parameters: the state (jobs, nodes, queue), and
    optionally the event bus (its subscriptions) and the store (its commits)."""

    def watch_roles(self, figures: RoleFigures) -> None:
        """Report leading and following (schedulers sharing a store)."""
        self.registry.register(_RoleCollector(figures))

    def watch_connections(self, figures: Callable[[], ConnectionFigures]) -> None:
        """Report open connections and descriptors (the scheduler's listening port)."""
        self.registry.register(_ConnectionCollector(figures))

    def __init__(
        self, state: State, bus: EventBus | None = None, store: Store | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(state))
        if bus is not None:
            self.registry.register(_BusCollector(bus))
        if store is not None:
            self.registry.register(_StoreCollector(store))
        #: when each job entered the queue, and when it started running, by job id:
        #: read back when it starts and when it ends
        self._queued_at: dict[str, float] = {}
        self._started_at: dict[str, float] = {}
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
        self.request_seconds = Histogram(
            "berth_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template, "
            "method and status class (2xx, 4xx, ...); a stream's lasts as long as it does.",
            ["method", "route", "status_class"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.streams = Gauge(
            "berth_stream_subscribers",
            "Open event and log streams by kind: sse (text/event-stream) or ws (WebSocket).",
            ["kind"],
            registry=self.registry,
        )
        for kind in ("sse", "ws"):
            self.streams.labels(kind)
        self.queue_wait = Histogram(
            "berth_job_queue_wait_seconds",
            "Time from a job entering the queue (submitted, or queued again for a retry) "
            "to its placement on a node (the start that follows is the agent's "
            "berth_agent_container_start_seconds).",
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "berth_job_run_seconds",
            "Time from a job's last attempt running (or its placement, where the agent "
            "reported its start and end together) to the job's end, by final state; jobs "
            "that ended before they were placed are not counted.",
            ["state"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.ended = Counter(
            "berth_jobs_ended",
            "Jobs that reached a final state, by that state.",
            ["state"],
            registry=self.registry,
        )
        for final in sorted(_TERMINAL):
            self.run_seconds.labels(final)
            self.ended.labels(final)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, events: Iterable[Event]) -> None:
        """Count committed events, and time jobs' waits and runs from their state
        changes (the leader's own, or those a standby follows)."""
        queued_at, started_at = self._queued_at, self._started_at
        for e in events:
            self.events.labels(e.type).inc()
            job_id = e.job_id
            if job_id is None:
                continue
            if e.type == "job.created":
                _remember(queued_at, job_id, e.ts.timestamp())
                continue
            if e.type != "job.state" or e.data is None:
                continue
            to = e.data.get("state")
            at = e.ts.timestamp()
            if to == JobState.QUEUED:
                _remember(queued_at, job_id, at)
                started_at.pop(job_id, None)
            elif to == JobState.ASSIGNED:
                waited = queued_at.pop(job_id, None)
                if waited is not None:
                    self.queue_wait.observe(max(0.0, at - waited))
                _remember(started_at, job_id, at)
            elif to == JobState.RUNNING and e.data.get("from") == JobState.ASSIGNED:
                # Not when it resumes after a pause.
                _remember(started_at, job_id, at)
            elif to in _TERMINAL:
                self.ended.labels(to).inc()
                queued_at.pop(job_id, None)
                started = started_at.pop(job_id, None)
                if started is not None:
                    self.run_seconds.labels(to).observe(max(0.0, at - started))

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        requests, seconds, streams = self.requests, self.request_seconds, self.streams
        sse_routes = _sse_routes()

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            # The route's pattern, not its path: ids would make unbounded label values.
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            method = request.method if request.method in _METHODS else "other"
            kind = _stream_kind(request, route, sse_routes)
            if kind is not None:
                streams.labels(kind).inc()
            status: int | None = None
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as e:
                status = e.status
                raise
            finally:
                if kind is not None:
                    streams.labels(kind).dec()
                # None: the client went away first (the handler was cancelled).
                if status is not None:
                    requests.labels(method, route, str(status)).inc()
                    seconds.labels(method, route, f"{status // 100}xx").observe(
                        time.perf_counter() - started
                    )

        return count


def _remember(times: dict[str, float], job_id: str, at: float) -> None:
    if job_id not in times and len(times) >= MAX_TRACKED_JOBS:
        # Ends this scheduler never saw (it followed from a later point): forget the
        # oldest rather than grow without bound.
        del times[next(iter(times))]
    times[job_id] = at


def _sse_routes() -> frozenset[str]:
    """The routes that stream SSE when asked: those that resume from Last-Event-ID."""
    # Here, not at import: the route modules import this one.
    from scheduler.routes.registry import ROUTES
    from scheduler.routes.table import canonical

    return frozenset(canonical(r.path) for r in ROUTES if "Last-Event-ID" in r.headers)


def _stream_kind(request: web.Request, route: str, sse_routes: frozenset[str]) -> str | None:
    if route == "/api/v1/ws":
        return "ws"
    if route in sse_routes and "text/event-stream" in request.headers.get("Accept", ""):
        return "sse"
    return None
