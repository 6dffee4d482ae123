"""Regression tests: held resources, restarts, lost attempts and start failures."""

from __future__ import annotations

from common.models import Resources
from common.states import JobState
from tests.unit.test_cluster import (
    FakeClock,
    beat,
    loaded_from,
    new_cluster,
    register,
    report,
    start,
    submit,
)


def test_a_cancelled_report_releases_resources_after_the_cancel_was_committed() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.cancel(job.id, by="alice")
    c.take_changes()  # what the service does after every commit
    assert node.allocated == Resources(cpu=1.0, memory_mb=256)
    # The job is archived by now; its end must still free what was held.
    after = report(c, job, "cancelled", node=node, exit_code=-15)
    assert after.state is JobState.CANCELLED
    assert node.allocated == Resources()


def test_a_timed_out_report_releases_resources_after_the_scheduler_timeout_was_committed() -> None:
    clock = FakeClock()
    c = new_cluster(clock, node_ttl_s=1000.0, timeout_grace_s=5.0)
    node = register(c)
    job = submit(c, timeout_s=10.0)
    start(c, job)
    clock.advance(16)
    c.check_liveness()
    assert job.state is JobState.TIMED_OUT
    c.take_changes()
    report(c, job, "timed_out", node=node, exit_code=-9)
    assert node.allocated == Resources()


def test_a_current_attempt_is_lost_even_when_an_older_attempt_is_still_listed() -> None:
    clock = FakeClock()
    c = new_cluster(clock, node_ttl_s=1000.0, timeout_grace_s=5.0)
    node = register(c, max_parallel=4)
    job = submit(c, timeout_s=10.0, max_retries=2, retry_delay_s=0.1)
    c.place()
    report(c, job, "running")
    clock.advance(16)
    c.check_liveness()  # the scheduler times out attempt 1 and requeues the job
    assert job.state is JobState.QUEUED and job.attempt == 2
    clock.advance(1)
    beat(c, node, (job, 1))
    c.place()
    assert job.node_id == node.id
    report(c, job, "running")  # attempt 2 runs on the same node
    # The agent now lists only attempt 1 (attempt 2 is gone): after two heartbeats
    # attempt 2 should be lost, as it is when nothing of the job is listed.
    beat(c, node, (job, 1))
    beat(c, node, (job, 1))
    assert job.attempt == 3 or job.state is not JobState.RUNNING


def test_resources_held_for_a_cancelled_attempt_stay_held_across_a_restart() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    node = register(c, cpu=2.0, max_parallel=2)
    job = submit(c, cpu=2.0)
    start(c, job)
    c.cancel(job.id, by="alice")
    assert node.allocated == Resources(cpu=2.0, memory_mb=256)  # held: the container may run

    restarted = new_cluster(clock)
    restarted.load(loaded_from(c))
    node2 = restarted.nodes[node.id]
    # Still held until the agent's heartbeat no longer lists attempt 1.
    assert node2.allocated == Resources(cpu=2.0, memory_mb=256)
    big = submit(restarted, cpu=2.0)
    assert restarted.place() == []
    beat(restarted, node2, (restarted.jobs[job.id], 1))
    assert big.state is JobState.QUEUED


def test_a_job_that_finished_while_the_scheduler_was_down_is_not_timed_out() -> None:
    clock = FakeClock()
    settings = {"node_ttl_s": 10.0, "restart_grace_s": 60.0, "timeout_grace_s": 30.0}
    c = new_cluster(clock, **settings)
    node = register(c)
    job = submit(c, timeout_s=60.0)
    start(c, job)
    # The job completes at T0+55; the scheduler is down from before that until T0+95,
    # so the agent can only report once it is back.
    clock.advance(95)
    restarted = new_cluster(clock, **settings)
    restarted.load(loaded_from(c))
    restarted.check_liveness()
    job2 = restarted.jobs[job.id]
    assert job2.state is JobState.RUNNING
    report(restarted, job2, "completed", node=restarted.nodes[node.id], exit_code=0)
    assert job2.state is JobState.COMPLETED


def test_a_job_that_could_not_start_fails_straight_from_assigned() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    register(c)
    job = submit(c)
    c.place()
    assert job.state is JobState.ASSIGNED
    report(c, job, "failed", error="docker: image not found", infra_failure=True)
    assert job.state is JobState.FAILED
    states = [(e.data or {}).get("state") for e in c.changes.events if e.job_id == job.id]
    # The documented assigned -> failed, not through running.
    assert states == [None, "assigned", "failed"]
    assert job.started_at is None
