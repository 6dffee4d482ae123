"""Berth's real agent path against the machine's limit for short jobs.

A real scheduler process and one real agent process (process executor,
``--max-parallel 2``) drain N trivial jobs (``true``, 1 CPU, 50 MiB) submitted one
request at a time; the same N ``true`` processes started two at a time by
``xargs -P2`` are the limit. One JSON object:

- berth_wall_s: from the first submit until every job is reported completed
- xargs_wall_s: the same N processes through ``xargs -P2``
- berth_jobs_per_s, xargs_jobs_per_s, and ratio = xargs_wall_s / berth_wall_s
  (the share of the machine's limit Berth reaches; target >= 0.25)
- scheduler_cpu_ms_per_job, agent_cpu_ms_per_job: CPU time (user + system) of the
  scheduler and of the agent (its jobs' processes apart) per job while Berth ran;
  unlike wall time, barely moved by other load on a shared host

The two alternate in rounds (``--rounds``) so that drifting load on a shared host
weighs on both alike; the wall times are sums over the rounds, and the per-round
ratios' median is printed too.

Usage: python bench/agent_path.py [--jobs 1000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.client import BerthClient
from common.models import JobResources, JobSpec
from tests.e2e.conftest import AgentProcess, wait_for_nodes
from tests.support import SchedulerProcess

PARALLEL = 2
SUBMIT_S: list[float] = []
WARMUP = 10


def cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of a process itself (not of its children)."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def xargs_runs(count: int) -> float:
    """Wall time of ``count`` ``true`` processes, PARALLEL at a time."""
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(PARALLEL), "-n", "1", "true"],
        input=b"x\n" * count,
        check=True,
    )
    return time.perf_counter() - start


async def berth_runs(api: BerthClient, count: int) -> float:
    """Wall time from the first submit until ``count`` jobs are completed."""
    spec = JobSpec(image="none", command=["true"], resources=JobResources(cpu=1, memory_mb=50))
    before = (await api.stats()).jobs.get("completed", 0)
    start = time.perf_counter()
    for _ in range(count):
        await api.submit_job(spec)
    SUBMIT_S.append(time.perf_counter() - start)
    while True:
        stats = await api.stats()
        if stats.jobs.get("completed", 0) - before >= count:
            break
        if stats.jobs.get("failed", 0):
            raise RuntimeError(f"a job failed: {stats.jobs}")
        await asyncio.sleep(0.02)
    return time.perf_counter() - start


async def main(count: int, rounds: int) -> dict[str, object]:
    sizes = [count // rounds + (1 if r < count % rounds else 0) for r in range(rounds)]
    berth_s = xargs_s = sched_cpu = agent_cpu = 0.0
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sched = SchedulerProcess(root / "scheduler").start()
        agent = AgentProcess(
            sched, "bench", root / "bench", "--executor", "process", "--max-parallel", "2"
        )
        agent.extra = (*agent.extra, "--log-level", "warning")
        agent.start()
        try:
            async with BerthClient(sched.url, sched.admin_token) as api:
                await wait_for_nodes(api, ["bench"], timeout=60)
                assert sched.proc is not None and agent.proc is not None
                procs = psutil.Process(sched.proc.pid), psutil.Process(agent.proc.pid)
                await berth_runs(api, WARMUP)
                xargs_runs(WARMUP)
                for r, size in enumerate(sizes):
                    if r % 2 == 0:
                        x = await asyncio.to_thread(xargs_runs, size)
                    before = [cpu_s(p) for p in procs]
                    b = await berth_runs(api, size)
                    sched_cpu += cpu_s(procs[0]) - before[0]
                    agent_cpu += cpu_s(procs[1]) - before[1]
                    if r % 2:
                        x = await asyncio.to_thread(xargs_runs, size)
                    berth_s += b
                    xargs_s += x
                    ratios.append(x / b)
        finally:
            agent.kill()
            sched.kill()
    return {
        "jobs": count,
        "parallel": PARALLEL,
        "rounds": rounds,
        "executor": "process",
        "berth_wall_s": round(berth_s, 3),
        "xargs_wall_s": round(xargs_s, 3),
        "berth_jobs_per_s": round(count / berth_s, 1),
        "xargs_jobs_per_s": round(count / xargs_s, 1),
        "ratio": round(xargs_s / berth_s, 4),
        "scheduler_cpu_ms_per_job": round(sched_cpu / count * 1000, 3),
        "agent_cpu_ms_per_job": round(agent_cpu / count * 1000, 3),
        "median_round_ratio": round(statistics.median(ratios), 4),
        "target_ratio": 0.25,
        "submit_s": [round(x, 3) for x in SUBMIT_S],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of each")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.jobs, max(1, args.rounds)))))
