"""Berth's overhead over raw `docker run` for short container jobs.

Runs N short jobs (``true``) through Berth -- a real scheduler process and one real
agent process with ``--max-parallel 2`` on the docker executor -- and the same N as
``docker run --rm`` two at a time, in one run, and prints one JSON object:

- berth_wall_s: from the first submit until every job is reported completed
- docker_run_wall_s: the same N jobs as ``docker run --rm``, two at a time
- ratio: berth_wall_s / docker_run_wall_s (target <= 1.10)

Both sides run the same image with no network; Berth's containers also get its
limits (CPU quota, memory, pids, no capabilities). A few untimed jobs warm both up,
and the two alternate in rounds (``--rounds``) so that drifting load on a shared host
weighs on both alike; the wall times are the sums over the rounds.

Usage: python bench/docker_overhead.py [--jobs 100] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.client import BerthClient
from common.models import JobResources, JobSpec
from tests.e2e.conftest import AgentProcess, ensure_test_image, wait_for_nodes
from tests.support import SchedulerProcess

PARALLEL = 2
WARMUP = 4


def docker_runs(image: str, count: int) -> float:
    """Wall time of ``count`` ``docker run --rm`` calls, PARALLEL at a time."""

    def one(_: int) -> None:
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", image, "true"],
            check=True,
            capture_output=True,
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - start


async def berth_runs(api: BerthClient, image: str, count: int) -> float:
    """Wall time from the first submit until ``count`` jobs are completed."""
    spec = JobSpec(image=image, command=["true"], resources=JobResources(cpu=0.5, memory_mb=64))
    before = (await api.stats()).jobs.get("completed", 0)
    start = time.perf_counter()
    jobs = [await api.submit_job(spec) for _ in range(count)]
    while True:
        stats = await api.stats()
        if stats.jobs.get("completed", 0) - before >= count:
            break
        if stats.jobs.get("failed", 0):
            raise RuntimeError(f"a job failed: {stats.jobs}")
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - start
    assert len(jobs) == count
    return elapsed


async def main(count: int, rounds: int) -> dict[str, object]:
    image = ensure_test_image()
    sizes = [count // rounds + (1 if r < count % rounds else 0) for r in range(rounds)]
    berth_s = docker_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sched = SchedulerProcess(root / "scheduler").start()
        agent = AgentProcess(
            sched, "bench", root / "bench", "--executor", "docker", "--max-parallel", str(PARALLEL)
        )
        agent.extra = (*agent.extra, "--log-level", "warning")
        agent.start()
        try:
            async with BerthClient(sched.url, sched.admin_token) as api:
                await wait_for_nodes(api, ["bench"], timeout=60)
                await berth_runs(api, image, WARMUP)
                await asyncio.to_thread(docker_runs, image, WARMUP)
                # Alternate the two in rounds so that drifting load on the host hits both.
                for r, size in enumerate(sizes):
                    if r % 2:
                        berth_s += await berth_runs(api, image, size)
                        docker_s += await asyncio.to_thread(docker_runs, image, size)
                    else:
                        docker_s += await asyncio.to_thread(docker_runs, image, size)
                        berth_s += await berth_runs(api, image, size)
        finally:
            agent.kill()
            sched.kill()
    return {
        "jobs": count,
        "parallel": PARALLEL,
        "rounds": rounds,
        "berth_wall_s": round(berth_s, 3),
        "docker_run_wall_s": round(docker_s, 3),
        "ratio": round(berth_s / docker_s, 3),
        "target_ratio": 1.10,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of each")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.jobs, max(1, args.rounds)))))
