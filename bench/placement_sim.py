"""A discrete-event simulator that drives the scheduler's real state with a simulated clock.

Nothing of the scheduling rules is copied here: a :class:`scheduler.state.State` gets
the nodes and jobs through its public methods, the way the service and the agents use
it, and the simulator only measures what comes out.

- Nodes ``register`` once. Agents' heartbeats are not simulated: the heartbeat interval
  and node TTL are set past any simulated span, so no node turns late or offline, and
  liveness is never run (every job ends on its own before its timeout). Preemption is
  off: no simulated job is preemptible, so it could change nothing, but looking for
  victims costs a scan of the running jobs for every job that fits nowhere.
- A job is ``submit``-ted at its arrival time.
- After every batch of events at one instant the change set is taken and "committed"
  (``take_changes``, ``take_effects``, ``events.committed``), as the service does; a
  placement pass (``place``) runs when the effects ask for one, or when the sweep
  interval passed since the last pass while jobs wait (the service's placement loop).
- Woken nodes fetch their assignments (``pending_assignments``) and report each one
  ``running`` at once; ``runtime_s`` later it reports ``completed``.

Between instants nothing changes, so the figures are integrals over the intervals
between instants of what the state shows just after each instant:

- wait: assignment time minus arrival time (an agent starts a job the moment it is
  assigned);
- makespan: the last job's end, counted from time 0; last start: when the last job
  started (for a drain, when the queue emptied);
- CPU and memory use while pending: allocated / capacity, integrated over the intervals
  in which at least one job is queued, divided by their length;
- fragmentation: after an instant, a queued job whose request fits in the cluster's
  total free room (CPU and memory) but on no single node (free CPU, memory and a
  parallel slot). ``jobs``: distinct jobs ever in that condition; ``events``: how many
  times a queued job entered it (again after leaving it); ``time_share``: the share of
  the pending time during which some job was in it;
- reserved idle: free CPU on nodes that hold a reservation of a queued job
  (``job.reservation.node_id``), integrated over time, as a share of all CPU time
  (total CPU x makespan). A reservation is noticed when its job's record changes: every
  change to a job joins the change set the simulator takes.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.models import Job, JobResources, JobSpec, RegisterRequest, Report, Resources
from common.states import JobState
from scheduler.config import SchedulerConfig
from scheduler.state import State

#: the simulated clock's time 0 (epoch seconds): any fixed time would do
T0 = 1_700_000_000.0
#: every job is submitted by one owner, so the fair-share order is submission order
OWNER = "bench"
IMAGE = "busybox"
#: how many parallel jobs a node takes: more than any workload puts on one node
MAX_PARALLEL = 64
#: heartbeat interval and node TTL: longer than any simulated span (about 3 years)
NEVER_S = 1e8
#: passes run back to back at one instant while each one asks for another, at most
MAX_PASSES_PER_INSTANT = 8
#: a request fits a free amount up to this slack (the scheduler's own is smaller)
_SLACK = 1e-9

#: wait figures are given overall and for these classes of job size: CPUs from low to
#: below high
SIZE_CLASSES: dict[str, tuple[float, float]] = {
    "<16": (0.0, 16.0),
    "16-31": (16.0, 32.0),
    "32-47": (32.0, 48.0),
    "48": (48.0, math.inf),
    "16+": (16.0, math.inf),
}


@dataclass(slots=True, frozen=True)
class NodePlan:
    """A node of the simulated cluster."""

    name: str
    cpu: float
    memory_mb: int


@dataclass(slots=True, frozen=True)
class JobPlan:
    """A job of a workload: when it arrives, what it asks for, how long it really runs,
    and what its submitter says about that."""

    arrival_s: float
    cpu: float
    memory_mb: int
    runtime_s: float
    expected_runtime_s: float
    timeout_s: float


@dataclass(slots=True)
class _Run:
    """What the simulator knows of one job as it goes."""

    plan: JobPlan
    job: Job
    started_s: float | None = None
    ended_s: float | None = None
    fragmented: bool = False


class _Shape:
    """Queued jobs of one request (cpu, memory_mb), split by whether they are counted in
    the shape's current spell of fragmentation; index -> its Job, in arrival order."""

    __slots__ = ("counted", "fresh")

    def __init__(self) -> None:
        self.fresh: dict[int, Job] = {}
        self.counted: dict[int, Job] = {}

    def __len__(self) -> int:
        return len(self.fresh) + len(self.counted)

    def remove(self, i: int) -> None:
        if self.fresh.pop(i, None) is None:
            del self.counted[i]


