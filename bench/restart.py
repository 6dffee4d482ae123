"""Restart time and memory per retained job with 100,000 (or 1,000,000) jobs in the store.

Fills a state directory through the store (``SQLiteStore.commit``, the same code path
the scheduler writes with, 10,000 jobs per commit; nine jobs in ten have ended
(completed), the tenth is queued), then starts a real `berth scheduler` process on it
and measures:

- restart_s: process start until /readyz answers 200 (median of several starts)
- memory_per_job_bytes: (RSS with the jobs loaded - RSS with an empty store) / jobs
- bytes_per_ended_job: the same RSS difference / the number of ended jobs, since the
  ended jobs are what a long-lived scheduler retains most of

Prints one JSON object, with the targets (restart_s_median <= 10, bytes_per_ended_job
<= 512) and whether they were met.

Run: ``python bench/restart.py [--jobs 100000] [--runs 3]``; the large case is
``python bench/restart.py --jobs 1000000 --runs 1``.
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
    done = is_ended(i)
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


#: jobs per store commit while filling
FILL_BATCH = 10_000
TARGET_RESTART_S = 10.0
TARGET_BYTES_PER_ENDED_JOB = 512


def is_ended(i: int) -> bool:
    return i % 10 != 0


def ended_count(n: int) -> int:
    return sum(1 for i in range(n) if is_ended(i))


async def fill(state_dir: Path, n: int) -> None:
    store = SQLiteStore(state_dir / "berth.db")
    await store.open()
    for start in range(0, n, FILL_BATCH):
        changes = Changes()
        for i in range(start, min(n, start + FILL_BATCH)):
            job = make_job(i)
            changes.jobs[job.id] = job
        await store.commit(changes)
    await store.close()


def ready_time(state_dir: Path) -> tuple[float, int]:
    proc = SchedulerProcess(state_dir, "--log-level", "warning")
    t0 = time.perf_counter()
    proc.start(timeout=900)
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
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        db_bytes = sum(f.stat().st_size for f in full.iterdir() if f.name.startswith("berth.db"))
        empty_runs = [ready_time(empty) for _ in range(args.runs)]
        full_runs = [ready_time(full) for _ in range(args.runs)]
    empty_rss = statistics.median(r for _, r in empty_runs)
    full_rss = statistics.median(r for _, r in full_runs)
    ended = ended_count(args.jobs)
    restart_s = round(statistics.median(t for t, _ in full_runs), 3)
    per_ended = round((full_rss - empty_rss) / ended) if ended else None
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "runs": args.runs,
                "fill_s": round(fill_s, 3),
                "fill_jobs_per_s": round(args.jobs / fill_s),
                "restart_s_empty_median": round(statistics.median(t for t, _ in empty_runs), 3),
                "restart_s_median": restart_s,
                "restart_s_runs": [round(t, 3) for t, _ in full_runs],
                "ended_jobs": ended,
                "db_mb": round(db_bytes / 2**20, 1),
                "rss_empty_mb": round(empty_rss / 2**20, 1),
                "rss_loaded_mb": round(full_rss / 2**20, 1),
                "memory_per_job_bytes": round((full_rss - empty_rss) / args.jobs),
                "bytes_per_ended_job": per_ended,
                "targets": {
                    "restart_s_median": TARGET_RESTART_S,
                    "bytes_per_ended_job": TARGET_BYTES_PER_ENDED_JOB,
                    "restart_s_median_met": restart_s <= TARGET_RESTART_S,
                    "bytes_per_ended_job_met": per_ended is not None
                    and per_ended <= TARGET_BYTES_PER_ENDED_JOB,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
