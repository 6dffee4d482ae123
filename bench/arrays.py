"""A job array of N tasks submitted in one request: how long the submit takes, and
what reading it costs.

A real scheduler process (SQLite in a temporary state directory, or ``--store DSN``)
and a client over loopback. One JSON object:

- tasks: N (default 100,000, the most an array may have)
- submit_s: POST /api/v1/jobs with ``array: {count: N, max_concurrent: 100}`` until
  the 201 (every task queued and committed)
- summary_s: GET /api/v1/arrays/{id} (tasks counted by state)
- page_s: GET /api/v1/jobs?array=ID&limit=1000
- rss_mb_before, rss_mb_after: the scheduler's resident memory around the submit
- restart_s: SIGKILL, then start until the array reads back with N queued tasks
- rss_mb_restarted: resident memory once it does

Usage: python bench/arrays.py [--tasks 100000] [--store postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.client import BerthClient
from common.models import ArraySpec, JobResources, JobSpec
from tests.support import SchedulerProcess


def _rss_mb(proc: SchedulerProcess) -> float:
    assert proc.proc is not None
    return round(psutil.Process(proc.proc.pid).memory_info().rss / 2**20, 1)


async def _timed(coro: object) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = await coro  # type: ignore[misc]
    return round(time.perf_counter() - t0, 3), value


async def main(tasks: int, store: str | None) -> dict[str, object]:
    extra = ("--store", store) if store else ()
    with tempfile.TemporaryDirectory(prefix="berth-bench-arrays-") as tmp:
        sched = SchedulerProcess(Path(tmp) / "state", *extra).start()
        try:
            out: dict[str, object] = {"tasks": tasks, "store": "postgresql" if store else "sqlite"}
            spec = JobSpec(
                image="busybox",
                name="sweep",
                command=["sh", "-c", "echo $BERTH_ARRAY_INDEX"],
                resources=JobResources(cpu=0.1, memory_mb=16),
                array=ArraySpec(count=tasks, max_concurrent=100),
            )
            async with BerthClient(sched.url, token=sched.admin_token, timeout=600) as client:
                out["rss_mb_before"] = _rss_mb(sched)
                out["submit_s"], first = await _timed(client.submit_job(spec))
                array_id = first.id  # type: ignore[attr-defined]
                out["rss_mb_after"] = _rss_mb(sched)
                out["summary_s"], _ = await _timed(client.get_array(array_id))
                out["page_s"], _ = await _timed(client.list_jobs(array=array_id, limit=1000))
            sched.kill()
            t0 = time.perf_counter()
            sched.start(timeout=600)
            async with BerthClient(sched.url, token=sched.admin_token, timeout=600) as client:
                while True:
                    try:
                        summary = await client.get_array(array_id)
                    except Exception:
                        await asyncio.sleep(0.05)
                        continue
                    if summary.counts["queued"] == tasks:
                        break
                out["restart_s"] = round(time.perf_counter() - t0, 3)
                out["rss_mb_restarted"] = _rss_mb(sched)
            return out
        finally:
            sched.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--store", default=None, help="a PostgreSQL DSN (default: SQLite)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.tasks, args.store))))