@dataclass(slots=True)
class Integrals:
    """Time integrals over the run (seconds, or resource-seconds)."""

    #: time with at least one job queued
    pending_s: float = 0.0
    #: allocated CPU and memory integrated over the pending time
    cpu_pending: float = 0.0
    memory_pending: float = 0.0
    #: allocated CPU integrated over the whole run
    cpu_all: float = 0.0
    #: free CPU on nodes holding a reservation, integrated over the whole run
    reserved_idle_cpu: float = 0.0
    #: pending time during which some queued job was fragmented
    fragmented_s: float = 0.0


@dataclass(slots=True)
class _Snapshot:
    """What holds from one instant to the next."""

    pending: bool = False
    cpu: float = 0.0
    memory: float = 0.0
    reserved_idle_cpu: float = 0.0
    fragmented: bool = False


@dataclass(slots=True)
class Outcome:
    """The raw result of one simulation; :func:`figures` summarises it."""

    nodes: Sequence[NodePlan]
    jobs: Sequence[JobPlan]
    #: per job, in the order of ``jobs``: when it started and ended (None: never)
    started_s: list[float | None]
    ended_s: list[float | None]
    integrals: Integrals
    fragmented_jobs: int
    fragmentation_events: int
    passes: int
    instants: int
    wall_s: float


