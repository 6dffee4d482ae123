"""The scheduler's in-memory state, driven through its public methods with a fake clock."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from typing import Any

import pytest

from common.codec import decode, encode
from common.errors import Conflict, NotFound, StaleAttempt
from common.models import (
    Command,
    Constraints,
    HeartbeatRequest,
    Job,
    JobResources,
    JobSpec,
    Node,
    NodeMetrics,
    Progress,
    RegisterRequest,
    Report,
    Resources,
    RunningAttempt,
)
from common.states import ON_NODE, JobState, NodeState, can_transition
from scheduler.config import SchedulerConfig
from scheduler.placement import REASON_NO_ELIGIBLE
from scheduler.state import LOG_CAP_BYTES, LOG_TRUNCATED_MARKER, State
from scheduler.store.base import Loaded

T0 = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_cluster(clock: FakeClock, **settings: Any) -> State:
    # A fresh State counts as a restart (``booted`` is taken at construction), so the
    # restart grace is off unless a test asks for it.
    settings.setdefault("restart_grace_s", 0.0)
    return State(SchedulerConfig(**settings), clock=clock, rng=random.Random(1))


def job_spec(cpu: float = 1.0, memory_mb: int = 256, **fields: Any) -> JobSpec:
    return JobSpec(image="busybox", resources=JobResources(cpu=cpu, memory_mb=memory_mb), **fields)


def register(
    c: State,
    name: str = "n1",
    *,
    cpu: float = 4.0,
    memory_mb: int = 8192,
    max_parallel: int = 4,
    **fields: Any,
) -> Node:
    node, _token = c.register(
        RegisterRequest(
            name=name,
            capacity=Resources(cpu=cpu, memory_mb=memory_mb),
            max_parallel=max_parallel,
            **fields,
        )
    )
    return node


def submit(c: State, cpu: float = 1.0, memory_mb: int = 256, **fields: Any) -> Job:
    job, created = c.submit(job_spec(cpu, memory_mb, **fields), submitted_by="alice")
    assert created
    return job


def beat(c: State, node: Node, *running: tuple[Job, int] | Job) -> list[Command]:
    """A heartbeat from ``node`` listing the given jobs (current attempt) or (job, attempt)."""
    listed = []
    for item in running:
        job, attempt = item if isinstance(item, tuple) else (item, item.attempt)
        listed.append(RunningAttempt(job_id=job.id, attempt=attempt))
    return c.heartbeat(node.id, HeartbeatRequest(running=listed))


def report(
    c: State, job: Job, state: str | None, *, node: Node | None = None, **fields: Any
) -> Job:
    """The agent's report for the job's current attempt on its current node."""
    node_id = node.id if node is not None else job.node_id
    assert node_id is not None
    fields.setdefault("attempt", job.attempt)
    return c.report(node_id, job.id, Report(state=state, **fields))  # type: ignore[arg-type]


def start(c: State, *jobs: Job) -> None:
    """Place the queued jobs and have their agents report them running."""
    c.place()
    for job in jobs:
        assert job.state is JobState.ASSIGNED, job.reason
        report(c, job, "running")


def loaded_from(c: State) -> Loaded:
    """What a store would give back after a restart: copies of the records, not the objects."""
    return Loaded(
        jobs=[decode(encode(j), Job) for j in c.jobs.values()],
        nodes=[decode(encode(n), Node) for n in c.nodes.values()],
        idempotency=dict(c.idempotency),
        tokens=list(c.tokens),
        last_index=c.events.last_index,
        log_ends=dict(c.log_ends),
    )


def assert_no_overcommit(c: State) -> None:
    """Allocations add up, never exceed what a node offers, and slots are respected."""
    for node in c.nodes.values():
        held = {(h.job_id, h.attempt): h.resources for h in node.releasing}
        on_node = [c.jobs[j] for j in node.running_jobs]
        assert all(j.state in ON_NODE and j.node_id == node.id for j in on_node)
        want_cpu = sum(j.spec.resources.cpu for j in on_node) + sum(r.cpu for r in held.values())
        want_mem = sum(j.spec.resources.memory_mb for j in on_node) + sum(
            r.memory_mb for r in held.values()
        )
        assert node.allocated.cpu == pytest.approx(want_cpu, abs=1e-6)
        assert node.allocated.memory_mb == want_mem
        assert node.allocated.cpu <= node.capacity.cpu - node.reserved.cpu + 1e-6
        assert node.allocated.memory_mb <= node.capacity.memory_mb - node.reserved.memory_mb
        assert node.allocated.gpus <= node.capacity.gpus - node.reserved.gpus
        assert len(node.running_jobs) + len(held) <= node.max_parallel
    for job in c.jobs.values():
        if job.state in ON_NODE:
            assert job.node_id is not None
            assert node_jobs(c, job.node_id).count(job.id) == 1


def node_jobs(c: State, node_id: str) -> list[str]:
    return c.nodes[node_id].running_jobs


def event_types(c: State, job: Job) -> list[tuple[str, Any]]:
    return [(e.type, (e.data or {}).get("state")) for e in c.changes.events if e.job_id == job.id]


# --- the happy path ----------------------------------------------------------------------


def test_submitted_job_is_assigned_runs_and_completes_freeing_its_allocation(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c, cpu=1.5, memory_mb=1024)
    assert job.state is JobState.QUEUED
    assert job.id in c.queue

    assert c.place() == [node.id]
    assert job.state is JobState.ASSIGNED
    assert job.node_id == node.id
    assert job.attempt == 1
    assert job.id not in c.queue
    assert node.allocated == Resources(cpu=1.5, memory_mb=1024)
    assert node.running_jobs == [job.id]
    assert node.state is NodeState.BUSY

    # An assignment is handed out only once it is durable.
    assert c.pending_assignments(node.id, 0) == ([], 0)
    c.events.committed(list(c.changes.events), c.changes.events[-1].index)
    assignments, top = c.pending_assignments(node.id, 0)
    assert [(a.job_id, a.attempt, a.spec) for a in assignments] == [(job.id, 1, job.spec)]
    assert top == job.index
    # Already handed out: a poll from that index gets nothing new.
    assert c.pending_assignments(node.id, top) == ([], top)

    clock.advance(2)
    report(c, job, "running")
    assert job.state is JobState.RUNNING
    assert job.started_at is not None and job.started_at.timestamp() == clock.now
    assert c.pending_assignments(node.id, 0)[0] == []

    clock.advance(3)
    report(c, job, "completed", exit_code=0)
    assert job.state is JobState.COMPLETED
    assert job.exit_code == 0
    assert job.finished_at is not None and job.finished_at.timestamp() == clock.now
    assert node.allocated == Resources()
    assert node.running_jobs == []
    assert node.state is NodeState.IDLE
    assert event_types(c, job) == [
        ("job.created", None),
        ("job.state", "assigned"),
        ("job.state", "running"),
        ("job.state", "completed"),
    ]


def test_a_job_that_fits_nowhere_waits_with_a_reason(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=2.0)
    job = submit(c, cpu=3.0)
    assert c.place() == []
    assert job.state is JobState.QUEUED
    assert c.shown(job).reason == "0/1 nodes are available: 1 lacks CPU (needs 3 cores)"
    assert job.pending == {"cpu": 1}


def test_a_job_waits_when_no_node_is_registered(clock: FakeClock) -> None:
    c = new_cluster(clock)
    job = submit(c)
    assert c.place() == []
    assert c.shown(job).reason == REASON_NO_ELIGIBLE
    assert job.reason == REASON_NO_ELIGIBLE
    node = register(c)
    assert c.place() == [node.id]
    assert c.shown(job).reason is None


def test_reserved_resources_are_not_given_to_jobs(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=4.0, memory_mb=4096, reserved=Resources(cpu=1.0, memory_mb=1024))
    big = submit(c, cpu=3.5)
    fits = submit(c, cpu=3.0, memory_mb=3072)
    c.place()
    assert big.state is JobState.QUEUED
    assert fits.state is JobState.ASSIGNED


def test_progress_report_updates_the_job_and_records_an_event(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    job = submit(c)
    start(c, job)
    report(c, job, None, progress=Progress(45.0, "Searching the index"))
    assert job.state is JobState.RUNNING
    assert job.progress == Progress(45.0, "Searching the index")
    assert c.changes.events[-1].type == "job.progress"
    assert job.index == c.changes.events[-1].index
    report(c, job, "completed", exit_code=0)
    assert job.progress == Progress(100.0, "Searching the index")


def test_a_failure_reported_before_running_still_ends_the_job(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    c.place()
    report(c, job, "failed", exit_code=None, error="image not found", infra_failure=True)
    assert job.state is JobState.FAILED
    assert job.error == "image not found"
    assert node.allocated == Resources()


def test_an_oom_kill_is_given_as_the_reason(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    job = submit(c)
    start(c, job)
    report(c, job, "failed", exit_code=137, oom_killed=True)
    assert job.state is JobState.FAILED
    assert job.reason == "out of memory"


def test_a_job_exiting_non_zero_fails_with_its_exit_code(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    job = submit(c)
    start(c, job)
    report(c, job, "failed", exit_code=3)
    assert job.state is JobState.FAILED
    assert job.exit_code == 3
    assert job.reason == "exit code 3"
    assert job.error == "exit code 3"


def test_an_agent_reported_timeout_ends_the_job_timed_out(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    report(c, job, "timed_out", exit_code=-9)
    assert job.state is JobState.TIMED_OUT
    assert job.reason == "timed out"
    assert node.allocated == Resources()


def test_unknown_job_and_node_are_not_found(clock: FakeClock) -> None:
    c = new_cluster(clock)
    with pytest.raises(NotFound):
        c.job("nope")
    with pytest.raises(NotFound):
        c.node("nope")
    with pytest.raises(NotFound):
        c.heartbeat("nope", HeartbeatRequest())


# --- node liveness -----------------------------------------------------------------------


def test_offline_node_requeues_its_running_jobs_with_the_next_attempt(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=10.0)
    node = register(c)
    job = submit(c)  # no retries: a loss the job did not cause does not spend them
    start(c, job)

    clock.advance(9)
    c.check_liveness()
    assert node.state is NodeState.BUSY
    assert job.state is JobState.RUNNING

    clock.advance(2)
    c.check_liveness()
    assert node.state is NodeState.OFFLINE
    assert node.reason == "no heartbeat for 10s"
    assert job.state is JobState.QUEUED
    assert job.attempt == 2
    assert job.node_id is None
    assert job.reason == f"requeued 1/3: lost: node {node.name} went offline"
    assert job.retries == 0 and job.requeues == 1
    assert node.id in job.failed_nodes
    assert [(a.attempt, a.state, a.node_id) for a in job.attempts] == [
        (1, JobState.FAILED, node.id)
    ]
    assert node.allocated == Resources()
    assert node.running_jobs == []
    node_events = [e for e in c.changes.events if e.node_id == node.id and e.type == "node.state"]
    assert node_events[-1].data is not None
    assert node_events[-1].data["state"] == "offline"
    assert node_events[-1].data["reason"] == "no heartbeat for 10s"


def test_offline_node_fails_its_jobs_when_requeues_are_spent(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=10.0)
    node = register(c)
    job = submit(c, max_retries=5, max_requeues=0)
    start(c, job)
    clock.advance(11)
    c.check_liveness()
    assert node.state is NodeState.OFFLINE
    assert job.state is JobState.FAILED
    assert job.attempt == 1 and job.retries == 0
    assert job.error == (
        f"lost: node {node.name} went offline (requeued 0 times already, the job's max_requeues)"
    )
    assert job.error_code == "requeue_limit"
    assert job.finished_at is not None


def test_a_job_lost_again_and_again_is_requeued_up_to_its_max_requeues(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock, node_ttl_s=10.0)
    job = submit(c, max_requeues=2)
    for lost in range(3):
        node = register(c, name=f"n{lost}")
        start(c, job)
        clock.advance(11)
        c.check_liveness()
    assert job.state is JobState.FAILED and job.requeues == 2 and job.attempt == 3
    assert [a.state for a in job.attempts] == [JobState.FAILED, JobState.FAILED]
    assert node.name in (job.error or "")


def test_offline_node_also_loses_jobs_not_yet_started(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=10.0)
    node = register(c)
    job = submit(c)
    c.place()
    assert job.state is JobState.ASSIGNED
    clock.advance(11)
    c.check_liveness()
    assert job.state is JobState.QUEUED and job.attempt == 2
    assert node.allocated == Resources()


def test_heartbeats_keep_a_node_online(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=10.0)
    node = register(c)
    job = submit(c)
    start(c, job)
    for _ in range(10):
        clock.advance(5)
        assert beat(c, node, job) == []
        c.check_liveness()
    assert node.state is NodeState.BUSY
    assert job.state is JobState.RUNNING


def test_a_late_node_is_unhealthy_and_gets_no_new_jobs(clock: FakeClock) -> None:
    c = new_cluster(clock, heartbeat_interval_s=5.0, node_ttl_s=60.0)
    node = register(c)
    clock.advance(16)
    c.check_liveness()
    assert node.state is NodeState.UNHEALTHY
    assert node.reason == "heartbeat late"
    job = submit(c)
    assert c.place() == []
    assert c.shown(job).reason == "0/1 nodes are available: 1 unhealthy"
    beat(c, node)
    assert node.state is NodeState.IDLE
    assert c.place() == [node.id]


def test_a_node_back_from_offline_is_told_to_cancel_its_lost_attempts(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=10.0)
    node = register(c)
    job = submit(c, max_retries=1)
    start(c, job)
    clock.advance(11)
    c.check_liveness()
    assert node.state is NodeState.OFFLINE

    commands = beat(c, node, (job, 1))
    assert node.state is NodeState.IDLE
    assert node.reason is None
    assert [(cmd.action, cmd.job_id, cmd.attempt) for cmd in commands] == [("cancel", job.id, 1)]


def test_node_gets_the_restart_grace_after_a_load(clock: FakeClock) -> None:
    settings = {"node_ttl_s": 10.0, "restart_grace_s": 60.0}
    c = new_cluster(clock, **settings)
    node = register(c)
    job = submit(c, max_retries=1)
    start(c, job)
    # The node was last heard from at T0; the scheduler comes back 5 s later.
    clock.advance(5)
    restarted = new_cluster(clock, **settings)
    restarted.load(loaded_from(c))
    assert restarted.booted == clock.now
    node2 = restarted.nodes[node.id]
    job2 = restarted.jobs[job.id]
    # Allocations are rebuilt from the jobs.
    assert node2.allocated == Resources(cpu=1.0, memory_mb=256)
    assert node2.running_jobs == [job.id]

    # Well past the TTL, but within the grace counted from the restart.
    clock.advance(50)
    restarted.check_liveness()
    assert node2.state is not NodeState.OFFLINE
    assert job2.state is JobState.RUNNING

    clock.advance(11)  # boot + 61
    restarted.check_liveness()
    assert node2.state is NodeState.OFFLINE
    assert job2.state is JobState.QUEUED
    assert job2.attempt == 2


def test_a_node_heard_from_after_a_restart_keeps_its_place(clock: FakeClock) -> None:
    settings = {"node_ttl_s": 10.0, "restart_grace_s": 60.0}
    c = new_cluster(clock, **settings)
    node = register(c)
    job = submit(c)
    start(c, job)
    clock.advance(5)
    restarted = new_cluster(clock, **settings)
    restarted.load(loaded_from(c))
    job2 = restarted.jobs[job.id]
    node2 = restarted.nodes[node.id]
    for _ in range(20):
        clock.advance(5)
        assert beat(restarted, node2, job2) == []
        restarted.check_liveness()
    assert node2.state is NodeState.BUSY
    assert job2.state is JobState.RUNNING


def test_load_restores_queue_counts_and_event_index(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=1.0)
    running = submit(c)
    waiting = submit(c)
    start(c, running)
    done = submit(c, cpu=0.5)
    restarted = new_cluster(clock)
    restarted.load(loaded_from(c))
    assert set(restarted.queue) == {waiting.id, done.id}
    assert restarted.counts[JobState.RUNNING] == 1
    assert restarted.counts[JobState.QUEUED] == 2
    assert restarted.events.last_index == c.events.last_index
    newer = submit(restarted)
    assert newer.id > done.id
    assert restarted.changes.events[0].index == c.events.last_index + 1


def test_a_running_job_missing_from_two_heartbeats_is_lost_and_requeued(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c, max_retries=1)
    start(c, job)
    beat(c, node)
    assert job.state is JobState.RUNNING
    beat(c, node)
    assert job.state is JobState.QUEUED
    assert job.attempt == 2
    assert node.allocated == Resources()
    assert node.infra_failures == 1


def test_an_assigned_job_not_yet_listed_by_its_agent_is_not_lost(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    c.place()
    for _ in range(5):
        beat(c, node)
    assert job.state is JobState.ASSIGNED


# --- job timeouts enforced by the scheduler -------------------------------------------------


def test_a_silent_agents_job_is_timed_out_after_timeout_plus_grace(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1000.0, timeout_grace_s=5.0)
    node = register(c)
    job = submit(c, timeout_s=60.0)
    start(c, job)

    clock.advance(65)
    c.check_liveness()
    assert job.state is JobState.RUNNING

    clock.advance(0.5)
    c.check_liveness()
    assert job.state is JobState.TIMED_OUT
    assert job.error == "timed out after 60s (enforced by the scheduler)"
    assert job.finished_at is not None
    # The container may still run: its resources stay held until the agent lets go.
    assert node.allocated == Resources(cpu=1.0, memory_mb=256)
    commands = beat(c, node, job)
    assert [(cmd.action, cmd.job_id, cmd.attempt) for cmd in commands] == [("cancel", job.id, 1)]
    assert node.allocated == Resources(cpu=1.0, memory_mb=256)
    assert beat(c, node) == []
    assert node.allocated == Resources()


def test_a_job_never_started_times_out_from_its_assignment(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1000.0, timeout_grace_s=5.0)
    register(c)
    job = submit(c, timeout_s=10.0)
    c.place()
    clock.advance(15.5)
    c.check_liveness()
    assert job.state is JobState.TIMED_OUT


def test_a_scheduler_timeout_with_retries_left_requeues_the_job(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1000.0, timeout_grace_s=5.0)
    node = register(c)
    job = submit(c, timeout_s=10.0, max_retries=1)
    start(c, job)
    clock.advance(16)
    c.check_liveness()
    assert job.state is JobState.QUEUED
    assert job.attempt == 2
    assert job.attempts[-1].state is JobState.TIMED_OUT
    # The first attempt's resources are still held for its possibly running container.
    assert node.allocated == Resources(cpu=1.0, memory_mb=256)
    # The agent reports the old attempt's end: the scheduler lets go of it.
    report(c, job, "timed_out", node=node, attempt=1)
    assert node.allocated == Resources()
    assert job.state is JobState.QUEUED


# --- cooldown after infrastructure failures ------------------------------------------------


def infra_fail(c: State, job: Job) -> None:
    report(c, job, "failed", error="docker: cannot start container", infra_failure=True)


def test_consecutive_infra_failures_put_a_node_in_growing_cooldown(clock: FakeClock) -> None:
    c = new_cluster(clock, cooldown_threshold=2, cooldown_base_s=10.0, cooldown_max_s=1000.0)
    node = register(c)

    first = submit(c)
    c.place()
    infra_fail(c, first)
    assert node.infra_failures == 1
    assert node.cooldown_until is None
    assert node.state is NodeState.IDLE

    second = submit(c)
    c.place()
    infra_fail(c, second)
    assert node.infra_failures == 2
    assert node.cooldown_until is not None
    assert node.cooldown_until.timestamp() == clock.now + 10.0
    assert node.state is NodeState.UNHEALTHY
    assert node.reason is not None and "cooldown" in node.reason

    # Placement avoids the node until the cooldown ends.
    third = submit(c)
    assert c.place() == []
    assert c.shown(third).reason == "0/1 nodes are available: 1 in cooldown"
    clock.advance(9.5)
    beat(c, node)
    c.check_liveness()
    assert c.place() == []
    clock.advance(1)
    beat(c, node)
    c.check_liveness()
    assert node.state is NodeState.IDLE
    assert c.place() == [node.id]

    # The count is not reset by time: the next failure doubles the cooldown.
    infra_fail(c, third)
    assert node.infra_failures == 3
    assert node.cooldown_until is not None
    assert node.cooldown_until.timestamp() == clock.now + 20.0

    fourth = submit(c)
    clock.advance(21)
    beat(c, node)
    c.check_liveness()
    c.place()
    infra_fail(c, fourth)
    assert node.cooldown_until is not None
    assert node.cooldown_until.timestamp() == clock.now + 40.0


def test_cooldown_is_capped(clock: FakeClock) -> None:
    c = new_cluster(clock, cooldown_threshold=1, cooldown_base_s=10.0, cooldown_max_s=25.0)
    node = register(c)
    for expected in (10.0, 20.0, 25.0, 25.0):
        job = submit(c)
        clock.advance(30)
        beat(c, node)
        c.check_liveness()
        c.place()
        infra_fail(c, job)
        assert node.cooldown_until is not None
        assert node.cooldown_until.timestamp() == clock.now + expected


def test_placement_uses_another_node_while_one_is_in_cooldown(clock: FakeClock) -> None:
    c = new_cluster(clock, cooldown_threshold=1, cooldown_base_s=60.0)
    bad = register(c, "bad")
    good = register(c, "good", cpu=8.0)
    c.drain(good.id, True, "keep jobs on bad for now")
    job = submit(c)
    c.place()
    assert job.node_id == bad.id
    infra_fail(c, job)
    c.drain(good.id, False, "")
    jobs = [submit(c) for _ in range(3)]
    c.place()
    assert {j.node_id for j in jobs} == {good.id}


def test_a_jobs_own_non_zero_exit_does_not_count_and_resets_the_count(clock: FakeClock) -> None:
    c = new_cluster(clock, cooldown_threshold=2, cooldown_base_s=10.0)
    node = register(c)
    first = submit(c)
    c.place()
    infra_fail(c, first)
    assert node.infra_failures == 1

    own = submit(c)
    start(c, own)
    report(c, own, "failed", exit_code=1)
    assert own.state is JobState.FAILED
    assert node.infra_failures == 0
    assert node.cooldown_until is None

    again = submit(c)
    c.place()
    infra_fail(c, again)
    assert node.infra_failures == 1
    assert node.cooldown_until is None
    assert node.state is NodeState.IDLE


def test_a_healthy_run_ends_a_cooldown_early(clock: FakeClock) -> None:
    c = new_cluster(clock, cooldown_threshold=2, cooldown_base_s=600.0)
    node = register(c, max_parallel=3)
    a, b, ok = submit(c), submit(c), submit(c)
    c.place()
    assert {a.state, b.state, ok.state} == {JobState.ASSIGNED}
    report(c, ok, "running")
    infra_fail(c, a)
    infra_fail(c, b)
    assert node.state is NodeState.UNHEALTHY
    waiting = submit(c)
    assert c.place() == []

    report(c, ok, "completed", exit_code=0)
    assert node.infra_failures == 0
    assert node.cooldown_until is None
    assert node.state is NodeState.IDLE
    assert c.place() == [node.id]
    assert waiting.state is JobState.ASSIGNED


def test_an_executor_error_in_a_heartbeat_makes_the_node_unhealthy(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    c.heartbeat(node.id, HeartbeatRequest(executor_error="dockerd does not answer"))
    assert node.state is NodeState.UNHEALTHY
    assert node.reason == "executor error: dockerd does not answer"
    job = submit(c)
    assert c.place() == []
    beat(c, node)
    assert node.state is NodeState.IDLE
    c.place()
    assert job.state is JobState.ASSIGNED


# --- fencing -------------------------------------------------------------------------------


def test_a_report_for_a_stale_attempt_is_refused(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c, max_retries=1)
    start(c, job)
    report(c, job, "failed", exit_code=1)
    assert job.state is JobState.QUEUED
    assert job.attempt == 2

    with pytest.raises(StaleAttempt) as info:
        c.report(node.id, job.id, Report(attempt=1, state="completed", exit_code=0))
    assert info.value.status == 409
    assert info.value.details["current_attempt"] == 2

    clock.advance(10)
    c.place()
    assert job.state is JobState.ASSIGNED
    with pytest.raises(StaleAttempt):
        c.report(node.id, job.id, Report(attempt=1, state="running"))
    assert job.state is JobState.ASSIGNED


def test_a_report_from_another_node_is_refused(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, "a")
    job = submit(c)
    start(c, job)
    other = register(c, "b")
    with pytest.raises(StaleAttempt):
        c.report(other.id, job.id, Report(attempt=1, state="completed"))
    with pytest.raises(StaleAttempt):
        c.report(other.id, "no-such-job", Report(attempt=1, state="completed"))
    assert job.state is JobState.RUNNING


def test_a_heartbeat_listing_a_stale_attempt_gets_a_cancel_command(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c, max_retries=1)
    start(c, job)
    report(c, job, "failed", exit_code=1)
    commands = beat(c, node, (job, 1))
    assert commands == [Command("cancel", job.id, 1, "attempt is no longer current")]


def test_a_heartbeat_listing_a_cancelled_attempt_gets_a_cancel_command(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.cancel(job.id, by="alice")
    commands = beat(c, node, job)
    assert commands == [Command("cancel", job.id, 1, "cancelled by alice")]


def test_a_heartbeat_listing_an_unknown_job_gets_a_cancel_command(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    commands = c.heartbeat(
        node.id, HeartbeatRequest(running=[RunningAttempt(job_id="ghost", attempt=3)])
    )
    assert [(cmd.action, cmd.job_id, cmd.attempt) for cmd in commands] == [("cancel", "ghost", 3)]


def test_a_heartbeat_listing_current_attempts_gets_no_commands(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    jobs = [submit(c) for _ in range(3)]
    start(c, *jobs)
    assert beat(c, node, *jobs) == []


# --- cancel --------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(clock: FakeClock) -> None:
    c = new_cluster(clock)
    job = submit(c)
    c.cancel(job.id, by="alice")
    assert job.state is JobState.CANCELLED
    assert job.reason == "cancelled by alice"
    assert job.id not in c.queue
    assert job.finished_at is not None
    node = register(c)
    assert c.place() == []
    assert node.allocated == Resources()


def test_cancel_of_an_ended_job_is_a_conflict(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    job = submit(c)
    start(c, job)
    report(c, job, "completed", exit_code=0)
    with pytest.raises(Conflict):
        c.cancel(job.id, by="alice")
    assert job.state is JobState.COMPLETED
    with pytest.raises(NotFound):
        c.cancel("nope", by="alice")


def test_cancel_of_a_running_job_holds_its_resources_until_the_agent_stops_it(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node = register(c, cpu=2.0, max_parallel=2)
    job = submit(c, cpu=2.0)
    start(c, job)
    c.cancel(job.id, by="alice")
    assert job.state is JobState.CANCELLED

    big = submit(c, cpu=2.0)
    assert c.place() == []
    assert node.allocated == Resources(cpu=2.0, memory_mb=256)

    # The agent still runs it: still held.
    beat(c, node, job)
    assert c.place() == []
    assert big.state is JobState.QUEUED

    # The agent no longer lists it: free.
    beat(c, node)
    assert node.allocated == Resources()
    assert c.place() == [node.id]
    assert big.state is JobState.ASSIGNED


def test_a_cancelled_report_releases_a_cancelled_jobs_resources(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.cancel(job.id, by="alice")
    assert node.allocated == Resources(cpu=1.0, memory_mb=256)
    after = report(c, job, "cancelled", node=node, exit_code=-15)
    assert after is job
    assert job.state is JobState.CANCELLED
    assert node.allocated == Resources()


def test_a_held_attempt_takes_a_parallel_slot(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c, max_parallel=1)
    job = submit(c, cpu=0.5)
    start(c, job)
    c.cancel(job.id, by="alice")
    small = submit(c, cpu=0.5)
    assert c.place() == []
    beat(c, node)
    assert c.place() == [node.id]
    assert small.state is JobState.ASSIGNED


def test_the_agent_cancelling_on_its_own_ends_the_job(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    report(c, job, "cancelled", error="agent shut down")
    assert job.state is JobState.CANCELLED
    assert job.reason == "agent shut down"
    assert node.allocated == Resources()


# --- drain ---------------------------------------------------------------------------------


def test_a_draining_node_takes_no_new_jobs_but_finishes_its_running_ones(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node = register(c)
    running = submit(c)
    start(c, running)

    c.drain(node.id, True, "kernel upgrade")
    assert node.draining
    drain_event = c.changes.events[-1]
    assert drain_event.type == "node.state"
    assert drain_event.data is not None
    assert drain_event.data["draining"] is True
    assert drain_event.data["reason"] == "kernel upgrade"

    waiting = submit(c)
    assert c.place() == []
    assert waiting.state is JobState.QUEUED
    assert c.shown(waiting).reason == "0/1 nodes are available: 1 draining"

    report(c, running, "completed", exit_code=0)
    assert running.state is JobState.COMPLETED
    assert c.place() == []

    c.drain(node.id, False, "")
    assert not node.draining
    assert c.place() == [node.id]
    assert waiting.state is JobState.ASSIGNED


def test_drain_of_an_unknown_node_is_not_found(clock: FakeClock) -> None:
    c = new_cluster(clock)
    with pytest.raises(NotFound):
        c.drain("nope", True, "")


# --- automatic retries ---------------------------------------------------------------------


def test_an_automatic_retry_waits_for_its_backoff(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c, max_retries=2, retry_delay_s=10.0, retry_max_delay_s=100.0)
    start(c, job)
    report(c, job, "failed", exit_code=1)
    assert job.state is JobState.QUEUED
    assert job.reason == "retry 1: exit code 1"
    assert job.not_before is not None
    wait = job.not_before.timestamp() - clock.now
    assert 10.0 <= wait < 15.0

    assert c.place() == []
    assert c.shown(job).reason == "waiting to retry"
    assert c.check_liveness() is False

    clock.advance(wait)
    beat(c, node)
    assert c.check_liveness() is True
    assert c.place() == [node.id]
    assert job.state is JobState.ASSIGNED
    assert job.attempt == 2
    assert job.not_before is None


def test_retry_backoff_doubles_and_is_capped(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    node = register(c)
    job = submit(c, max_retries=4, retry_delay_s=10.0, retry_max_delay_s=30.0)
    waits = []
    for _ in range(4):
        start(c, job)
        report(c, job, "failed", exit_code=1)
        assert job.not_before is not None
        waits.append(job.not_before.timestamp() - clock.now)
        clock.advance(100)
        beat(c, node)
    assert 10.0 <= waits[0] < 15.0
    assert 20.0 <= waits[1] < 30.0
    assert 30.0 <= waits[2] < 45.0
    assert 30.0 <= waits[3] < 45.0
    start(c, job)
    report(c, job, "failed", exit_code=1)
    assert job.state is JobState.FAILED
    assert job.attempt == 5
    assert job.retries == 4
    assert [a.attempt for a in job.attempts] == [1, 2, 3, 4]


def test_a_retried_job_avoids_the_node_where_it_failed(clock: FakeClock) -> None:
    c = new_cluster(clock)
    a = register(c, "a")
    b = register(c, "b")
    job = submit(c, max_retries=1)
    start(c, job)
    failed_on = job.node_id
    report(c, job, "failed", exit_code=1)
    assert list(job.failed_nodes) == [failed_on]
    clock.advance(2)
    c.place()
    assert job.state is JobState.ASSIGNED
    assert job.node_id == ({a.id, b.id} - {failed_on}).pop()


def test_a_retried_job_returns_to_the_failed_node_when_nothing_else_fits(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    a = register(c, "a", cpu=4.0)
    register(c, "b", cpu=1.0)
    job = submit(c, cpu=3.0, max_retries=1)
    start(c, job)
    assert job.node_id == a.id
    report(c, job, "failed", exit_code=1)
    clock.advance(2)
    c.place()
    assert job.node_id == a.id
    assert job.attempt == 2


# --- idempotent submit ---------------------------------------------------------------------


def test_a_submit_with_a_known_idempotency_key_returns_the_same_job(clock: FakeClock) -> None:
    c = new_cluster(clock)
    spec = job_spec()
    first, created = c.submit(spec, submitted_by="alice", idempotency_key="k1")
    assert created
    again, created = c.submit(spec, submitted_by="alice", idempotency_key="k1")
    assert not created
    assert again is first
    assert len(c.jobs) == 1
    assert c.changes.idempotency == [("alice:k1", first.id)]

    # Keys are scoped by submitter, and no key means a new job every time.
    other, created = c.submit(spec, submitted_by="bob", idempotency_key="k1")
    assert created and other.id != first.id
    plain1, _ = c.submit(spec, submitted_by="alice")
    plain2, _ = c.submit(spec, submitted_by="alice")
    assert len({first.id, other.id, plain1.id, plain2.id}) == 4


def test_an_idempotency_key_survives_a_restart(clock: FakeClock) -> None:
    c = new_cluster(clock)
    first, _ = c.submit(job_spec(), submitted_by="alice", idempotency_key="k1")
    restarted = new_cluster(clock)
    restarted.load(loaded_from(c))
    again, created = restarted.submit(job_spec(), submitted_by="alice", idempotency_key="k1")
    assert not created
    assert again.id == first.id


def test_job_ids_are_unique_and_increase_with_submission(clock: FakeClock) -> None:
    c = new_cluster(clock)
    ids = [submit(c).id for _ in range(50)]
    clock.advance(1)
    ids += [submit(c).id for _ in range(50)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


# --- logs ----------------------------------------------------------------------------------


def test_log_append_is_resumable_and_drops_duplicate_bytes(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    assert c.append_log(node.id, job.id, 1, 0, b"hello") == 5
    # A retry of a batch that partly arrived: only the new bytes are stored.
    assert c.append_log(node.id, job.id, 1, 0, b"hello world") == 11
    # A pure duplicate changes nothing.
    assert c.append_log(node.id, job.id, 1, 5, b" world") == 11
    assert [(ch.offset, ch.data) for ch in c.changes.logs] == [(0, b"hello"), (5, b" world")]
    assert c.append_log(node.id, job.id, 1, 11, b"!") == 12


def test_a_log_append_past_the_end_is_a_conflict_naming_the_offset(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.append_log(node.id, job.id, 1, 0, b"abc")
    with pytest.raises(Conflict) as info:
        c.append_log(node.id, job.id, 1, 10, b"xyz")
    assert info.value.details == {"offset": 3}
    assert c.append_log(node.id, job.id, 1, 3, b"xyz") == 6


def test_a_log_is_capped_with_a_visible_marker(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    near = LOG_CAP_BYTES - 3
    assert c.append_log(node.id, job.id, 1, 0, b"x" * near) == near
    end = c.append_log(node.id, job.id, 1, near, b"abcdef")
    assert end == LOG_CAP_BYTES + len(LOG_TRUNCATED_MARKER)
    assert c.changes.logs[-1].data == b"abc" + LOG_TRUNCATED_MARKER
    chunks = len(c.changes.logs)
    assert c.append_log(node.id, job.id, 1, end, b"more") == end
    assert len(c.changes.logs) == chunks


def test_logs_of_each_attempt_are_kept_apart(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c, max_retries=1)
    start(c, job)
    c.append_log(node.id, job.id, 1, 0, b"first")
    report(c, job, "failed", exit_code=1)
    # A late batch of the ended attempt is still accepted from the node that ran it.
    assert c.append_log(node.id, job.id, 1, 5, b" late") == 10
    clock.advance(2)
    start(c, job)
    assert c.append_log(node.id, job.id, 2, 0, b"second") == 6


def test_a_log_append_from_a_node_that_did_not_run_the_attempt_is_refused(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    register(c, "a")
    job = submit(c)
    start(c, job)
    other = register(c, "b")
    with pytest.raises(StaleAttempt):
        c.append_log(other.id, job.id, 1, 0, b"x")
    with pytest.raises(StaleAttempt):
        c.append_log(job.node_id or "", job.id, 2, 0, b"x")
    with pytest.raises(StaleAttempt):
        c.append_log(other.id, "ghost", 1, 0, b"x")


# --- events --------------------------------------------------------------------------------


def _exercise(c: State, clock: FakeClock) -> None:
    """A bit of everything: submits, placements, reports, cancels, retries, a lost node."""
    a = register(c, "a", max_parallel=3)
    b = register(c, "b", max_parallel=3)
    jobs = [submit(c, cpu=0.5, max_retries=1) for _ in range(8)]
    c.place()
    placed = [j for j in jobs if j.state is JobState.ASSIGNED]
    for job in placed:
        report(c, job, "running")
    report(c, placed[0], None, progress=Progress(10.0, "warming up"))
    report(c, placed[0], "completed", exit_code=0)
    report(c, placed[1], "failed", exit_code=2)
    c.cancel(placed[2].id, by="alice")
    c.cancel(jobs[-1].id, by="alice")
    c.drain(b.id, True, "maintenance")
    clock.advance(5)
    beat(c, a, *[j for j in placed if j.node_id == a.id and j.state is JobState.RUNNING])
    clock.advance(31)
    c.check_liveness()
    c.drain(b.id, False, "")
    c.register(RegisterRequest(name="a", capacity=Resources(cpu=4.0)), replace=True)
    clock.advance(100)
    beat(c, a)
    c.check_liveness()
    c.place()


def test_every_change_has_a_strictly_increasing_event_index(clock: FakeClock) -> None:
    c = new_cluster(clock)
    _exercise(c, clock)
    indexes = [e.index for e in c.changes.events]
    assert len(indexes) > 20
    assert all(x < y for x, y in itertools.pairwise(indexes))
    assert indexes == list(range(1, len(indexes) + 1))
    assert c.events.last_index == indexes[-1]


def test_a_jobs_index_is_the_index_of_its_last_event(clock: FakeClock) -> None:
    c = new_cluster(clock)
    _exercise(c, clock)
    last: dict[str, int] = {}
    for e in c.changes.events:
        if e.job_id is not None:
            last[e.job_id] = e.index
    assert set(last) == set(c.jobs)
    for job in c.jobs.values():
        assert job.index == last[job.id], job.id
        assert c.changes.jobs[job.id] is job


def test_a_nodes_index_is_the_index_of_its_last_event(clock: FakeClock) -> None:
    c = new_cluster(clock)
    _exercise(c, clock)
    last: dict[str, int] = {}
    for e in c.changes.events:
        if e.node_id is not None:
            last[e.node_id] = e.index
    for node in c.nodes.values():
        assert node.index == last[node.id]


def test_every_job_state_event_is_a_legal_transition(clock: FakeClock) -> None:
    c = new_cluster(clock)
    _exercise(c, clock)
    seen: dict[str, JobState] = {}
    for e in c.changes.events:
        if e.type == "job.created":
            assert e.job_id is not None
            seen[e.job_id] = JobState.QUEUED
        elif e.type == "job.state":
            assert e.job_id is not None and e.data is not None
            old, new = JobState(e.data["from"]), JobState(e.data["state"])
            assert seen[e.job_id] is old
            assert can_transition(old, new)
            seen[e.job_id] = new
    assert seen == {j.id: j.state for j in c.jobs.values()}


def test_take_changes_hands_over_what_changed_and_starts_afresh(clock: FakeClock) -> None:
    c = new_cluster(clock)
    job = submit(c)
    changes = c.take_changes()
    assert changes
    assert changes.jobs == {job.id: job}
    assert [e.type for e in changes.events] == ["job.created"]
    assert not c.take_changes()


# --- capacity ------------------------------------------------------------------------------


def _drive(c: State, clock: FakeClock, rng: random.Random, steps: int) -> None:
    nodes = [
        register(c, f"n{i}", cpu=cpu, memory_mb=mem, max_parallel=par)
        for i, (cpu, mem, par) in enumerate([(4.0, 4096, 3), (2.0, 8192, 8), (1.0, 1024, 2)])
    ]
    for _ in range(steps):
        for _ in range(rng.randint(0, 15)):
            submit(
                c,
                cpu=rng.choice([0.1, 0.2, 0.25, 0.5, 1.0, 1.5, 3.0]),
                memory_mb=rng.choice([64, 128, 512, 1000, 2048]),
                max_retries=rng.randint(0, 2),
                retry_delay_s=0.5,
            )
        c.place()
        assert_no_overcommit(c)
        for job in list(c.jobs.values()):
            if job.state is JobState.ASSIGNED and rng.random() < 0.7:
                report(c, job, "running")
            elif job.state is JobState.RUNNING:
                roll = rng.random()
                if roll < 0.3:
                    report(c, job, "completed", exit_code=0)
                elif roll < 0.4:
                    report(c, job, "failed", exit_code=1, infra_failure=rng.random() < 0.3)
                elif roll < 0.45:
                    c.cancel(job.id, by="alice")
            elif job.state is JobState.QUEUED and rng.random() < 0.02:
                c.cancel(job.id, by="alice")
        assert_no_overcommit(c)
        clock.advance(rng.choice([0.5, 2.0, 5.0]))
        for node in nodes:
            listed = [
                j
                for j in c.jobs.values()
                if j.node_id == node.id and j.state in (JobState.RUNNING, JobState.PAUSED)
            ]
            beat(c, node, *listed)
        c.check_liveness()
        assert_no_overcommit(c)


@pytest.mark.parametrize("seed", range(8))
def test_capacity_is_never_over_committed(clock: FakeClock, seed: int) -> None:
    c = State(
        SchedulerConfig(restart_grace_s=0.0, cooldown_base_s=3.0),
        clock=clock,
        rng=random.Random(seed),
    )
    _drive(c, clock, random.Random(seed), steps=60)
    assert any(j.state is JobState.COMPLETED for j in c.jobs.values())


def test_many_jobs_on_few_nodes_fill_them_exactly_once(clock: FakeClock) -> None:
    c = new_cluster(clock)
    nodes = [register(c, f"n{i}", cpu=2.0, memory_mb=2048, max_parallel=10) for i in range(3)]
    jobs = [submit(c, cpu=0.5, memory_mb=256) for _ in range(100)]
    c.place()
    c.place()
    assigned = [j for j in jobs if j.state is JobState.ASSIGNED]
    # 2 cores / 0.5 = 4 jobs per node.
    assert len(assigned) == 12
    for node in nodes:
        assert node.allocated == Resources(cpu=2.0, memory_mb=1024)
    assert_no_overcommit(c)
    # FIFO within a priority: the first twelve submitted got the places.
    assert assigned == jobs[:12]


def test_higher_priority_jobs_are_placed_first(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=1.0)
    low = submit(c, priority=10)
    high = submit(c, priority=90)
    c.place()
    assert high.state is JobState.ASSIGNED
    assert low.state is JobState.QUEUED


def test_placement_respects_label_constraints(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, "plain")
    gpu = register(c, "gpu", labels={"gpu": "a100"})
    job = submit(c, constraints=Constraints(labels={"gpu": "a100"}))
    c.place()
    assert job.node_id == gpu.id


# --- registration and stats ----------------------------------------------------------------


def test_registering_the_same_name_with_its_token_keeps_the_node_and_the_token(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node, token1 = c.register(RegisterRequest(name="w", capacity=Resources(cpu=1.0)))
    again, token2 = c.register(
        RegisterRequest(name="w", capacity=Resources(cpu=2.0), node_token=token1)
    )
    assert again is node
    assert node.capacity.cpu == 2.0
    assert token2 == token1
    row = c.authenticate(token1)
    assert row is not None and row.node_id == node.id


def test_registering_a_registered_name_without_its_token_is_refused(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node, token = c.register(RegisterRequest(name="w", capacity=Resources(cpu=1.0)))
    c.take_changes()
    with pytest.raises(Conflict) as refused:
        c.register(RegisterRequest(name="w", capacity=Resources(cpu=9.0)))
    assert refused.value.details == {"field": "$.node_token"}
    assert node.capacity.cpu == 1.0 and not c.take_changes()
    assert c.authenticate(token) is not None


def test_an_admin_replacing_a_node_gets_a_new_token_and_the_old_one_stops(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node, token1 = c.register(RegisterRequest(name="w", capacity=Resources(cpu=1.0)))
    again, token2 = c.register(RegisterRequest(name="w", capacity=Resources(cpu=2.0)), replace=True)
    assert again is node and token2 != token1
    assert c.authenticate(token1) is None
    row = c.authenticate(token2)
    assert row is not None and row.node_id == node.id


def test_stats_count_jobs_and_nodes_and_sum_capacity(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, "a", cpu=4.0, memory_mb=4096, reserved=Resources(cpu=1.0, memory_mb=1024))
    register(c, "b", cpu=2.0, memory_mb=2048)
    running = submit(c, cpu=1.0, memory_mb=512)
    start(c, running)
    submit(c, cpu=100.0)
    stats = c.stats()
    assert stats["jobs"]["running"] == 1
    assert stats["jobs"]["queued"] == 1
    assert sum(stats["jobs"].values()) == 2
    assert stats["queue_depth"] == 1
    assert stats["capacity"] == Resources(cpu=5.0, memory_mb=5120)
    assert stats["allocated"] == Resources(cpu=1.0, memory_mb=512)
    assert stats["nodes"] == {"idle": 1, "busy": 1, "unhealthy": 0, "offline": 0}


def test_live_free_memory_limits_placement(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c, memory_mb=8192)
    c.heartbeat(
        node.id,
        HeartbeatRequest(metrics=NodeMetrics(ram_total_mb=8192, ram_free_mb=300)),
    )
    job = submit(c, memory_mb=512)
    assert c.place() == []
    c.heartbeat(
        node.id,
        HeartbeatRequest(metrics=NodeMetrics(ram_total_mb=8192, ram_free_mb=4000)),
    )
    assert c.place() == [node.id]
    assert job.state is JobState.ASSIGNED


def _ids(jobs: Iterable[Job]) -> list[str]:
    return [j.id for j in jobs]


def test_iter_jobs_lists_newest_first_and_filters_by_state(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=1.0)
    first, second, third = submit(c), submit(c), submit(c)
    c.place()
    assert _ids(c.iter_jobs(None, None)) == [third.id, second.id, first.id]
    assert _ids(c.iter_jobs(JobState.QUEUED, None)) == [third.id, second.id]
    assert _ids(c.iter_jobs(None, third.id)) == [second.id, first.id]


# --- as the service runs it: changes are taken (committed) after every step ----------------


def test_an_ended_job_is_still_found_after_its_changes_are_taken(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    c.take_changes()
    start(c, job)
    c.take_changes()
    report(c, job, "completed", exit_code=0)
    changes = c.take_changes()
    assert changes.jobs[job.id].state is JobState.COMPLETED
    ended = c.job(job.id)
    assert ended.state is JobState.COMPLETED
    assert ended.exit_code == 0
    assert ended.index == changes.events[-1].index
    assert node.allocated == Resources()
    assert [j.id for j in c.iter_jobs(JobState.COMPLETED, None)] == [job.id]
    with pytest.raises(Conflict):
        c.cancel(job.id, by="alice")


def test_an_idempotent_submit_finds_an_ended_job(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    job, _ = c.submit(job_spec(), submitted_by="alice", idempotency_key="k")
    start(c, job)
    report(c, job, "completed", exit_code=0)
    c.take_changes()
    again, created = c.submit(job_spec(), submitted_by="alice", idempotency_key="k")
    assert not created
    assert again.id == job.id
    assert again.state is JobState.COMPLETED


def test_a_heartbeat_listing_a_cancelled_and_committed_attempt_gets_its_reason(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.cancel(job.id, by="alice")
    c.take_changes()
    assert beat(c, node, (job, 1)) == [Command("cancel", job.id, 1, "cancelled by alice")]
    assert node.allocated == Resources(cpu=1.0, memory_mb=256)
    c.take_changes()
    assert beat(c, node) == []
    assert node.allocated == Resources()


def test_late_logs_of_a_committed_ended_job_are_accepted(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.append_log(node.id, job.id, 1, 0, b"out")
    report(c, job, "completed", exit_code=0)
    c.take_changes()
    assert c.append_log(node.id, job.id, 1, 3, b"put") == 6


def test_event_indexes_keep_increasing_across_taken_batches(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    seen: list[int] = []
    last: dict[str, int] = {}
    for _ in range(5):
        job = submit(c)
        start(c, job)
        report(c, job, "completed", exit_code=0)
        for e in c.take_changes().events:
            seen.append(e.index)
            if e.job_id is not None:
                last[e.job_id] = e.index
    assert seen == list(range(1, len(seen) + 1))
    for job_id, index in last.items():
        assert c.job(job_id).index == index
