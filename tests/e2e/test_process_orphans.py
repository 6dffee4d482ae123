"""No process of a job outlives its agent or its cancel on the process executor.

A real scheduler and a real ``berth agent --executor process`` run a job whose shell
starts a ``sleep`` in its process group and another in a session of its own
(``setsid``), out of that group; all three write their pids to a file. Each test runs
in both modes of the executor: ``cgroup`` (a cgroup per job, what this host offers as
root) and ``pdeathsig`` (no cgroups, ``BERTH_PROCESS_CGROUPS=off``: the main process
dies with the agent, and escaped processes are found by their environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from agent.executors.base import AttemptInfo
from agent.executors.jobcgroup import JobCgroups, cgroup_name
from agent.executors.process import ProcessExecutor
from common.client import BerthClient
from common.models import Constraints, JobResources, JobSpec
from tests.e2e.conftest import AgentProcess, node_named, poll, wait_done, wait_for_nodes, wait_state
from tests.support import SchedulerProcess

#: the job writes "<role> <pid>" lines to $PIDS: its main shell, a child in its group,
#: and a sleep that escaped to a session of its own
ESCAPING = (
    "setsid sh -c 'echo escaped $$ >> \"$PIDS\"; exec sleep 1000' & "
    'sleep 1000 & echo child $! >> "$PIDS"; echo main $$ >> "$PIDS"; wait'
)
ROLES = {"main", "child", "escaped"}


def _no_cgroups(why: str) -> None:
    """CI runs as root on hosts with a writable cgroup v2: there, none is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"no job cgroups on this host: {why}")
    pytest.skip(f"no job cgroups on this host: {why}")


@dataclass
class Node:
    sched: SchedulerProcess
    agent: AgentProcess
    api: BerthClient
    mode: str