class SimClock:
    """The state's clock: moves only when the simulation says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def new_state(clock: SimClock, seed: int, overrides: Mapping[str, Any]) -> State:
    """A State as the scheduler makes it, with ``overrides`` on the default settings,
    kept healthy without heartbeats."""
    settings: dict[str, Any] = {
        "heartbeat_interval_s": NEVER_S,
        "node_ttl_s": NEVER_S,
        "restart_grace_s": 0.0,
        "preemption": False,
    }
    settings.update(overrides)
    return State(SchedulerConfig(**settings), clock=clock, rng=random.Random(seed))


def spec_of(plan: JobPlan) -> JobSpec:
    return JobSpec(
        image=IMAGE,
        resources=JobResources(cpu=plan.cpu, memory_mb=plan.memory_mb),
        timeout_s=plan.timeout_s,
        expected_runtime_s=plan.expected_runtime_s,
    )


# Event kinds, in the order they are handled at one instant: ends free room first.
_END = 0
_ARRIVAL = 1


class Simulation:
    """One workload on one cluster under one set of scheduler settings."""

    def __init__(
        self,
        nodes: Sequence[NodePlan],
        jobs: Sequence[JobPlan],
        *,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 1,
    ) -> None:
        self.nodes = list(nodes)
        self.jobs = list(jobs)
        self.clock = SimClock()
        self.state = new_state(self.clock, seed, overrides or {})
        self.sweep_s = self.state.config.sweep_interval_s
        self.total_cpu = sum(n.cpu for n in nodes)
        self.total_memory = float(sum(n.memory_mb for n in nodes))
        self._runs: list[_Run | None] = [None] * len(jobs)
        self._by_id: dict[str, int] = {}
        #: queued jobs by request (cpu, memory_mb)
        self._queued: dict[tuple[float, int], _Shape] = {}
        self._queued_count = 0
        #: queued jobs seen with a reservation: id -> Job
        self._reserved: dict[str, Job] = {}
        self._running = 0
        self._events: list[tuple[float, int, int]] = []
        self._seen: dict[str, int] = {}
        self._wanted = False
        self._last_pass = -math.inf
        self._stuck = False
        self._now = 0.0
        self._snap = _Snapshot()
        self.integrals = Integrals()
        self.passes = 0
        self.instants = 0
        self.fragmentation_events = 0

    # --- the run -----------------------------------------------------------------------

    def run(self) -> Outcome:
        started = time.perf_counter()
        for node in self.nodes:
            self.state.register(
                RegisterRequest(
                    name=node.name,
                    capacity=Resources(cpu=node.cpu, memory_mb=node.memory_mb),
                    max_parallel=MAX_PARALLEL,
                )
            )
        self._commit()
        for i, job in enumerate(self.jobs):
            heapq.heappush(self._events, (job.arrival_s, _ARRIVAL, i))
        while True:
            at = self._next_instant()
            if at is None:
                break
            self._advance(at)
            self._instant()
        runs = self._runs
        return Outcome(
            nodes=self.nodes,
            jobs=self.jobs,
            started_s=[r.started_s if r else None for r in runs],
            ended_s=[r.ended_s if r else None for r in runs],
            integrals=self.integrals,
            fragmented_jobs=sum(1 for r in runs if r is not None and r.fragmented),
            fragmentation_events=self.fragmentation_events,
            passes=self.passes,
            instants=self.instants,
            wall_s=time.perf_counter() - started,
        )

    def _next_instant(self) -> float | None:
        """The next event's time, or the next sweep's while jobs wait and something may
        still change; None when the run is over (or nothing can ever start)."""
        at = self._events[0][0] if self._events else math.inf
        if self._queued_count and (self._events or self._running):
            at = min(at, max(self._now, self._last_pass + self.sweep_s))
        elif self._queued_count and not self._stuck:
            # Nothing runs and nothing arrives: one more sweep, in case time alone helps.
            self._stuck = True
            at = max(self._now, self._last_pass + self.sweep_s)
        return None if at == math.inf else at

    def _advance(self, at: float) -> None:
        """Integrate what held since the last instant, then move the clock to ``at``."""
        span = at - self._now
        snap, acc = self._snap, self.integrals
        if span > 0:
            acc.cpu_all += snap.cpu * span
            acc.reserved_idle_cpu += snap.reserved_idle_cpu * span
            if snap.pending:
                acc.pending_s += span
                acc.cpu_pending += snap.cpu * span
                acc.memory_pending += snap.memory * span
                if snap.fragmented:
                    acc.fragmented_s += span
        self._now = at
        self.clock.now = T0 + at

    def _instant(self) -> None:
        """Handle every event due now, commit, place as the service would, and take the
        snapshot that holds until the next instant."""
        self.instants += 1
        events = self._events
        while events and events[0][0] <= self._now:
            _at, kind, i = heapq.heappop(events)
            if kind == _END:
                self._end(i)
            else:
                self._arrive(i)
        self._commit()
        for _ in range(MAX_PASSES_PER_INSTANT):
            due = self._queued_count and self._now >= self._last_pass + self.sweep_s - _SLACK
            if not (self._wanted or due):
                break
            self._wanted = False
            self._last_pass = self._now
            self.state.place()
            self.passes += 1
            self._commit()
        self._snapshot()

    # --- what the service and the agents do ----------------------------------------------

    def _arrive(self, i: int) -> None:
        plan = self.jobs[i]
        job, _created = self.state.submit(spec_of(plan), submitted_by=OWNER)
        self._runs[i] = _Run(plan, job)
        self._by_id[job.id] = i
        shape = self._queued.get((plan.cpu, plan.memory_mb))
        if shape is None:
            shape = self._queued[(plan.cpu, plan.memory_mb)] = _Shape()
        shape.fresh[i] = job
        self._queued_count += 1

    def _end(self, i: int) -> None:
        run = self._runs[i]
        assert run is not None
        job = run.job
        assert job.node_id is not None
        self.state.report(job.node_id, job.id, Report(attempt=job.attempt, state="completed"))
        run.ended_s = self._now
        self._running -= 1

    def _commit(self) -> None:
        """Take the change set as the service's commit does, then let woken nodes fetch
        their assignments and start them."""
        state = self.state
        changes = state.take_changes()
        effects = state.take_effects()
        if changes.events:
            state.events.committed(changes.events, changes.events[-1].index)
        for job in changes.jobs.values():
            if job.state is JobState.QUEUED and getattr(job, "reservation", None) is not None:
                self._reserved[job.id] = job
        self._wanted |= effects.placement_wanted
        for node_id in sorted(effects.wake_nodes):
            assignments, top = state.pending_assignments(node_id, self._seen.get(node_id, 0))
            self._seen[node_id] = top
            for a in assignments:
                self._start(node_id, a.job_id, a.attempt)

    def _start(self, node_id: str, job_id: str, attempt: int) -> None:
        i = self._by_id[job_id]
        run = self._runs[i]
        assert run is not None
        self.state.report(node_id, job_id, Report(attempt=attempt, state="running"))
        if run.started_s is None:
            run.started_s = self._now
            self._queued[(run.plan.cpu, run.plan.memory_mb)].remove(i)
            self._queued_count -= 1
            self._running += 1
            heapq.heappush(self._events, (self._now + run.plan.runtime_s, _END, i))

    # --- measuring -----------------------------------------------------------------------

    def _snapshot(self) -> None:
        """Read the nodes and the queued jobs as the state has them now."""
        nodes = self.state.nodes
        free: list[tuple[float, float, int]] = []
        cpu = memory = 0.0
        for node in nodes.values():
            cap, res, alloc = node.capacity, node.reserved, node.allocated
            cpu += alloc.cpu
            memory += alloc.memory_mb
            slots = node.max_parallel - len(node.running_jobs) - len(node.releasing)
            free.append(
                (
                    cap.cpu - res.cpu - alloc.cpu,
                    cap.memory_mb - res.memory_mb - alloc.memory_mb,
                    slots,
                )
            )
        snap = _Snapshot(
            pending=self._queued_count > 0,
            cpu=cpu / self.total_cpu,
            memory=memory / self.total_memory,
        )
        if snap.pending:
            snap.fragmented = self._fragmentation(free)
            snap.reserved_idle_cpu = self._reserved_idle_cpu()
        self._snap = snap

    def _reserved_idle_cpu(self) -> float:
        """Free CPU on the nodes that hold a reservation of a queued job."""
        nodes = self.state.nodes
        reserved: set[str] = set()
        for job_id, job in list(self._reserved.items()):
            reservation = getattr(job, "reservation", None)
            if job.state is not JobState.QUEUED or reservation is None:
                del self._reserved[job_id]
            else:
                reserved.add(reservation.node_id)
        idle = 0.0
        for node_id in reserved:
            node = nodes.get(node_id)
            if node is not None:
                free = node.capacity.cpu - node.reserved.cpu - node.allocated.cpu
                idle += max(0.0, free)
        return idle

    def _fragmentation(self, free: list[tuple[float, float, int]]) -> bool:
        """Count queued jobs that enter the condition of fitting the cluster's total free
        room but no single node; whether some job is in it now."""
        total_cpu = sum(f[0] for f in free)
        total_memory = sum(f[1] for f in free)
        found = False
        for (cpu, memory), shape in self._queued.items():
            if not len(shape):
                continue
            fragmented = (
                cpu <= total_cpu + _SLACK
                and memory <= total_memory
                and not any(c >= cpu - _SLACK and m >= memory and n >= 1 for c, m, n in free)
            )
            if not fragmented:
                if shape.counted:
                    # The spell ended: its jobs count again if they enter it again.
                    shape.fresh.update(shape.counted)
                    shape.counted.clear()
                continue
            found = True
            if shape.fresh:
                self.fragmentation_events += len(shape.fresh)
                for i in shape.fresh:
                    run = self._runs[i]
                    assert run is not None
                    run.fragmented = True
                shape.counted.update(shape.fresh)
                shape.fresh.clear()
        return found


# --- figures -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def wait_figures(waits: Sequence[float]) -> dict[str, float | int]:
    return {
        "jobs": len(waits),
        "mean_s": round(sum(waits) / len(waits), 3) if waits else 0.0,
        "p50_s": round(percentile(waits, 50), 3),
        "p99_s": round(percentile(waits, 99), 3),
        "max_s": round(max(waits), 3) if waits else 0.0,
    }


def work_bound(nodes: Sequence[NodePlan], jobs: Sequence[JobPlan]) -> float:
    """No schedule ends before the total CPU work fits on all CPUs, nor before any job
    can have run once it arrived: max(sum(cpu x runtime) / total CPU,
    max(arrival + runtime))."""
    total_cpu = sum(n.cpu for n in nodes)
    work = sum(j.cpu * j.runtime_s for j in jobs)
    return max(work / total_cpu, max((j.arrival_s + j.runtime_s for j in jobs), default=0.0))


def figures(outcome: Outcome) -> dict[str, Any]:
    """The figures of one simulation, as plain JSON values."""
    jobs = outcome.jobs
    acc = outcome.integrals
    waits_by: dict[str, list[float]] = {"all": [], **{name: [] for name in SIZE_CLASSES}}
    for plan, started in zip(jobs, outcome.started_s, strict=True):
        if started is None:
            continue
        wait = started - plan.arrival_s
        waits_by["all"].append(wait)
        for name, (low, high) in SIZE_CLASSES.items():
            if low <= plan.cpu < high:
                waits_by[name].append(wait)
    ends = [e for e in outcome.ended_s if e is not None]
    starts = [s for s in outcome.started_s if s is not None]
    makespan = max(ends, default=0.0)
    bound = work_bound(outcome.nodes, jobs)
    total_cpu = sum(n.cpu for n in outcome.nodes)
    all_cpu_s = total_cpu * makespan
    return {
        "jobs": len(jobs),
        "unfinished": len(jobs) - len(ends),
        "makespan_s": round(makespan, 3),
        "lower_bound_s": round(bound, 3),
        "makespan_ratio": round(makespan / bound, 4) if bound else None,
        "last_start_s": round(max(starts, default=0.0), 3),
        "wait": {name: wait_figures(w) for name, w in waits_by.items()},
        "pending_s": round(acc.pending_s, 3),
        "cpu_use_while_pending": _share(acc.cpu_pending, acc.pending_s),
        "memory_use_while_pending": _share(acc.memory_pending, acc.pending_s),
        "cpu_use": _share(acc.cpu_all, makespan),
        "fragmentation": {
            "jobs": outcome.fragmented_jobs,
            "events": outcome.fragmentation_events,
            "time_share": _share(acc.fragmented_s, acc.pending_s),
        },
        "reserved_idle_cpu_h": round(acc.reserved_idle_cpu / 3600, 4),
        "reserved_idle_share": _share(acc.reserved_idle_cpu, all_cpu_s),
        "passes": outcome.passes,
        "instants": outcome.instants,
        "wall_s": round(outcome.wall_s, 3),
    }


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 5) if whole > 0 else None
