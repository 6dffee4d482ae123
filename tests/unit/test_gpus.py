"""GPUs in the scheduler: placement's filter on model and memory, and which job holds
each GPU of a node, through assignment, release, holds, loss, a restart and a standby."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from common.codec import decode, encode
from common.errors import CodecError
from common.models import (
    Constraints,
    GpuDevice,
    HeartbeatRequest,
    JobResources,
    JobSpec,
    Node,
    NodeMetrics,
    RegisterRequest,
    Resources,
)
from common.states import JobState, NodeState
from scheduler import gpus
from scheduler.placement import (
    GPU_MODEL,
    GPUS,
    GpuFilter,
    JobRequest,
    NodeView,
    Pass,
    admissible,
    blocker,
    fits,
    place,
)
from scheduler.state import State
from tests.unit.test_cluster import (
    FakeClock,
    assert_no_overcommit,
    beat,
    loaded_from,
    new_cluster,
    report,
)
from tests.unit.test_following import Pair, reads

NOW = 1_700_000_000.0
H200 = "NVIDIA H200"
A10 = "NVIDIA A10"


# --- placement: the GPU filter ------------------------------------------------------------


def view(node_id: str, free_gpus: int, model: str | None, memory_mb: int) -> NodeView:
    return NodeView(
        id=node_id,
        free_cpu=8.0,
        free_memory_mb=16_384,
        free_gpus=free_gpus,
        free_slots=4,
        total_cpu=8.0,
        total_memory_mb=16_384,
        labels={},
        gpu_model=model,
        gpu_memory_mb=memory_mb,
    )


def gpu_job(job_id: str = "j", gpus_: int = 1, **ask: Any) -> JobRequest:
    return JobRequest(
        id=job_id, cpu=1.0, memory_mb=256, gpus=gpus_, gpu=GpuFilter(**ask) if ask else None
    )


def test_a_job_naming_a_gpu_model_goes_only_to_a_node_of_that_model() -> None:
    nodes = [view("a10", 2, A10, 24_576), view("h200", 2, H200, 143_771)]
    result = place(nodes, [gpu_job(model=H200)], now=NOW, rng=random.Random(1))
    assert [(d.job_id, d.node_id) for d in result.decisions] == [("j", "h200")]


def test_a_job_asking_for_gpu_memory_skips_nodes_with_smaller_gpus() -> None:
    nodes = [view("a10", 2, A10, 24_576), view("h200", 2, H200, 143_771)]
    assert fits(nodes[1], gpu_job(memory_mb=40_000), NOW)
    assert not fits(nodes[0], gpu_job(memory_mb=40_000), NOW)
    assert not admissible(nodes[0], gpu_job(memory_mb=40_000), NOW)
    result = place(nodes, [gpu_job(memory_mb=40_000)], now=NOW, rng=random.Random(1))
    assert [d.node_id for d in result.decisions] == ["h200"]


def test_a_node_of_mixed_or_unknown_models_matches_no_model_but_any_count() -> None:
    mixed = view("mixed", 2, None, 0)
    assert not fits(mixed, gpu_job(model=H200), NOW)
    assert blocker(mixed, gpu_job(model=H200), NOW) == GPU_MODEL
    assert fits(mixed, gpu_job(), NOW)


def test_a_job_without_gpus_is_not_filtered_by_gpu_facts() -> None:
    plain = JobRequest(id="p", cpu=1.0, memory_mb=256)
    assert fits(view("none", 0, None, 0), plain, NOW)
    assert fits(view("h200", 2, H200, 143_771), plain, NOW)


def test_no_node_of_the_model_is_the_reason_and_the_count_names_it() -> None:
    nodes = [view("a10", 2, A10, 24_576), view("plain", 0, None, 0)]
    job = gpu_job(model=H200, memory_mb=80_000)
    result = place(nodes, [job], now=NOW, rng=random.Random(1))
    assert result.unplaced == {"j": f"no node has {H200} GPUs with at least 80000 MiB"}
    one = Pass(nodes, now=NOW, rng=random.Random(1))
    assert one.offer(job) == result.unplaced["j"]
    assert one.pending(job) == {GPU_MODEL: 2}


def test_gpus_are_counted_per_node_within_a_pass() -> None:
    nodes = [view("h200", 2, H200, 143_771)]
    jobs = [gpu_job(f"j{i}", model=H200) for i in range(3)]
    one = Pass(nodes, now=NOW, rng=random.Random(1))
    outcomes = [one.offer(j) for j in jobs]
    assert [getattr(o, "node_id", None) for o in outcomes] == ["h200", "h200", None]
    assert one.pending(jobs[2]) == {GPUS: 1}


# --- bookkeeping: scheduler.gpus on a node record -------------------------------------------


def test_facts_are_the_shared_model_and_the_smallest_memory() -> None:
    two = [
        GpuDevice(index=0, model=H200, memory_mb=100),
        GpuDevice(index=1, model=H200, memory_mb=90),
    ]
    assert gpus.facts(two) == (H200, 90)
    mixed = [GpuDevice(index=0, model=H200, memory_mb=100), GpuDevice(index=1, model=A10)]
    assert gpus.facts(mixed) == (None, 0)
    assert gpus.facts([]) == (None, 0)


def test_take_gives_the_lowest_free_indices_and_never_a_held_one() -> None:
    at = datetime.fromtimestamp(NOW, UTC)
    node = Node(
        id="n", name="n", state=NodeState.IDLE, capacity=Resources(gpus=3), registered_at=at
    )
    assert gpus.indices(node) == [0, 1, 2]  # counted without devices: known by index
    assert gpus.take(node, "a", 1) == (0,)
    assert gpus.take(node, "b", 2) == (1, 2)
    with pytest.raises(ValueError, match="0 free GPUs"):
        gpus.take(node, "c", 1)
    gpus.give_back(node, "b", (1, 2))
    gpus.give_back(node, "someone-else", (0,))  # only the holder frees
    assert node.device_jobs == {0: "a"}
    assert gpus.take(node, "c", 1) == (1,)


# --- the scheduler's state ----------------------------------------------------------------


def devices(*models: str | None, memory_mb: int | None = 81_920) -> list[GpuDevice]:
    return [
        GpuDevice(
            index=i, uuid=f"GPU-{i:04d}" if m else None, model=m, memory_mb=memory_mb if m else None
        )
        for i, m in enumerate(models)
    ]


def gpu_node(c: State, name: str = "g1", *models: str | None, max_parallel: int = 4) -> Node:
    found = list(models) or [H200, H200]
    node, _token = c.register(
        RegisterRequest(
            name=name,
            capacity=Resources(cpu=8.0, memory_mb=16_384, gpus=len(found)),
            max_parallel=max_parallel,
            devices=devices(*found),
        )
    )
    return node


def submit_gpu(c: State, count: int = 1, **constraints: Any) -> Any:
    spec = JobSpec(
        image="cuda",
        resources=JobResources(cpu=0.5, memory_mb=256, gpus=count),
        constraints=Constraints(**constraints),
    )
    job, _ = c.submit(spec, submitted_by="alice")
    return job


def held(node: Node) -> dict[int, str]:
    return dict(node.device_jobs)


def test_jobs_get_different_gpus_and_a_third_waits_naming_gpus(clock: FakeClock) -> None:
    c = new_cluster(clock, reservations=0)
    node = gpu_node(c)
    first, second, third = (submit_gpu(c) for _ in range(3))
    c.place()
    assert first.state is second.state is JobState.ASSIGNED
    assert {first.gpu_devices, second.gpu_devices} == {(0,), (1,)}
    assert held(node) == {first.gpu_devices[0]: first.id, second.gpu_devices[0]: second.id}
    assert third.state is JobState.QUEUED
    assert third.reason == "0/1 nodes are available: 1 lacks GPUs (needs 1)"
    assert third.pending == {GPUS: 1}
    c.events.committed(list(c.changes.events), c.changes.events[-1].index)
    assignments, _ = c.pending_assignments(node.id, 0)
    assert {a.job_id: a.gpu_devices for a in assignments} == {
        first.id: first.gpu_devices,
        second.id: second.gpu_devices,
    }

    freed = first.gpu_devices
    report(c, first, "running")
    report(c, first, "completed", exit_code=0)
    assert held(node) == {second.gpu_devices[0]: second.id}
    c.place()
    assert third.state is JobState.ASSIGNED
    assert third.gpu_devices == freed
    assert_no_overcommit(c)


def test_a_gpu_job_that_waits_is_reserved_the_gpu_node(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = gpu_node(c, "g1", H200)
    submit_gpu(c)
    waiting = submit_gpu(c)
    c.place()
    assert waiting.reservation is not None and waiting.reservation.node_id == node.id
    assert waiting.pending == {GPUS: 1}


def test_a_job_asking_for_two_gpus_gets_two_and_its_model(clock: FakeClock) -> None:
    c = new_cluster(clock)
    gpu_node(c, "a10s", A10, A10)
    h200s = gpu_node(c, "h200s", H200, H200)
    job = submit_gpu(c, 2, gpu_model=H200)
    c.place()
    assert job.node_id == h200s.id
    assert job.gpu_devices == (0, 1)


def test_a_job_whose_model_no_node_has_waits_saying_so(clock: FakeClock) -> None:
    c = new_cluster(clock)
    gpu_node(c, "a10s", A10, A10)
    job = submit_gpu(c, gpu_model=H200)
    c.place()
    assert job.state is JobState.QUEUED
    assert job.reason == f"0/1 nodes are available: 1 has no {H200} GPUs"
    assert job.pending == {GPU_MODEL: 1}


def test_a_cancelled_job_keeps_its_gpu_until_its_agent_stops_it(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = gpu_node(c, "g1", H200)
    job = submit_gpu(c)
    c.place()
    report(c, job, "running")
    c.cancel(job.id, by="alice")
    waiting = submit_gpu(c)
    c.place()
    assert waiting.state is JobState.QUEUED
    assert held(node) == {0: job.id}
    assert node.releasing[0].gpu_devices == (0,)

    beat(c, node)  # the agent no longer lists it
    assert held(node) == {}
    c.place()
    assert waiting.gpu_devices == (0,)


def test_an_offline_node_frees_its_gpus_and_the_requeued_job_forgets_them(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock, node_ttl_s=10.0)
    node = gpu_node(c, "g1", H200)
    job = submit_gpu(c)
    c.place()
    clock.advance(11)
    c.check_liveness()
    assert node.state is NodeState.OFFLINE
    assert held(node) == {}
    assert job.state is JobState.QUEUED
    assert job.gpu_devices == ()


def test_a_restart_rebuilds_which_job_holds_each_gpu(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = gpu_node(c, "g1", H200, H200, H200)
    running, cancelled = submit_gpu(c), submit_gpu(c, 2)
    c.place()
    report(c, running, "running")
    report(c, cancelled, "running")
    c.cancel(cancelled.id, by="alice")  # held until its agent lets go
    before = held(node)
    assert sorted(before) == [0, 1, 2]

    loaded = loaded_from(c)
    for n in loaded.nodes:
        n.device_jobs = {}  # what was stored does not matter: it is worked out again
    restarted = new_cluster(clock)
    restarted.load(loaded)
    assert held(restarted.nodes[node.id]) == before
    late = submit_gpu(restarted)
    restarted.place()
    assert late.state is JobState.QUEUED


def test_a_standby_holds_the_same_gpus_as_the_leader(clock: FakeClock) -> None:
    pair = Pair(clock)
    c = pair.leader
    node = gpu_node(c, "g1", H200, H200)
    pair.commit()
    jobs = [submit_gpu(c) for _ in range(3)]
    c.place()
    pair.commit()
    report(c, jobs[0], "running")
    report(c, jobs[0], "completed", exit_code=0)
    c.place()
    pair.commit()
    assert held(pair.standby.nodes[node.id]) == held(node)
    assert reads(pair.standby) == reads(c)


def test_live_gpu_use_is_kept_with_the_nodes_metrics(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = gpu_node(c, "g1", H200)
    metrics = decode(
        b'{"gpus": [{"index": 0, "utilization_percent": 87, "memory_used_mb": 40000}]}',
        NodeMetrics,
    )
    c.heartbeat(node.id, HeartbeatRequest(metrics=metrics))
    assert node.metrics is not None
    assert [(u.index, u.utilization_percent, u.memory_used_mb) for u in node.metrics.gpus] == [
        (0, 87.0, 40000)
    ]
    again = decode(encode(node), Node)
    assert again.devices == node.devices


def test_registration_lists_one_device_per_gpu_counted() -> None:
    body = b'{"name": "g", "capacity": {"gpus": 1}, "devices": [{"index": 0}, {"index": 1}]}'
    with pytest.raises(CodecError, match=r"capacity\.gpus is 1 but 2 devices are listed"):
        decode(body, RegisterRequest)
    twice = b'{"name": "g", "capacity": {"gpus": 2}, "devices": [{"index": 0}, {"index": 0}]}'
    with pytest.raises(CodecError, match="one index twice"):
        decode(twice, RegisterRequest)


def test_a_gpu_constraint_needs_a_gpu() -> None:
    body = b'{"image": "x", "constraints": {"gpu_model": "NVIDIA H200"}}'
    with pytest.raises(CodecError, match=r"need resources\.gpus"):
        decode(body, JobSpec)


def assert_gpus_add_up(c: State) -> None:
    """Every GPU held by one attempt at most, as many as the node's allocation counts,
    and the node's record of them is what its jobs and held attempts say."""
    for node in c.nodes.values():
        running = [c.jobs[j] for j in node.running_jobs]
        named = [i for j in running for i in j.gpu_devices]
        named += [i for h in node.releasing for i in h.gpu_devices]
        assert len(named) == len(set(named)), node.device_jobs
        assert len(named) == node.allocated.gpus
        assert set(named) <= set(gpus.indices(node))
        assert node.device_jobs == gpus.holders(running, node.releasing)
        for job in running:
            assert len(job.gpu_devices) == job.spec.resources.gpus


