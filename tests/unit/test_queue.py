"""The queue: dependencies, concurrency groups, reservations and pending reasons."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidRequest
from common.models import Job
from common.states import ON_NODE, JobState
from scheduler.config import SchedulerConfig
from scheduler.state import State
from tests.unit.test_cluster import (
    FakeClock,
    beat,
    job_spec,
    loaded_from,
    new_cluster,
    register,
    report,
    start,
    submit,
)


def finish(c: State, job: Job, state: str = "completed", **fields: object) -> None:
    if job.state is JobState.ASSIGNED:
        report(c, job, "running")
    report(c, job, state, **fields)


# --- dependencies --------------------------------------------------------------------------


def test_a_job_waits_on_its_dependencies_then_runs(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, max_parallel=1)
    first = submit(c)
    second = submit(c, depends_on=[first.id])
    c.place()
    assert first.state is JobState.ASSIGNED
    assert second.state is JobState.QUEUED
    assert second.reason == f"waiting_on: {first.id}"
    finish(c, first)
    c.place()
    assert second.state is JobState.ASSIGNED


def test_a_diamond_runs_its_join_only_after_both_branches(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, max_parallel=4)
    top = submit(c)
    left = submit(c, depends_on=[top.id])
    right = submit(c, depends_on=[top.id])
    join = submit(c, depends_on=[left.id, right.id])
    c.place()
    assert [j.state for j in (top, left, right, join)] == [JobState.ASSIGNED] + [
        JobState.QUEUED
    ] * 3
    finish(c, top)
    c.place()
    assert left.state is right.state is JobState.ASSIGNED
    finish(c, left)
    c.place()
    assert join.state is JobState.QUEUED and join.reason == f"waiting_on: {right.id}"
    finish(c, right)
    c.place()
    assert join.state is JobState.ASSIGNED


def test_a_failed_dependency_fails_the_chain_behind_it(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    first = submit(c)
    second = submit(c, depends_on=[first.id])
    third = submit(c, depends_on=[second.id])
    c.place()
    finish(c, first, "failed", exit_code=2)
    c.place()
    assert second.state is JobState.FAILED
    assert second.reason == f"dependency_failed: job {first.id} did not complete"
    c.place()
    failed_third = c.find(third.id)
    assert failed_third is not None and failed_third.state is JobState.FAILED


def test_a_dependency_with_retries_left_is_not_a_failure_yet(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    first = submit(c, max_retries=1)
    second = submit(c, depends_on=[first.id])
    c.place()
    finish(c, first, "failed", exit_code=1)
    assert first.state is JobState.QUEUED
    c.place()
    assert second.state is JobState.QUEUED


def test_depending_on_an_unknown_job_is_refused_naming_the_field(clock: FakeClock) -> None:
    c = new_cluster(clock)
    known = submit(c)
    with pytest.raises(InvalidRequest) as e:
        c.submit(job_spec(depends_on=[known.id, "nope"]), submitted_by="alice")
    assert e.value.details["field"] == "$.depends_on[1]"
    assert len(c.jobs) == 1


# --- concurrency groups --------------------------------------------------------------------


def test_a_group_never_runs_more_than_its_limit(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=16, max_parallel=16)
    jobs = [submit(c, group="etl", group_max_concurrent=2) for _ in range(5)]
    other = submit(c)
    c.place()
    assert [j.state for j in jobs].count(JobState.ASSIGNED) == 2
    assert other.state is JobState.ASSIGNED
    assert jobs[2].reason == "group_limit: group etl runs its limit of 2"
    finish(c, jobs[0])
    c.place()
    assert [j.state for j in jobs[1:]].count(JobState.ASSIGNED) == 2
    c.set_group_limit("etl", 4)
    c.place()
    assert [j.state for j in jobs[1:]].count(JobState.ASSIGNED) == 4
    assert c.groups()["etl"] == {"max_concurrent": 4, "active": 4, "queued": 0}


def test_only_the_first_job_of_a_group_sets_its_limit(clock: FakeClock) -> None:
    c = new_cluster(clock)
    submit(c, group="g", group_max_concurrent=1)
    submit(c, group="g", group_max_concurrent=9)
    assert c.group_limits == {"g": 1}


# --- backfill around reservations -------------------------------------------------------


def test_a_big_job_reserves_the_node_and_only_jobs_that_end_before_it_backfill(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    node = register(c, cpu=4, max_parallel=8)
    running = submit(c, cpu=2, expected_runtime_s=600)
    c.place()
    start(c, running)
    big = submit(c, cpu=4)
    short = submit(c, cpu=1, expected_runtime_s=300)
    long = submit(c, cpu=1, expected_runtime_s=900)
    c.place()
    assert big.state is JobState.QUEUED
    assert big.reservation is not None and big.reservation.node_id == node.id
    assert big.reservation.start is not None
    assert big.reservation.start.timestamp() == pytest.approx(clock.now + 600, abs=1)
    assert big.reason is not None and big.reason.startswith(f"reserved: node {node.name} from ")
    # Ends before the reservation starts: it may use the free core now.
    assert short.state is JobState.ASSIGNED
    # Would still run when the big job is due: it waits, and says so.
    assert long.state is JobState.QUEUED
    assert long.reason == "0/1 nodes are available: 1 reserved for an earlier job"
    finish(c, running)
    finish(c, short)
    c.place()
    assert big.state is JobState.ASSIGNED and big.reservation is None
    assert long.state is JobState.QUEUED


def test_a_job_that_fits_beside_the_reserved_one_backfills_whatever_its_length(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    register(c, cpu=8, max_parallel=8)
    running = submit(c, cpu=6, expected_runtime_s=600)
    c.place()
    big = submit(c, cpu=4)
    beside = submit(c, cpu=2, expected_runtime_s=3000)
    c.place()
    assert big.reservation is not None
    # At the reservation's start 8 cores are free: 4 for the big job, 4 beside it.
    assert beside.state is JobState.ASSIGNED
    finish(c, running)
    c.place()
    assert big.state is JobState.ASSIGNED


def test_only_the_first_jobs_that_fit_nowhere_get_reservations(clock: FakeClock) -> None:
    c = new_cluster(clock, reservations=1)
    register(c, "a", cpu=4, max_parallel=8)
    register(c, "b", cpu=4, max_parallel=8)
    for _ in range(2):
        submit(c, cpu=3)
    c.place()
    first = submit(c, cpu=4, priority=60)
    second = submit(c, cpu=4, memory_mb=512)
    c.place()
    assert first.reservation is not None
    assert second.reservation is None
    assert second.reason == "0/2 nodes are available: 2 lack CPU (needs 4 cores)"


def test_without_reservations_small_jobs_keep_a_big_one_waiting(clock: FakeClock) -> None:
    c = new_cluster(clock, reservations=0)
    register(c, cpu=4, max_parallel=8)
    running = submit(c, cpu=3)
    c.place()
    big = submit(c, cpu=4)
    small = submit(c, cpu=1)
    c.place()
    assert big.reservation is None and small.state is JobState.ASSIGNED
    assert big.reason == "0/1 nodes are available: 1 lacks CPU (needs 4 cores)"
    assert running.state is JobState.ASSIGNED


def test_a_reservation_moves_to_the_job_first_in_queue_order(clock: FakeClock) -> None:
    c = new_cluster(clock, reservations=1)
    register(c, cpu=4, max_parallel=8)
    submit(c, cpu=3)
    c.place()
    low = submit(c, cpu=4, priority=10)
    c.place()
    assert low.reservation is not None
    high = submit(c, cpu=4, priority=90)
    c.place()
    assert high.reservation is not None and low.reservation is None
    assert low.reason == "0/1 nodes are available: 1 lacks CPU (needs 4 cores)"


def test_higher_priority_goes_first_and_fifo_within_a_priority(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, max_parallel=1)
    low = submit(c, priority=10)
    mid_a = submit(c, priority=50)
    mid_b = submit(c, priority=50)
    high = submit(c, priority=90)
    order = []
    for _ in range(4):
        c.place()
        placed = next(j for j in (low, mid_a, mid_b, high) if j.state is JobState.ASSIGNED)
        order.append(placed)
        finish(c, placed)
    assert order == [high, mid_a, mid_b, low]


# --- properties under random workloads -----------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    limit=st.integers(1, 3),
    steps=st.integers(5, 40),
)
def test_random_workloads_keep_group_limits_and_priority_order(
    seed: int, limit: int, steps: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    c = State(SchedulerConfig(restart_grace_s=0.0), clock=clock, rng=rng)
    for i in range(3):
        register(c, f"n{i}", cpu=4, memory_mb=8192, max_parallel=4)
    for _ in range(steps):
        for _ in range(rng.randint(0, 4)):
            submit(
                c,
                cpu=rng.choice([0.5, 1.0, 2.0, 4.0]),
                priority=rng.choice([10, 50, 90]),
                group=rng.choice([None, "g"]),
                group_max_concurrent=limit,
            )
        queued_before = sorted(
            (j for j in c.jobs.values() if j.state is JobState.QUEUED),
            key=lambda j: (-j.spec.priority, j.id),
        )
        c.place()
        # A group never has more than its limit on nodes.
        on_nodes = [j for j in c.jobs.values() if j.state in ON_NODE]
        assert sum(1 for j in on_nodes if j.spec.group == "g") <= limit
        # No job went ahead of an earlier one (by priority, then age) of the same shape
        # that was free to go: the earlier one would have fitted wherever it went.
        still = [j for j in queued_before if j.state is JobState.QUEUED]
        for placed in (j for j in queued_before if j.state is JobState.ASSIGNED):
            for waiting in still:
                ahead = (-waiting.spec.priority, waiting.id) < (-placed.spec.priority, placed.id)
                free = waiting.spec.group is None and waiting.spec.depends_on == []
                same = waiting.spec.resources == placed.spec.resources
                assert not (ahead and free and same), (waiting.reason, placed.id)
        for j in on_nodes:
            if rng.random() < 0.5:
                finish(c, j)
        clock.advance(10)
        for node in c.nodes.values():
            beat(c, node, *(c.jobs[j] for j in node.running_jobs))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_big_job_is_placed_soon_under_a_stream_of_small_ones(seed: int) -> None:
    """Without a reservation, small jobs arriving all the time would keep a whole-node
    job waiting for ever; with one, the reserved node takes no job that would still run
    when the big one is due, so it drains and the big job runs."""
    rng = random.Random(seed)
    clock = FakeClock()
    bound = 30.0
    c = State(SchedulerConfig(restart_grace_s=0.0), clock=clock, rng=rng)
    nodes = [register(c, f"n{i}", cpu=4, memory_mb=8192, max_parallel=8) for i in range(2)]
    ages: dict[str, int] = {}
    big: Job | None = None
    for step in range(40):
        for _ in range(rng.randint(2, 4)):
            submit(c, cpu=1.0)
        if step == 2:
            big = submit(c, cpu=4.0)
        c.place()
        assert (
            big is None
            or big.state is not JobState.QUEUED
            or clock.now - big.created_at.timestamp() <= bound + 40
        ), "the big job starved"
        # Every small job runs for one to three steps.
        for j in [j for j in c.jobs.values() if j.state in ON_NODE]:
            ages[j.id] = ages.get(j.id, 0) + 1
            if j is not big and (ages[j.id] >= 3 or rng.random() < 0.3):
                finish(c, j)
        clock.advance(10)
        for node in nodes:
            beat(c, node, *(c.jobs[j] for j in node.running_jobs))
    assert big is not None and big.state is not JobState.QUEUED


def test_a_reservation_counts_the_jobs_placed_earlier_in_the_same_pass(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c, cpu=4, max_parallel=8)
    first = submit(c, cpu=2, priority=90, expected_runtime_s=100)
    big = submit(c, cpu=4, priority=50)
    c.place()
    assert first.state is JobState.ASSIGNED and first.node_id == node.id
    # The node was empty when the pass began; the big job can start only once the job
    # placed just before it ends.
    assert big.reservation is not None and big.reservation.start is not None
    assert big.reservation.start.timestamp() == pytest.approx(clock.now + 100, abs=1)


def test_a_reservation_whose_start_slips_a_little_is_not_told_again(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c, cpu=4, max_parallel=8)
    running = submit(c, cpu=4, expected_runtime_s=10)
    c.place()
    start(c, running)
    big = submit(c, cpu=4)
    c.place()
    told = big.reservation
    assert told is not None
    # The running job overran its estimate: the room is expected "now", every pass.
    for _ in range(5):
        clock.advance(11)
        beat(c, node, running)
        c.take_changes()
        c.place()
        assert big.reservation is told
        assert not [e for e in c.take_changes().events if e.job_id == big.id]
    clock.advance(60)
    beat(c, node, running)
    c.place()
    assert big.reservation is not told


def test_a_reservation_loaded_at_a_restart_is_made_anew_or_dropped(clock: FakeClock) -> None:
    c = new_cluster(clock, reservations=1)
    register(c, cpu=4, max_parallel=8)
    submit(c, cpu=3)
    c.place()
    big = submit(c, cpu=4)
    c.place()
    assert big.reservation is not None
    # The restarted scheduler reserves nothing; the job loaded with one says so.
    again = new_cluster(clock, reservations=0)
    again.load(loaded_from(c))
    loaded = again.jobs[big.id]
    assert loaded.reservation is not None
    again.place()
    assert loaded.reservation is None
    assert loaded.reason is not None and not loaded.reason.startswith("reserved")
