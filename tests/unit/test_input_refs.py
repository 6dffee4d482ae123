"""An input archive shared by several jobs is deleted with the last of them."""

from __future__ import annotations

from common.states import JobState
from scheduler.config import SchedulerConfig
from scheduler.state import State
from scheduler.store.base import Loaded
from tests.unit.test_cluster import FakeClock, new_cluster, submit

SHARED = "a" * 64
OWN = "b" * 64


def _ended(c: State) -> None:
    for job_id in list(c.jobs):
        c.cancel(job_id, by="t")
    c.take_changes()  # ended jobs move to the archive


def test_a_shared_input_goes_with_the_last_job_naming_it(clock: FakeClock) -> None:
    c = new_cluster(clock)
    first = submit(c, inputs=SHARED)
    second = submit(c, inputs=SHARED)
    third = submit(c, inputs=OWN)
    submit(c)
    _ended(c)
    assert c.release_inputs(c.forget([first.id])) == []
    assert c.release_inputs(c.forget([third.id])) == [OWN]
    assert c.release_inputs(c.forget([second.id])) == [SHARED]


def test_references_are_counted_again_after_a_restart(clock: FakeClock) -> None:
    c = new_cluster(clock)
    first = submit(c, inputs=SHARED)
    second = submit(c, inputs=SHARED, env={"inputs": "not-a-digest"})
    live = submit(c, inputs=SHARED)
    _ended(c)
    c.retry(live.id, by="t")
    archived = [(job_id, c.archive.state(job_id), c.archive.stored(job_id)) for job_id in c.archive]
    restarted = State(SchedulerConfig(restart_grace_s=0), clock=clock)
    restarted.load(
        Loaded(
            jobs=list(c.jobs.values()),
            nodes=[],
            idempotency={},
            tokens=[],
            last_index=c.events.last_index,
            log_ends={},
            archived=archived,
        )
    )
    assert restarted.input_refs == {SHARED: 3}
    assert restarted.jobs[live.id].state is JobState.QUEUED
    assert restarted.release_inputs(restarted.forget([first.id, second.id])) == []
