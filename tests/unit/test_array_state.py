"""Job arrays in the scheduler's state: consecutive task ids sharing one spec object,
the group that holds them to max_concurrent, the environment each assignment carries,
and the index of arrays rebuilt from the tasks when the state is loaded."""

from __future__ import annotations

from common.codec import decode, encode
from common.models import ArraySpec, Job
from common.states import JobState
from scheduler.arrays import assigned_spec, task_ids
from scheduler.store.base import Loaded
from tests.unit.test_cluster import FakeClock, job_spec, new_cluster, register


def test_tasks_share_one_spec_and_take_consecutive_ids() -> None:
    c = new_cluster(FakeClock())
    first, created = c.submit_array(
        job_spec(array=ArraySpec(count=1000)), submitted_by="alice", size=100
    )
    assert created and first.array_id == first.id and first.array_index == 0
    ids = task_ids(first.id, 1000)
    assert ids == sorted(ids) and len(set(ids)) == 1000
    tasks = [c.jobs[i] for i in ids]
    assert [t.array_index for t in tasks] == list(range(1000))
    assert all(t.spec is first.spec for t in tasks)
    assert c.counts[JobState.QUEUED] == 1000 and c.queued_by["alice"] == 1000
    assert c.array_counts(first.id, c.arrays[first.id])["queued"] == 1000
    # The next job's id comes after the last task's.
    after, _ = c.submit(job_spec(), submitted_by="alice")
    assert after.id > ids[-1]


def test_max_concurrent_holds_the_tasks_to_their_own_group() -> None:
    c = new_cluster(FakeClock())
    node = register(c, max_parallel=8, cpu=16)
    first, _ = c.submit_array(
        job_spec(array=ArraySpec(count=6, max_concurrent=2)), submitted_by="alice"
    )
    group = f"array:{first.id}"
    assert first.spec.group == group and c.group_limits[group] == 2
    c.place()
    placed = [c.jobs[i] for i in task_ids(first.id, 6) if c.jobs[i].state is JobState.ASSIGNED]
    assert len(placed) == 2
    changes = c.take_changes()
    c.events.committed(changes.events, changes.events[-1].index)
    out, _ = c.pending_assignments(node.id, 0)
    assert sorted(a.job_id for a in out) == sorted(j.id for j in placed)
    envs = sorted((a.spec.env["BERTH_ARRAY_INDEX"], a.spec.env["BERTH_ARRAY_ID"]) for a in out)
    assert envs == [("0", first.id), ("1", first.id)]
    # The shared spec itself is left as it was.
    assert "BERTH_ARRAY_INDEX" not in first.spec.env
    assert assigned_spec(c.jobs[task_ids(first.id, 6)[5]]).env["BERTH_ARRAY_INDEX"] == "5"


def test_loading_rebuilds_the_index_and_shares_the_spec_again() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    first, _ = c.submit_array(job_spec(array=ArraySpec(count=50)), submitted_by="bob")
    stored = [decode(encode(j), Job) for j in c.take_changes().jobs.values()]
    again = new_cluster(clock)
    again.load(Loaded(jobs=stored, nodes=[], idempotency={}, tokens=[], last_index=0, log_ends={}))
    entry = again.arrays[first.id]
    assert (entry.count, entry.owner) == (50, "bob")
    tasks = [again.jobs[i] for i in task_ids(first.id, 50)]
    assert all(t.spec is entry.spec for t in tasks)
    assert again.array_counts(first.id, entry)["queued"] == 50
    assert list(again.iter_array_ids(first.id, entry, None, None))[:2] == [
        tasks[49].id,
        tasks[48].id,
    ]
