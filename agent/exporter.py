"""The agent's own Prometheus metrics, served on ``/metrics`` at ``--metrics-listen``.

What follows from the agent's state (attempts running, slots, output not yet shipped,
final reports not yet acknowledged, whether the scheduler answers) is read at scrape
time from :class:`AgentFigures`; what happens over time (container starts,
heartbeats, attempts ending) is counted as it happens. Host figures (CPU, memory, disk)
are :mod:`agent.metrics`, sent with heartbeats; node-exporter is the tool for more.

The endpoint has no authentication: it says nothing secret (no job's name, command or
output), but bind it to loopback or a network only Prometheus reaches.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent.executors.base import AttemptInfo, Execution, Executor, Mounts, StartError
from agent.registryauth import PullSecret
from common import __version__
from common.models import JobSpec

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: a container's start (seconds): an image pull makes it minutes
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: a heartbeat's round trip (seconds)
HEARTBEAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: the final states an attempt is reported in
FINAL_STATES = ("completed", "failed", "cancelled", "timed_out")


@dataclass(frozen=True)
class AgentFigures:
    """What the agent is doing now, as the daemon counts it."""

    name: str
    executor: str
    #: attempts whose container or process has started and not yet exited
    running: int
    #: attempts this agent holds in any phase: starting, running, being reported
    attempts: int
    slots: int
    slots_used: int
    #: output read from attempts and not yet acknowledged by the scheduler
    unshipped_log_bytes: int
    #: how long the oldest of those bytes has waited, over every attempt (seconds)
    log_ship_lag_s: float
    registered: bool
    reachable: bool
    draining: bool
    executor_broken: bool
    gpus: int
    #: where final reports wait until the scheduler acknowledges them
    reports_dir: Path


def saved_reports(reports_dir: Path) -> int:
    """Final reports kept in the state dir until the scheduler has acknowledged them."""
    try:
        with os.scandir(reports_dir) as entries:
            return sum(1 for e in entries if e.name.endswith(".json"))
    except OSError:
        return 0


class _FiguresCollector(Collector):
    def __init__(self, figures: Callable[[], AgentFigures]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        f = self.figures()
        info = InfoMetricFamily("berth_agent", "This agent: its node name, executor, version.")
        info.add_metric([], {"name": f.name, "executor": f.executor, "version": __version__})
        yield info

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, value)

        yield gauge(
            "berth_agent_running_jobs",
            "Attempts whose container (or process) has started and not exited.",
            f.running,
        )
        yield gauge(
            "berth_agent_attempts",
            "Attempts held in any phase: waiting for a slot, starting, running, reporting.",
            f.attempts,
        )
        yield gauge("berth_agent_slots", "Attempts run at once at most (--max-parallel).", f.slots)
        yield gauge("berth_agent_slots_used", "Parallel slots taken.", f.slots_used)
        yield gauge(
            "berth_agent_log_unshipped_bytes",
            "Output read from attempts that the scheduler has not acknowledged yet: how far "
            "log shipping lags behind.",
            f.unshipped_log_bytes,
        )
        yield gauge(
            "berth_agent_log_ship_lag_seconds",
            "How long the oldest output not yet acknowledged by the scheduler has waited, "
            "over every attempt (0 when all is shipped).",
            f.log_ship_lag_s,
        )
        yield gauge(
            "berth_agent_reports_unacknowledged",
            "Final reports saved in the state dir until the scheduler acknowledges them.",
            saved_reports(f.reports_dir),
        )
        yield gauge(
            "berth_agent_registered", "1 while the agent holds a valid node token.", f.registered
        )
        yield gauge(
            "berth_agent_scheduler_reachable",
            "1 when the scheduler answered the last call, 0 while calls are retried.",
            f.reachable,
        )
        yield gauge(
            "berth_agent_draining", "1 once a first SIGTERM asked the agent to drain.", f.draining
        )
        yield gauge(
            "berth_agent_executor_broken",
            "1 while the executor fails its check (dockerd away, ...).",
            f.executor_broken,
        )
        yield gauge("berth_agent_gpus", "GPUs this agent offers (--gpus).", f.gpus)


class AgentMetrics:
    """The agent's metrics on a registry of its own; ``figures`` is read per scrape."""

    def __init__(self, figures: Callable[[], AgentFigures]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FiguresCollector(figures))
        self.container_starts = Histogram(
            "berth_agent_container_start_seconds",
            "Time the executor took to start an attempt (an image pull included), by "
            "outcome: started or failed.",
            ["outcome"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.heartbeat_seconds = Histogram(
            "berth_agent_heartbeat_seconds",
            "Round trip of the heartbeats the scheduler answered.",
            buckets=HEARTBEAT_BUCKETS,
            registry=self.registry,
        )
        self.heartbeat_failures = Counter(
            "berth_agent_heartbeat_failures",
            "Heartbeats that got no answer, or an error.",
            registry=self.registry,
        )
        self.attempts_ended = Counter(
            "berth_agent_attempts_ended",
            "Attempts this agent ran to an end, by the final state it reported.",
            ["state"],
            registry=self.registry,
        )
        for outcome in ("started", "failed"):
            self.container_starts.labels(outcome)
        for state in FINAL_STATES:
            self.attempts_ended.labels(state)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def ended(self, state: str | None) -> None:
        """An attempt ended, reported in ``state``."""
        if state in FINAL_STATES:
            self.attempts_ended.labels(state).inc()

    async def serve(self, host: str, port: int) -> web.AppRunner:
        """Serve ``/metrics`` on ``host:port`` until the runner is cleaned up."""

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("metrics on http://%s:%d/metrics", host, port)
        return runner


class TimedStarts(Executor):
    """The agent's executor with its starts timed, for the runners to start attempts
    with; everything else is the executor's own."""

    kind: ClassVar[str] = "timed"

    def __init__(self, executor: Executor, metrics: AgentMetrics) -> None:
        self.executor = executor
        self.metrics = metrics

    async def start(
        self,
        info: AttemptInfo,
        spec: JobSpec,
        mounts: Mounts | None = None,
        *,
        pull_secret: PullSecret | None = None,
    ) -> Execution:
        began = time.perf_counter()
        try:
            execution = await self.executor.start(info, spec, mounts, pull_secret=pull_secret)
        except StartError:
            self.metrics.container_starts.labels("failed").observe(time.perf_counter() - began)
            raise
        self.metrics.container_starts.labels("started").observe(time.perf_counter() - began)
        return execution

    async def adopt(self, node_ids: set[str]) -> list[Execution]:
        return await self.executor.adopt(node_ids)

    async def check(self) -> str | None:
        return await self.executor.check()

    async def close(self) -> None:
        await self.executor.close()