@pytest.mark.parametrize("seed", range(5))
def test_no_gpu_is_ever_held_twice_through_random_steps(clock: FakeClock, seed: int) -> None:
    rng = random.Random(seed)
    c = new_cluster(clock, node_ttl_s=30.0)
    nodes = [gpu_node(c, f"g{i}", *[H200] * rng.randint(1, 4)) for i in range(3)]
    for _ in range(300):
        move = rng.random()
        on_node = [j for j in c.jobs.values() if j.state in (JobState.ASSIGNED, JobState.RUNNING)]
        if move < 0.3:
            submit_gpu(c, rng.randint(1, 2))
        elif move < 0.5 and on_node:
            job = rng.choice(on_node)
            if job.state is JobState.ASSIGNED:
                report(c, job, "running")
            else:
                report(c, job, "completed", exit_code=0)
        elif move < 0.6 and on_node:
            c.cancel(rng.choice(on_node).id, by="alice")
        elif move < 0.7:
            node = rng.choice(nodes)
            listed = [
                j for j in c.jobs.values() if j.node_id == node.id and j.state is JobState.RUNNING
            ]
            beat(c, node, *listed)
        elif move < 0.72:
            clock.advance(31)  # every node goes offline; they come back with a heartbeat
            c.check_liveness()
            for node in nodes:
                beat(c, node)
        c.place()
        assert_gpus_add_up(c)
        assert_no_overcommit(c)
