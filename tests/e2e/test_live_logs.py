"""A running container seen live: its output and its progress reach followers while it
runs, not only when it ends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from common.client import BerthClient
from tests.e2e.conftest import Cluster, spec, wait_done

pytestmark = pytest.mark.docker

#: the job prints a line every 0.3 s for 4.5 s
LINES = 15
TICKING = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.3; done"
#: ten progress lines, 0.3 s apart
PROGRESSING = (
    "for i in 1 2 3 4 5 6 7 8 9 10; do "
    'echo "::progress::$((i * 10)) step $i"; sleep 0.3; done; echo done'
)


async def test_log_lines_reach_a_follower_while_the_container_runs(
    api: BerthClient, cluster: Cluster
) -> None:
    job = await api.submit_job(spec(TICKING, "docker"))
    arrivals: list[tuple[float, bytes]] = []

    async def follow() -> None:
        async for chunk in api.follow_logs(job.id, attempt=1):
            arrivals.append((time.time(), chunk))

    await asyncio.wait_for(follow(), 120)
    done = await wait_done(api, job.id)
    assert done.state == "completed", done.error
    assert done.finished_at is not None
    output = b"".join(chunk for _, chunk in arrivals)
    assert output == b"".join(f"line {i}\n".encode() for i in range(1, LINES + 1))

    # Lines arrived in several batches spread over the run; the first ones seconds
    # before the container ended.
    finished = done.finished_at.timestamp()
    early = [t for t, _ in arrivals if t < finished - 1.0]
    assert arrivals[0][0] < finished - 2.0, (arrivals[0][0], finished)
    assert len(early) >= 3, [round(finished - t, 2) for t, _ in arrivals]


async def test_progress_lines_arrive_as_progress_events_while_the_container_runs(
    api: BerthClient, cluster: Cluster
) -> None:
    job = await api.submit_job(spec(PROGRESSING, "docker"))
    progress: list[tuple[float, dict[str, Any]]] = []

    async def watch() -> None:
        async for event in api.stream_events(job_id=job.id, since=0):
            if event["type"] == "job.progress":
                progress.append((time.time(), event))
            if event["type"] == "job.state" and event["data"]["state"] in (
                "completed",
                "failed",
                "cancelled",
                "timed_out",
            ):
                return

    await asyncio.wait_for(watch(), 120)
    done = await wait_done(api, job.id)
    assert done.state == "completed", done.error
    assert done.finished_at is not None
    assert done.progress is not None and done.progress.percent == 100.0

    # The agent sends progress at most every 0.5 s: several of the ten, in order.
    percents = [e["data"]["percent"] for _, e in progress]
    assert len(percents) >= 3, percents
    assert percents == sorted(percents) and all(p % 10 == 0 for p in percents)
    for _, e in progress:
        assert e["job_id"] == job.id
        assert e["data"]["message"] == f"step {int(e['data']['percent']) // 10}"
    finished = done.finished_at.timestamp()
    assert progress[0][0] < finished - 1.0, (progress[0][0], finished)
    assert sum(t < finished - 0.5 for t, _ in progress) >= 2
