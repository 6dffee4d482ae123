"""A job's life on a real agent: exit codes, logs, progress, limits, timeouts, cancels.

The cases that need no isolation run on both the docker and the process executor.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from common.client import BerthClient
from tests.e2e.conftest import (
    Cluster,
    containers,
    job_logs,
    node_named,
    poll,
    spec,
    wait_done,
    wait_state,
)

pytestmark = pytest.mark.docker

BOTH = pytest.mark.parametrize("pool", ["docker", "process"])


@BOTH
async def test_exit_code_logs_and_progress_are_reported(
    api: BerthClient, cluster: Cluster, pool: str
) -> None:
    script = (
        "echo hello out; echo hello err >&2; echo '::progress::45 Searching the index'; "
        "echo after; exit 3"
    )
    job = await api.submit_job(spec(script, pool))
    done = await wait_done(api, job.id)
    assert done.state == "failed"
    assert done.exit_code == 3
    assert done.error == "exit code 3"
    assert done.progress is not None
    assert done.progress.percent == 45.0
    assert done.progress.message == "Searching the index"
    logs = await job_logs(api, cluster.sched, done)
    for line in (
        b"hello out\n",
        b"hello err\n",
        b"::progress::45 Searching the index\n",
        b"after\n",
    ):
        assert logs.count(line) == 1, logs


@BOTH
async def test_successful_job_completes_with_its_env_and_workdir(
    api: BerthClient, cluster: Cluster, pool: str
) -> None:
    workdir = "/tmp" if pool == "docker" else None
    job = await api.submit_job(
        spec(
            ["sh", "-c", 'echo "$GREETING"; pwd'],
            pool,
            env={"GREETING": "hi there"},
            workdir=workdir,
        )
    )
    done = await wait_done(api, job.id)
    assert (done.state, done.exit_code) == ("completed", 0)
    logs = await job_logs(api, cluster.sched, done)
    assert logs.startswith(b"hi there\n"), logs
    if workdir:
        assert logs.endswith(b"/tmp\n"), logs


async def test_large_output_arrives_complete_and_in_order(
    api: BerthClient, cluster: Cluster
) -> None:
    # About 300 KiB: several batches of the 64 KiB threshold.
    job = await api.submit_job(spec("seq 1 50000", "docker"))
    done = await wait_done(api, job.id)
    assert done.state == "completed"
    logs = await job_logs(api, cluster.sched, done)
    assert logs == "".join(f"{i}\n" for i in range(1, 50001)).encode()


@BOTH
async def test_job_past_its_timeout_is_timed_out(
    api: BerthClient, cluster: Cluster, pool: str
) -> None:
    job = await api.submit_job(spec("echo started; sleep 60", pool, timeout_s=2))
    done = await wait_done(api, job.id, timeout=40)
    assert done.state == "timed_out"
    assert done.error is not None and "timed out" in done.error
    assert b"started\n" in await job_logs(api, cluster.sched, done)
    if pool == "docker":
        await poll(
            lambda: not containers(f"berth.job={job.id}", all_states=True), 20, what="removal"
        )


@BOTH
async def test_cancel_stops_a_running_job(api: BerthClient, cluster: Cluster, pool: str) -> None:
    job = await api.submit_job(spec("echo started; sleep 60", pool))
    await wait_state(api, job.id, {"running"})
    await poll(lambda: _has_logs(api, cluster, job.id), 20, what="the job's first output to arrive")
    await api.cancel_job(job.id)
    done = await wait_done(api, job.id, timeout=30)
    assert done.state == "cancelled"
    # The agent stops listing it once the process or container is gone.
    node = await node_named(api, pool)

    async def released() -> bool:
        n = await api.get_node(node.id)
        return job.id not in n.running_jobs

    await poll(released, 30, what="the node to let the job go")
    if pool == "docker":
        await poll(
            lambda: not containers(f"berth.job={job.id}", all_states=True), 30, what="removal"
        )


def _docker_inspect(container_id: str) -> bytes:
    return subprocess.run(
        ["docker", "inspect", container_id], capture_output=True, check=True
    ).stdout


async def _has_logs(api: BerthClient, cluster: Cluster, job_id: str) -> bool:
    return bool(await job_logs(api, cluster.sched, await api.get_job(job_id)))


async def test_job_over_its_memory_limit_is_reported_oom_killed(
    api: BerthClient, cluster: Cluster
) -> None:
    job = await api.submit_job(spec("a=x; while :; do a=$a$a; done", "docker", memory_mb=16))
    done = await wait_done(api, job.id, timeout=60)
    assert done.state == "failed"
    assert done.error == "out of memory (limit 16 MiB)"
    assert done.exit_code == 137


async def test_missing_image_fails_the_job_and_not_the_node(api: BerthClient) -> None:
    job = await api.submit_job(spec("true", "docker", image="berth-test/does-not-exist:1"))
    done = await wait_done(api, job.id, timeout=60)
    assert done.state == "failed"
    assert done.error is not None and "berth-test/does-not-exist:1" in done.error
    node = await node_named(api, "docker")
    assert node.infra_failures == 0
    assert node.state in ("idle", "busy")


async def test_missing_command_fails_the_job_and_not_the_node(api: BerthClient) -> None:
    job = await api.submit_job(spec(["/bin/no-such-program"], "docker"))
    done = await wait_done(api, job.id, timeout=60)
    assert done.state == "failed"
    assert done.error is not None and "no-such-program" in done.error
    assert (await node_named(api, "docker")).infra_failures == 0


async def test_container_is_locked_down(api: BerthClient) -> None:
    job = await api.submit_job(spec("sleep 30", "docker", cpu=0.5, memory_mb=48))
    await wait_state(api, job.id, {"running"})
    ids = await poll(lambda: containers(f"berth.job={job.id}"), 20, what="the container")
    inspect = json.loads(await asyncio.to_thread(_docker_inspect, ids[0]))[0]
    host = inspect["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 48 * 1024 * 1024
    assert host["MemorySwap"] == 48 * 1024 * 1024
    assert host["PidsLimit"] == 512
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"]
    assert host["NetworkMode"] == "none"
    labels = inspect["Config"]["Labels"]
    node = await node_named(api, "docker")
    assert labels["berth.job"] == job.id
    assert labels["berth.attempt"] == "1"
    assert labels["berth.node"] == node.id
    assert inspect["Config"]["Cmd"] == ["sh", "-c", "sleep 30"]
    await api.cancel_job(job.id)
    await wait_done(api, job.id, timeout=30)


async def test_max_parallel_is_never_exceeded(api: BerthClient) -> None:
    node = await node_named(api, "docker")
    jobs = [await api.submit_job(spec("sleep 1.5", "docker")) for _ in range(6)]
    peak_sched = peak_docker = 0

    async def all_done() -> bool:
        nonlocal peak_sched, peak_docker
        n = await api.get_node(node.id)
        peak_sched = max(peak_sched, len(n.running_jobs))
        peak_docker = max(peak_docker, len(containers(f"berth.node={node.id}")))
        states = [(await api.get_job(j.id)).state for j in jobs]
        return all(s == "completed" for s in states)

    await poll(all_done, 90, interval=0.05, what="six jobs to complete")
    assert peak_docker == 2, peak_docker
    assert 1 <= peak_sched <= 2


async def test_job_that_fits_only_the_bigger_node_runs_there(api: BerthClient) -> None:
    big = await node_named(api, "docker")
    small = await node_named(api, "small")
    assert small.capacity.memory_mb - small.reserved.memory_mb == 512
    # Both docker agents carry exec=docker; only the big one has 1 GiB to offer.
    for _ in range(3):
        job = await api.submit_job(spec("true", "exec=docker", memory_mb=1024))
        done = await wait_done(api, job.id)
        assert done.state == "completed"
        assert done.node_id == big.id
    job = await api.submit_job(spec("true", "small", memory_mb=256))
    assert (await wait_done(api, job.id)).node_id == small.id
