"""A running job on real agents: pause and resume, checkpoints carried from one attempt
to the next, and the resource use its agent samples."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time

import pytest

from common import codec
from common.client import BerthClient
from common.models import Job
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
#: a job that prints a numbered line five times a second
TICKER = "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done"
#: how long the output of a paused job is watched for a line that must not come
QUIET_WINDOW_S = 2.0


async def _act(api: BerthClient, job_id: str, action: str) -> Job:
    reply = await api.request("POST", f"/api/v1/jobs/{job_id}/{action}", body=b"{}")
    return codec.decode(reply, Job)


async def _log(api: BerthClient, cluster: Cluster, job_id: str) -> bytes:
    return await job_logs(api, cluster.sched, await api.get_job(job_id))


async def _settled_log(api: BerthClient, cluster: Cluster, job_id: str) -> bytes:
    """The log once it stopped growing: the same over two reads a second apart."""
    previous = await _log(api, cluster, job_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        current = await _log(api, cluster, job_id)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the output of a paused job kept growing")


def _ticks(log: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"^tick (\d+)$", log, re.MULTILINE)]


def _container_paused(job_id: str) -> bool | None:
    ids = containers(f"berth.job={job_id}")
    if not ids:
        return None
    out = subprocess.run(["docker", "inspect", ids[0]], capture_output=True, check=True).stdout
    return bool(json.loads(out)[0]["State"]["Paused"])


@BOTH
async def test_pause_stops_the_output_and_resume_continues_it(
    api: BerthClient, cluster: Cluster, pool: str
) -> None:
    job = await api.submit_job(spec(TICKER, pool, cpu=0.25))
    await wait_state(api, job.id, {"running"})
    await poll(lambda: _has_ticks(api, cluster, job.id, 3), 60, what="the first ticks")
    node = await node_named(api, pool)

    paused = await _act(api, job.id, "pause")
    assert paused.state == "paused"
    if pool == "docker":
        await poll(lambda: asyncio.to_thread(_container_paused, job.id), 30, what="docker pause")
    before = await _settled_log(api, cluster, job.id)
    await asyncio.sleep(QUIET_WINDOW_S)  # an observation window: nothing may arrive in it
    assert await _log(api, cluster, job.id) == before
    job_now = await api.get_job(job.id)
    assert job_now.state == "paused"
    # Its resources stay with it while it is paused.
    held = await api.get_node(node.id)
    assert job.id in held.running_jobs
    assert held.allocated.cpu >= 0.25

    resumed = await _act(api, job.id, "resume")
    assert resumed.state == "running"
    last = _ticks(before)[-1]
    await poll(lambda: _has_ticks(api, cluster, job.id, last + 3), 60, what="ticks to resume")
    if pool == "docker":
        assert await asyncio.to_thread(_container_paused, job.id) is False
    ticks = _ticks(await _log(api, cluster, job.id))
    # The same process went on where it stopped: no tick lost, none repeated.
    assert ticks == list(range(1, len(ticks) + 1))
    await api.cancel_job(job.id)
    assert (await wait_done(api, job.id, timeout=60)).state == "cancelled"


async def _has_ticks(api: BerthClient, cluster: Cluster, job_id: str, n: int) -> bool:
    ticks = _ticks(await _log(api, cluster, job_id))
    return bool(ticks) and ticks[-1] >= n


async def test_paused_time_counts_toward_the_timeout(api: BerthClient, cluster: Cluster) -> None:
    job = await api.submit_job(spec(TICKER, "docker", timeout_s=6))
    await wait_state(api, job.id, {"running"})
    await _act(api, job.id, "pause")
    observed: list[bool | None] = []

    def paused_or_gone() -> bool:
        observed.append(_container_paused(job.id))
        return observed[-1] is not False

    await poll(lambda: asyncio.to_thread(paused_or_gone), 60, what="docker pause")
    done = await wait_done(api, job.id, timeout=60)
    assert True in observed, "the container was never seen paused"
    assert done.state == "timed_out"
    # Stopped by its agent at its timeout, not by the scheduler's later backstop.
    assert done.error == "timed out after 6 s"


# --- checkpoints -----------------------------------------------------------------------

RESUMABLE = (
    'if [ -f "$BERTH_CHECKPOINT/state" ]; then echo "restored: $(cat "$BERTH_CHECKPOINT/state")"; '
    "exit 0; fi; "
    'echo "written by attempt $BERTH_ATTEMPT" > "$BERTH_CHECKPOINT/state"; echo ready; sleep 60'
)


@BOTH
async def test_checkpoint_of_a_timed_out_attempt_is_restored_in_the_next(
    api: BerthClient, cluster: Cluster, pool: str
) -> None:
    job = await api.submit_job(spec(RESUMABLE, pool, timeout_s=3, max_retries=1, retry_delay_s=0))
    done = await wait_done(api, job.id, timeout=90)
    assert (done.state, done.attempt) == ("completed", 2), done.error
    assert [a.state for a in done.attempts] == ["timed_out"]
    assert done.checkpoint is not None and done.checkpoint_attempt == 1
    assert await job_logs(api, cluster.sched, done) == b"restored: written by attempt 1\n"


async def test_checkpoint_of_a_cancelled_attempt_is_restored_by_a_retry(
    api: BerthClient, cluster: Cluster
) -> None:
    job = await api.submit_job(spec(RESUMABLE, "docker"))
    await wait_state(api, job.id, {"running"})
    await poll(lambda: _logged(api, cluster, job.id, b"ready\n"), 60, what="the job to be ready")
    await api.cancel_job(job.id)
    await wait_done(api, job.id)

    async def checkpointed() -> Job | None:
        current = await api.get_job(job.id)
        return current if current.checkpoint is not None else None

    await poll(checkpointed, 60, what="the cancelled attempt's checkpoint")
    await _act(api, job.id, "retry")
    done = await wait_done(api, job.id, timeout=60)
    assert (done.state, done.attempt) == ("completed", 2), done.error
    assert await job_logs(api, cluster.sched, done) == b"restored: written by attempt 1\n"


async def _logged(api: BerthClient, cluster: Cluster, job_id: str, text: bytes) -> bool:
    return text in await _log(api, cluster, job_id)


async def test_checkpoints_are_uploaded_while_the_job_runs_and_when_it_is_paused(
    api: BerthClient, cluster: Cluster
) -> None:
    script = "i=0; while :; do i=$((i+1)); echo $i > /checkpoint/counter; sleep 0.3; done"
    job = await api.submit_job(spec(script, "docker", checkpoint_interval_s=1))
    await wait_state(api, job.id, {"running"})
    seen: set[str] = set()

    async def several() -> bool:
        current = await api.get_job(job.id)
        if current.checkpoint is not None:
            seen.add(current.checkpoint)
        return len(seen) >= 2

    await poll(several, 60, what="two periodic checkpoints")
    await _act(api, job.id, "pause")
    # Once paused, the counter stands still: the last upload holds its final value and
    # later rounds find nothing new to send.
    await poll(lambda: asyncio.to_thread(_container_paused, job.id), 30, what="docker pause")
    await _settled_checkpoint(api, job.id)
    await api.cancel_job(job.id)
    assert (await wait_done(api, job.id, timeout=60)).state == "cancelled"


async def _settled_checkpoint(api: BerthClient, job_id: str) -> str:
    """The job's checkpoint once it stopped changing (three reads a second apart)."""
    history: list[str | None] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        history.append((await api.get_job(job_id)).checkpoint)
        if len(history) >= 3 and history[-1] is not None and len(set(history[-3:])) == 1:
            return history[-1]
        await asyncio.sleep(1.0)
    raise AssertionError(f"the checkpoint of a paused job kept changing: {history}")


# --- resource use ----------------------------------------------------------------------


@BOTH
async def test_usage_shows_the_memory_of_a_running_job(api: BerthClient, pool: str) -> None:
    # About 8 MiB held in a shell variable by a shell that stays (a last command alone
    # may replace the shell).
    script = "a=$(head -c 8000000 /dev/zero | tr '\\0' x); echo held; while :; do sleep 1; done"
    job = await api.submit_job(spec(script, pool, memory_mb=128))
    await wait_state(api, job.id, {"running"})

    async def sampled() -> Job | None:
        current = await api.get_job(job.id)
        usage = current.usage
        return current if usage is not None and usage.memory_mb >= 4 else None

    running = await poll(sampled, 60, what="a usage sample with the job's memory")
    assert running.usage is not None
    assert running.usage.peak_memory_mb >= running.usage.memory_mb > 0
    assert running.usage.cpu_percent >= 0
    await api.cancel_job(job.id)
    await wait_done(api, job.id, timeout=60)
