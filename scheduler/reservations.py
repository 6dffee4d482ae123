"""Reservations: room kept on a node for a queued job that fits nowhere now.

Slurm's backfill, with the same estimate it uses (a job's time limit, or here its
``expected_runtime_s`` when given): every running job is expected to free its
resources at its start plus its estimate. For each of the first jobs in queue order
that fit nowhere, the pass finds the node where the running jobs' ends free enough
room earliest and reserves that room from then on. A job behind it may still use the
node now, but only if it is expected to end before the reservation starts, or if it
fits in what the node has spare beside the reserved job at that time. So nothing
placed later delays the reserved job (as long as the estimates hold), and a big job
never waits for ever behind a stream of small ones.

Pure functions over plain values: the state (scheduler.state.scheduling) gathers the
running jobs' ends and keeps the answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scheduler.placement import CPU_EPSILON, JobRequest, NodeView, admissible

#: how a reserved job's reason begins ("reserved: node n3 from 2026-12-03 14:05:00 UTC")
RESERVED = "reserved"


@dataclass(slots=True, frozen=True)
class Release:
    """A running job's resources, expected back on its node at ``end`` (epoch seconds)."""

    end: float
    cpu: float
    memory_mb: int
    gpus: int


@dataclass(slots=True)
class Held:
    """What a pass keeps on one reserved node: from ``start`` on, the reserved jobs'
    room; beside them, ``cpu``/``memory_mb``/``gpus``/``slots`` stay for others."""

    start: float
    cpu: float
    memory_mb: int
    gpus: int
    slots: int
    jobs: list[str] = field(default_factory=list)

    def admits(self, job: JobRequest, now: float) -> bool:
        """Whether ``job`` may start on the node now without delaying the reservation:
        it is expected to end before the reservation starts, or it fits beside it."""
        return now + job.estimate <= self.start or self.beside(job)

    def beside(self, job: JobRequest) -> bool:
        return (
            self.slots >= 1
            and job.cpu - CPU_EPSILON <= self.cpu
            and job.memory_mb <= self.memory_mb
            and job.gpus <= self.gpus
        )

    def take(self, job: JobRequest, now: float) -> None:
        """``job`` starts on the node now: what it still holds at the start comes off
        the room beside the reservation."""
        if job.id in self.jobs:
            return
        if now + job.estimate <= self.start:
            return
        self.cpu -= job.cpu
        self.memory_mb -= job.memory_mb
        self.gpus -= job.gpus
        self.slots -= 1


@dataclass(slots=True, frozen=True)
class Plan:
    """Where and from when a job is reserved, and what stays beside it there."""

    node_id: str
    held: Held


def _room(node: NodeView) -> tuple[float, int, int, int]:
    """What the node has free by allocation (planning ignores live memory readings)."""
    return node.free_cpu, node.free_memory_mb, node.free_gpus, node.free_slots


def _holds(cpu: float, memory: int, gpus: int, slots: int, job: JobRequest) -> bool:
    return (
        slots >= 1 and cpu >= job.cpu - CPU_EPSILON and memory >= job.memory_mb and gpus >= job.gpus
    )


def earliest_start(
    node: NodeView, releases: Sequence[Release], job: JobRequest, now: float
) -> tuple[float, tuple[float, int, int, int]] | None:
    """When the node first has room for ``job`` as the running jobs' estimates free it
    (``releases`` sorted by end; an end in the past counts as now), and what it has
    free then; None if it never has, whatever ends."""
    cpu, memory, gpus, slots = _room(node)
    at = now if node.cooldown_until is None else max(now, node.cooldown_until)
    if _holds(cpu, memory, gpus, slots, job):
        return at, (cpu, memory, gpus, slots)
    for release in releases:
        cpu += release.cpu
        memory += release.memory_mb
        gpus += release.gpus
        slots += 1
        if _holds(cpu, memory, gpus, slots, job):
            return max(at, release.end), (cpu, memory, gpus, slots)
    return None


@dataclass(slots=True, frozen=True)
class Option:
    """A node that could take a job of some size: from when, and what it has free then."""

    start: float
    #: the tie-break after the start: the node's CPU when size-aware, else 0
    size: float
    #: the node's place in the pass (the last tie-break, so choices are repeatable)
    index: int
    node_id: str
    #: cpu, memory_mb, gpus, slots free at the start
    room: tuple[float, int, int, int]

    @property
    def rank(self) -> tuple[float, float, int]:
        return (self.start, self.size, self.index)


@dataclass(slots=True, frozen=True)
class Options:
    """Every node that could ever take a job of one size, earliest start first."""

    ordered: list[Option]
    by_node: dict[str, Option]


def options(
    nodes: Sequence[NodeView],
    releases: Callable[[str], Sequence[Release]],
    job: JobRequest,
    now: float,
    *,
    size_aware: bool,
) -> Options:
    """Where and from when a job like ``job`` could start, ignoring reservations: the
    same for every job of its size and filter until a job is placed, so a pass works it
    out once per size."""
    found = []
    for i, node in enumerate(nodes):
        if not admissible(node, job, now):
            continue
        if node.total_cpu + CPU_EPSILON < job.cpu or node.total_memory_mb < job.memory_mb:
            continue
        start = earliest_start(node, releases(node.id), job, now)
        if start is not None:
            size = node.total_cpu if size_aware else 0.0
            found.append(Option(start[0], size, i, node.id, start[1]))
    found.sort(key=lambda o: o.rank)
    return Options(found, {o.node_id: o for o in found})


def choose(found: Options, job: JobRequest, held: dict[str, Held]) -> Plan | None:
    """The reservation for ``job``: on the node where it could start earliest (ties:
    the smallest node when size-aware, so big nodes stay for big jobs). A node already
    reserved takes it only at the same start, beside the jobs reserved there. None when
    no node could ever take it."""
    best: tuple[tuple[float, float, int], Plan] | None = None
    for option in found.ordered:
        if option.node_id not in held:
            cpu, memory, gpus, slots = option.room
            spare = Held(
                option.start, cpu - job.cpu, memory - job.memory_mb, gpus - job.gpus, slots - 1
            )
            spare.jobs.append(job.id)
            best = (option.rank, Plan(option.node_id, spare))
            break
    for node_id, there in held.items():
        at = found.by_node.get(node_id)
        if at is None or not there.beside(job):
            continue
        rank = (there.start, at.size, at.index)
        if best is None or rank < best[0]:
            shared = Held(
                there.start,
                there.cpu - job.cpu,
                there.memory_mb - job.memory_mb,
                there.gpus - job.gpus,
                there.slots - 1,
                [*there.jobs, job.id],
            )
            best = (rank, Plan(node_id, shared))
    return None if best is None else best[1]


def plan(
    nodes: Sequence[NodeView],
    releases: Callable[[str], Sequence[Release]],
    job: JobRequest,
    now: float,
    held: dict[str, Held],
    *,
    size_aware: bool,
) -> Plan | None:
    """``choose`` among the ``options`` for ``job``."""
    return choose(options(nodes, releases, job, now, size_aware=size_aware), job, held)


def releases_of(running: Sequence[tuple[float, float, float, int, int]]) -> list[Release]:
    """The running jobs of a node as releases sorted by end: each is (started, estimate,
    cpu, memory_mb, gpus). An end already past counts as now (``earliest_start``)."""
    out = [
        Release(started + estimate, cpu, memory, gpus)
        for started, estimate, cpu, memory, gpus in running
    ]
    out.sort(key=lambda r: r.end)
    return out
