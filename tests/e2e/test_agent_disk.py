"""A job cannot fill its agent's disk: with its output, its writable layer or its workspace.

A ``disk`` agent (docker executor, ``--max-job-disk-mb 64``) runs jobs that write far
more than they may: 200 MiB to stdout (the scheduler keeps 10 MiB of a log), and
200 MiB into the container's own filesystem or its workspace.
"""

from __future__ import annotations

import asyncio
import glob
import json
import subprocess

import pytest

from agent.config import LOG_HEAD_BYTES, LOG_TAIL_BYTES
from agent.runner import OUTPUT_DROPPED_MARKER
from common.client import BerthClient
from tests.e2e.conftest import (
    Cluster,
    containers,
    job_logs,
    poll,
    spec,
    wait_done,
    wait_for_nodes,
    wait_state,
)

pytestmark = pytest.mark.docker

#: the ``disk`` agent's --max-job-disk-mb
LIMIT_MB = 64
#: what the flooding jobs write
FLOOD_MB = 200
#: the scheduler's per-attempt log cap (scheduler.state.agents.LOG_CAP_BYTES)
LOG_CAP = 10 * 1024 * 1024
#: the most a container's json log files may hold on disk (agent.config: 3 x 32 MiB)
LOG_FILES_BOUND = 3 * 32 * 1024 * 1024
LAST_LINE = "the-last-line-of-output"


@pytest.fixture(scope="module")
def disk_agent(cluster: Cluster) -> str:
    if "disk" not in cluster.agents:
        cluster.add_agent(
            "disk",
            "--executor",
            "docker",
            "--max-parallel",
            "2",
            "--label",
            "pool=disk",
            "--max-job-disk-mb",
            str(LIMIT_MB),
        )
    return "disk"


def _log_files_bytes(container: str) -> int:
    """Bytes of a container's json log files, rotated ones included (0 when gone)."""
    out = subprocess.run(
        ["docker", "inspect", container], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        return 0
    path = json.loads(out.stdout)[0].get("LogPath") or ""
    total = 0
    for name in glob.glob(glob.escape(path) + "*") if path else []:
        try:
            with open(name, "rb") as f:
                total += f.seek(0, 2)
        except OSError:
            pass
    return total


async def test_a_flood_of_output_keeps_bounded_log_files_and_ships_the_head_and_tail(
    api: BerthClient, cluster: Cluster, disk_agent: str
) -> None:
    await wait_for_nodes(api, [disk_agent], timeout=60)
    line = "0123456789abcdef" * 4
    script = (
        f"yes {line} | head -c {FLOOD_MB * 1024 * 1024}; echo {LAST_LINE}; "
        # Time for the test to measure the log files before the container goes.
        "sleep 4"
    )
    job = await api.submit_job(spec(script, "disk", cpu=0.5, memory_mb=64, timeout_s=300))
    await wait_state(api, job.id, {"running"}, timeout=60)
    biggest = 0
    while (await api.get_job(job.id)).state == "running":
        for cid in containers(f"berth.job={job.id}"):
            biggest = max(biggest, _log_files_bytes(cid))
        await asyncio.sleep(0.2)  # the next measurement
    done = await wait_done(api, job.id, timeout=120)
    log = await job_logs(api, cluster.sched, done)
    agent_log = cluster.agents[disk_agent].log_text()
    print(f"log files at most {biggest} bytes; {len(log)} bytes stored")
    assert done.state == "completed", done.error
    assert 0 < biggest <= LOG_FILES_BOUND, f"json log files grew to {biggest} bytes"
    assert len(log) <= LOG_CAP
    head = log[: len(line) + 1]
    assert head == (line + "\n").encode()
    # The agent said where it stopped, and the end of the output is there after it.
    assert b"[berth: output past " in log
    assert b"[berth: output was dropped here; the last " in log
    assert log.rstrip().endswith(LAST_LINE.encode()), log[-300:]
    assert f"stopped reading the output of {job.id}" in agent_log


async def _disk_job(api: BerthClient, script: str) -> tuple[str, str | None, str]:
    job = await api.submit_job(spec(script, "disk", cpu=0.5, memory_mb=64, timeout_s=120))
    done = await wait_done(api, job.id, timeout=120)
    return done.state, done.error, job.id


@pytest.mark.parametrize("where", ["/tmp", "/workspace"])
async def test_a_job_writing_past_its_disk_quota_fails_with_the_reason(
    api: BerthClient, cluster: Cluster, disk_agent: str, where: str
) -> None:
    await wait_for_nodes(api, [disk_agent], timeout=60)
    # Writes 200 MiB in 1 MiB files, then waits for the agent to notice.
    script = (
        f"i=0; while [ $i -lt {FLOOD_MB} ]; do "
        f"  dd if=/dev/zero of={where}/f$i bs=1048576 count=1 2>/dev/null; i=$((i+1)); "
        "done; echo wrote all; sleep 30; echo survived"
    )
    state, error, job_id = await _disk_job(api, script)
    print(f"{where}: {state}: {error}")
    assert state == "failed"
    assert error is not None
    assert error.startswith("disk quota exceeded: wrote "), error
    assert error.endswith(f" MiB, limit {LIMIT_MB} MiB"), error
    wrote = int(error.split("wrote ")[1].split(" MiB")[0])
    assert wrote > LIMIT_MB
    await poll(lambda: not containers(f"berth.job={job_id}", all_states=True), 30, what="removal")
    # Under the limit a job completes.
    state, error, _ = await _disk_job(
        api, f"dd if=/dev/zero of={where}/small bs=1048576 count=8 2>/dev/null; echo ok"
    )
    assert (state, error) == ("completed", None)


async def test_the_process_executor_reads_a_flood_through_and_ships_its_head_and_tail(
    api: BerthClient, cluster: Cluster
) -> None:
    await wait_for_nodes(api, ["process"], timeout=60)
    line = "0123456789abcdef" * 4
    flood = 20 * 1024 * 1024
    script = f"yes {line} | head -c {flood}; echo {LAST_LINE}"
    job = await api.submit_job(spec(script, "process", timeout_s=300))
    done = await wait_done(api, job.id, timeout=120)
    log = await job_logs(api, cluster.sched, done)
    assert done.state == "completed", done.error
    assert len(log) <= LOG_CAP
    assert log.startswith((line + "\n").encode())
    # The pipe was read to its end (the job was not blocked), and what was dropped counted.
    written = flood + len(LAST_LINE) + 1
    dropped = written - LOG_HEAD_BYTES - LOG_TAIL_BYTES
    marker = OUTPUT_DROPPED_MARKER % (dropped, LOG_TAIL_BYTES)
    assert marker in log
    assert log.endswith(f"{LAST_LINE}\n".encode())
    assert len(log.split(marker)[1]) == LOG_TAIL_BYTES