@pytest.fixture(params=["cgroup", "pdeathsig"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    mode: str = request.param
    env = {"BERTH_PROCESS_CGROUPS": "off"} if mode == "pdeathsig" else {}
    if mode == "cgroup":
        cgroups, why = JobCgroups.probe()
        if cgroups is None:
            _no_cgroups(why)
    sched = SchedulerProcess(
        tmp_path / "scheduler", "--heartbeat-interval", "0.5", "--restart-grace", "30"
    ).start()
    agent = AgentProcess(
        sched,
        "orphans",
        tmp_path / "orphans",
        *("--executor", "process", "--label", "pool=orphans"),
        env=env,
    ).start()
    try:
        async with BerthClient(sched.url, sched.admin_token, timeout=30) as api:
            await wait_for_nodes(api, ["orphans"], timeout=30)
            yield Node(sched, agent, api, mode)
    finally:
        agent.kill()
        sched.kill()


@pytest.fixture
def pids_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pids"
    yield path
    # Whatever a failing test left running goes now.
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get("PIDS") == str(path):
                p.kill()


def _job(pids: Path) -> JobSpec:
    return JobSpec(
        image="unused",
        command=ESCAPING,
        env={"PIDS": str(pids)},
        timeout_s=120,
        resources=JobResources(cpu=0.1, memory_mb=32),
        constraints=Constraints(labels={"pool": "orphans"}),
    )


def _pids(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    return {
        role: int(pid)
        for role, _, pid in (line.partition(" ") for line in path.read_text().splitlines())
        if pid
    }


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _running_job(node: Node, pids_file: Path) -> tuple[str, dict[str, int]]:
    """Submit the escaping job; its id and pids once both processes are up. A loss ends
    it (no requeue), so that what the lost attempt left is all there is to look at."""
    spec = _job(pids_file)
    spec.max_requeues = 0
    job = await node.api.submit_job(spec)
    await wait_state(node.api, job.id, {"running"}, timeout=30)
    pids: dict[str, int] = await poll(
        lambda: (p := _pids(pids_file)).keys() >= ROLES and p,
        15,
        what="the job's pids",
    )
    assert all(_alive(pid) for pid in pids.values())
    # The escaped one really left the job's session and process group.
    assert os.getsid(pids["escaped"]) != os.getsid(pids["main"])
    assert os.getpgid(pids["escaped"]) != os.getpgid(pids["main"])
    assert os.getpgid(pids["child"]) == os.getpgid(pids["main"])
    return job.id, pids


async def test_sigkilled_agent_leaves_no_process_of_its_job_behind(
    node: Node, pids_file: Path
) -> None:
    job_id, pids = await _running_job(node, pids_file)
    node_id = (await node_named(node.api, "orphans")).id

    node.agent.kill()  # SIGKILL
    if node.mode == "pdeathsig":
        # Without a cgroup, the main process dies with the agent (its parent-death
        # signal); in one, the job's processes stay in reach until the agent's restart.
        await poll(
            lambda: not _alive(pids["main"]), 5, what="the main process to die with the agent"
        )

    node.agent.start()
    await poll(
        lambda: not any(_alive(pid) for pid in pids.values()),
        20,
        what="every process of the job to be gone after the agent's restart",
    )
    done = await wait_done(node.api, job_id, timeout=30)
    assert done.state == "failed" and done.error_code == "requeue_limit"
    assert done.error is not None and "lost" in done.error, done.error
    if node.mode == "cgroup":
        cgroups, _ = JobCgroups.probe()
        assert cgroups is not None
        assert not (cgroups.base / cgroup_name(node_id)).exists(), "the node's cgroups stay"
    assert node.agent.proc is not None and node.agent.proc.poll() is None


async def test_cancel_kills_the_processes_that_left_the_jobs_group(
    node: Node, pids_file: Path
) -> None:
    job_id, pids = await _running_job(node, pids_file)
    await node.api.cancel_job(job_id)
    done = await wait_done(node.api, job_id, timeout=30)
    assert done.state == "cancelled"
    await poll(
        lambda: not any(_alive(pid) for pid in pids.values()),
        10,
        what="every process of the cancelled job to be gone",
    )


async def test_pause_and_usage_reach_the_processes_that_left_the_group(tmp_path: Path) -> None:
    """With cgroups, an escaped process is paused with its job and counted in its usage."""
    executor = ProcessExecutor(tmp_path / "work")
    if executor.cgroups is None:
        _no_cgroups("the executor found none")
    pids_file = tmp_path / "pids"
    # The escaped process holds 200 MiB it wrote to; the rest next to nothing.
    hog = f'{sys.executable} -c "b = bytes(range(256)) * (800 << 10); import time; time.sleep(60)"'
    job = JobSpec(
        image="unused",
        command=f"setsid sh -c 'echo escaped $$ >> \"$PIDS\"; exec {hog}' & sleep 60",
        env={"PIDS": str(pids_file)},
        timeout_s=60,
    )
    info = AttemptInfo(f"x{uuid.uuid4().hex[:12]}", 1, f"n{uuid.uuid4().hex[:8]}", 60.0, 64)
    execution = await executor.start(info, job)
    try:
        escaped: int = await poll(lambda: _pids(pids_file).get("escaped"), 10, what="its pid")

        async def hog_counted() -> bool:
            usage = await execution.usage()
            return usage is not None and usage.memory_mb >= 200

        await poll(hog_counted, 10, what="the usage to count the escaped process")
        await execution.pause()
        await poll(
            lambda: psutil.Process(escaped).status() == psutil.STATUS_STOPPED, 5, what="stop"
        )
        await execution.resume()
        assert psutil.Process(escaped).status() != psutil.STATUS_STOPPED
        await execution.stop(1)
        await execution.wait()
        await poll(lambda: not _alive(escaped), 5, what="the escaped process to be killed")
    finally:
        await execution.remove()
    assert executor.cgroups.of_node(info.node_id) == []
    executor.cgroups.prune(info.node_id)


async def test_a_job_that_cannot_join_its_cgroup_runs_without_and_so_do_the_next(
    tmp_path: Path,
) -> None:
    executor = ProcessExecutor(tmp_path / "work")
    # A tree that is no cgroupfs: creating "cgroups" works, joining one does not.
    executor.cgroups = JobCgroups(tmp_path / "not-a-cgroupfs")
    job = JobSpec(image="unused", command="echo ran", timeout_s=60)
    info = AttemptInfo(f"x{uuid.uuid4().hex[:12]}", 1, "n1", 60.0, 64)
    execution = await executor.start(info, job)
    try:
        assert b"".join([chunk async for chunk in execution.logs()]) == b"ran\n"
        assert (await execution.wait()).exit_code == 0
    finally:
        await execution.remove()
    assert executor.cgroups is None
    assert not list((tmp_path / "not-a-cgroupfs").rglob("*-1"))


async def test_a_cgroup_is_emptied_without_cgroup_kill(tmp_path: Path) -> None:
    """Kernels before 5.14 have no cgroup.kill: each process is killed, frozen."""
    cgroups, why = JobCgroups.probe()
    if cgroups is None:
        _no_cgroups(why)
    node_id = f"n{uuid.uuid4().hex[:8]}"
    cgroup = cgroups.create(node_id, "forks-1")
    procs = cgroup.open_procs()
    try:
        # A shell that keeps forking, and a child that left its session.
        proc = subprocess.Popen(
            ["sh", "-c", "setsid sleep 1000 & while :; do sleep 1000 & sleep 0.01; done"],
            preexec_fn=lambda: os.write(procs, str(os.getpid()).encode()),
            start_new_session=True,
        )
    finally:
        os.close(procs)
    try:
        await poll(lambda: len(cgroup.pids()) >= 5, 10, what="the forks")
        await asyncio.to_thread(cgroup._kill_frozen)
        await poll(lambda: not cgroup.populated(), 5, what="the cgroup to empty")
        assert cgroup.rmdir()
    finally:
        cgroup.kill()
        proc.wait(timeout=10)
        await cgroup.destroy()
        cgroups.prune(node_id)
