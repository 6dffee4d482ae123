"""Prometheus metrics reflect the state and count what happens."""

from __future__ import annotations

import aiohttp

from tests.support import Api, SchedulerProcess, SimAgent


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def test_metrics_show_jobs_nodes_placements_and_requests(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = SimAgent(http, sched.url, sched.join_token, "a", max_parallel=1)
    await a.register()
    for _ in range(3):
        await admin.post("/api/v1/jobs", {"image": "busybox"})
    await a.poll(wait=5)
    async with http.get(
        f"{sched.url}/metrics", headers={"Authorization": f"Bearer {sched.admin_token}"}
    ) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    assert _value(text, 'berth_jobs{state="queued"}') == 2
    assert _value(text, 'berth_jobs{state="assigned"}') == 1
    assert _value(text, "berth_queue_depth") == 2
    assert _value(text, 'berth_nodes{state="busy"}') == 1
    assert _value(text, "berth_placements_total") == 1
    assert _value(text, 'berth_events_total{type="job.created"}') == 3
    assert _value(text, "berth_placement_pass_seconds_count") >= 1
    assert (
        _value(text, 'berth_http_requests_total{method="POST",route="/api/v1/jobs",status="201"}')
        == 3
    )
    assert 'berth_heartbeat_lag_seconds{node="a"}' in text


async def test_metrics_need_a_token(sched: SchedulerProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sched.url}/metrics") as r:
        assert r.status == 401
