"""The queue's rules for how a job ends or goes on: requeues after losses it did not
cause, exit-code rules, dependency kinds, queue timeouts and deadlines; driven through
the state's public methods with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.errors import InvalidRequest
from common.models import Dependency
from common.states import JobState
from scheduler.liveness import retries_exit_code
from tests.unit.test_cluster import FakeClock, new_cluster, register, report, start, submit
from tests.unit.test_queue import finish


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- requeues ------------------------------------------------------------------------


def test_a_drain_with_requeue_stops_the_jobs_and_queues_them_again(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.drain(node.id, True, "maintenance", requeue=True)
    assert job.state is JobState.QUEUED and job.attempt == 2
    assert job.requeues == 1 and job.retries == 0
    assert job.reason == f"requeued 1/3: node {node.name} was drained with requeue"
    # The attempt may still run: its resources stay held until the agent lets go.
    assert node.allocated.cpu == 1.0 and node.releasing
    # Being drained is no fault of the node's: placement does not rank it lower.
    assert node.id not in job.failed_nodes
    report(c, job, "cancelled", node=node, attempt=1)
    assert node.allocated.cpu == 0.0 and not node.releasing


def test_a_drain_without_requeue_lets_the_jobs_finish(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    node = register(c)
    job = submit(c)
    start(c, job)
    c.drain(node.id, True, "")
    assert job.state is JobState.RUNNING and job.requeues == 0


def test_an_attempt_its_executor_lost_is_requeued_not_retried(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c)
    job = submit(c)
    start(c, job)
    report(c, job, "failed", error="the container disappeared", infra_failure=True, lost=True)
    assert job.state is JobState.QUEUED and job.attempt == 2
    assert job.requeues == 1 and job.retries == 0
    assert job.reason == "requeued 1/3: lost: the container disappeared"


def test_a_failure_of_the_job_itself_still_spends_its_retries(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c)
    job = submit(c)
    start(c, job)
    report(c, job, "failed", exit_code=1)
    assert job.state is JobState.FAILED and job.requeues == 0


# --- exit-code rules -----------------------------------------------------------------


def test_exit_code_rules() -> None:
    assert retries_exit_code(1, None, None)
    assert retries_exit_code(None, [3], None)  # a timeout has no code to judge
    assert retries_exit_code(3, [3, 4], None)
    assert not retries_exit_code(1, [3, 4], None)
    assert not retries_exit_code(2, None, [2])
    assert retries_exit_code(1, None, [2])


def test_an_exit_code_the_job_says_not_to_retry_fails_it_at_once(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c)
    job = submit(c, max_retries=3, no_retry_on_exit_codes=[2])
    start(c, job)
    report(c, job, "failed", exit_code=2)
    assert job.state is JobState.FAILED and job.retries == 0
    assert job.error_code == "exit_code_not_retried"
    assert job.reason == "exit code 2 (exit code 2 is not retried by the job's rules)"


def test_only_the_listed_exit_codes_are_retried(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c)
    job = submit(c, max_retries=3, retry_on_exit_codes=[75])
    start(c, job)
    report(c, job, "failed", exit_code=75)
    assert job.state is JobState.QUEUED and job.retries == 1
    clock.advance(3600)
    start(c, job)
    report(c, job, "failed", exit_code=1)
    assert job.state is JobState.FAILED and job.retries == 1


def test_both_exit_code_lists_at_once_are_refused() -> None:
    import msgspec

    from common.models import JobSpec

    body = b'{"image": "x", "retry_on_exit_codes": [1], "no_retry_on_exit_codes": [2]}'
    with pytest.raises(msgspec.ValidationError, match="exclude each other"):
        msgspec.json.decode(body, type=JobSpec)


# --- dependency kinds ----------------------------------------------------------------


def test_afterany_starts_whether_the_dependency_completed_or_failed(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, max_parallel=1)
    first = submit(c)
    after_any = submit(c, depends_on=[Dependency(first.id, "ended")])
    start(c, first)
    assert after_any.state is JobState.QUEUED
    finish(c, first, "failed", exit_code=1)
    c.place()
    assert after_any.state is JobState.ASSIGNED


def test_afternotok_starts_only_after_a_failure(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, max_parallel=2)
    ok, bad = submit(c), submit(c)
    on_ok_failure = submit(c, depends_on=[Dependency(ok.id, "failed")])
    on_bad_completion = submit(c, depends_on=[bad.id])
    on_bad_failure = submit(c, depends_on=[Dependency(bad.id, "failed")])
    start(c, ok, bad)
    finish(c, ok, "completed")
    finish(c, bad, "failed", exit_code=1)
    c.place()
    assert on_ok_failure.state is JobState.FAILED
    assert on_ok_failure.error == f"dependency_failed: job {ok.id} completed"
    # A plain id still means "completed".
    assert on_bad_completion.state is JobState.FAILED
    assert on_bad_failure.state is JobState.ASSIGNED


def test_a_job_waiting_on_several_kinds_starts_when_each_is_met(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, max_parallel=2)
    a, b = submit(c), submit(c)
    last = submit(c, depends_on=[a.id, Dependency(b.id, "failed")])
    start(c, a, b)
    finish(c, b, "failed", exit_code=3)
    c.place()
    assert last.state is JobState.QUEUED
    assert last.reason == f"waiting_on: {a.id}"
    finish(c, a, "completed")
    c.place()
    assert last.state is JobState.ASSIGNED


def test_one_job_named_twice_with_different_ends_is_refused(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    a = submit(c)
    with pytest.raises(InvalidRequest) as refused:
        submit(c, depends_on=[a.id, Dependency(a.id, "failed")])
    assert refused.value.details == {"field": "$.depends_on[1]"}


# --- queue timeouts and deadlines ----------------------------------------------------


def test_a_job_not_started_within_its_queue_timeout_fails(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    job = submit(c, queue_timeout_s=30)
    clock.advance(29)
    c.check_liveness()
    assert job.state is JobState.QUEUED
    clock.advance(2)
    c.check_liveness()
    assert job.state is JobState.FAILED and job.error_code == "queue_timeout"
    assert job.error == "not started within its queue timeout of 30s"


def test_the_scheduler_default_queue_timeout_applies_to_jobs_without_one(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock, default_queue_timeout_s=10.0)
    own = submit(c, queue_timeout_s=100)
    default = submit(c)
    clock.advance(11)
    c.check_liveness()
    assert default.state is JobState.FAILED and default.error_code == "queue_timeout"
    assert own.state is JobState.QUEUED


def test_a_job_that_started_in_time_is_not_failed_by_its_queue_timeout(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c)
    job = submit(c, queue_timeout_s=5)
    start(c, job)
    clock.advance(60)
    c.check_liveness()
    assert job.state is JobState.RUNNING


def test_a_job_past_its_deadline_is_cancelled_queued_or_running(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    node = register(c, max_parallel=1)
    deadline = datetime.fromtimestamp(clock.now + 60, tz=UTC)
    running = submit(c, deadline=deadline)
    queued = submit(c, deadline=deadline)
    start(c, running)
    c.place()
    assert queued.state is JobState.QUEUED
    clock.advance(59)
    c.check_liveness()
    assert running.state is JobState.RUNNING and queued.state is JobState.QUEUED
    clock.advance(2)
    c.check_liveness()
    for job in (running, queued):
        assert job.state is JobState.CANCELLED and job.error_code == "deadline"
    # The running attempt is told to stop; its resources are held until it has.
    assert node.releasing


# --- holding queued jobs (a paused array) ----------------------------------------------


def test_a_held_job_keeps_out_of_placement_until_released_even_across_a_restart(
    clock: FakeClock,
) -> None:
    from common.codec import decode, encode
    from common.models import Job
    from tests.unit.test_cluster import loaded_from

    c = new_cluster(clock, node_ttl_s=1e6)
    register(c)
    held = submit(c)
    c.hold(held.id, by="admin")
    c.place()
    assert held.state is JobState.QUEUED and held.held and held.reason == "held by admin"
    restarted = new_cluster(clock, node_ttl_s=1e6)
    loaded = loaded_from(c)
    loaded.jobs = [decode(encode(j), Job) for j in c.jobs.values()]
    restarted.load(loaded)
    restarted.place()
    again = restarted.jobs[held.id]
    assert again.state is JobState.QUEUED and again.held
    restarted.release(held.id, by="admin")
    restarted.place()
    assert again.state is JobState.ASSIGNED and not again.held


def test_a_held_job_whose_dependency_completes_still_waits(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, max_parallel=2)
    first = submit(c)
    after = submit(c, depends_on=[first.id])
    c.hold(after.id, by="admin")
    start(c, first)
    finish(c, first, "completed")
    c.place()
    assert after.state is JobState.QUEUED
    c.release(after.id, by="admin")
    c.place()
    assert after.state is JobState.ASSIGNED
