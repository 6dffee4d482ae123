"""Restart time and memory per retained job with 100,000 jobs in the store.

Fills a state directory through the store (the same code path the scheduler writes
with), then starts a real `berth scheduler` process on it and measures:

- restart_s: process start until /readyz answers 200 (median of several starts)
- memory_per_job_bytes: (RSS with the jobs loaded - RSS with an empty store) / jobs

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.models import Job, JobResources, JobSpec
from common.states import JobState
from scheduler.store.base import Changes
from scheduler.store.sqlite import SQLiteStore
from tests.support import SchedulerProcess


def make_job(i: int) -> Job:
    spec = JobSpec(
        image="registry.example/team/etl-worker:2.4.1",
        name=f"nightly-etl-{i}",
        command=["python", "-m", "etl.run", f"--shard={i % 64}"],
        env={"STAGE": "prod", "SHARD": str(i % 64)},
        resources=JobResources(cpu=1.0, memory_mb=512),
        labels={"team": "data"},
    )
    now = datetime.now(UTC)
    done = i % 10 != 0
    return Job(
        id=f"{(1_700_000_000_000 << 10) + i:014x}",
        name=spec.name,
        state=JobState.COMPLETED if done else JobState.QUEUED,
        spec=spec,
        created_at=now,
        assigned_at=now if done else None,
        started_at=now if done else None,
        finished_at=now if done else None,
        exit_code=0 if done else None,
        node_id="n0123456789abcd" if done else None,
        index=i + 1,
    )


async def fill(state_dir: Path, n: int) -> None:
    store = SQLiteStore(state_dir / "berth.db")
    await store.open()
    for start in range(0, n, 10_000):
        changes = Changes()
        for i in range(start, min(n, start + 10_000)):
            job = make_job(i)
            changes.jobs[job.id] = job
        await store.commit(changes)
    await store.close()


def ready_time(state_dir: Path) -> tuple[float, int]:
    proc = SchedulerProcess(state_dir, "--log-level", "warning")
    t0 = time.perf_counter()
    proc.start(timeout=120)
    while True:
        try:
            with urllib.request.urlopen(f"{proc.url}/readyz", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    assert proc.proc is not None
    time.sleep(0.5)
    rss = psutil.Process(proc.proc.pid).memory_info().rss
    proc.stop()
    return elapsed, int(rss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        full = Path(tmp) / "full"
        full.mkdir()
        t0 = time.perf_counter()
        asyncio.run(fill(full, args.jobs))
        fill_s = time.perf_counter() - t0
        empty_runs = [ready_time(empty) for _ in range(args.runs)]
        full_runs = [ready_time(full) for _ in range(args.runs)]
    empty_rss = statistics.median(r for _, r in empty_runs)
    full_rss = statistics.median(r for _, r in full_runs)
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "runs": args.runs,
                "fill_s": round(fill_s, 3),
                "fill_jobs_per_s": round(args.jobs / fill_s),
                "restart_s_empty_median": round(statistics.median(t for t, _ in empty_runs), 3),
                "restart_s_median": round(statistics.median(t for t, _ in full_runs), 3),
                "rss_empty_mb": round(empty_rss / 2**20, 1),
                "rss_loaded_mb": round(full_rss / 2**20, 1),
                "memory_per_job_bytes": round((full_rss - empty_rss) / args.jobs),
                "targets": {"restart_s": 3, "memory_per_job_bytes": 2048},
            }
        )
    )


if __name__ == "__main__":
    main()
