"""The state directory's disk fills up under a running scheduler.

The state directory is a small tmpfs mounted for the test (so the test runs as root;
under CI=true not being root is a failure). A filler file on it takes the space away
in steps, and deleting it gives the space back:

1. a blob larger than the space left: 503, nothing left behind;
2. free space under the reserve: clients' writes are refused up front with 503 and
   change nothing, reads work, /readyz says not ready, agents' bookkeeping goes on;
3. no space at all: the store's commit fails (503, "database or disk is full"), and
   from then on every write is refused until the store writes again;
4. space returns: writes succeed again without a restart, and what the failed commit
   held (already in memory) is written, so memory and disk agree;
5. after a restart everything acknowledged is there, the event log has no hole, and
   SQLite's integrity check says ok.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scheduler.writeguard import default_reserve
from tests.chaos.conftest import Figures
from tests.support import Api, SchedulerProcess, SimAgent, free_bytes, small_tmpfs, wait_until

#: size of the state directory's file system
TMPFS_SIZE = "16m"
MIB = 1024 * 1024
#: progress reports sent at most while waiting for the store to fail
MAX_FILLING_REPORTS = 4000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE mounted for the test, unmounted after it."""
    with small_tmpfs(tmp_path / "state", TMPFS_SIZE, "the disk-full test") as mnt:
        yield mnt


def _fill(filler: Path, leave: int) -> None:
    """Grow ``filler`` until its file system has about ``leave`` bytes free (0: none)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while (want := free_bytes(filler.parent) - leave) > 0:
            try:
                os.write(fd, b"\0" * min(want, MIB))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


def _spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "berth-test/busybox:1",
        "command": ["true"],
        "resources": {"cpu": 0.1, "memory_mb": 16},
    }


def _error(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and "error" in body, body
    err: dict[str, Any] = body["error"]
    return err


async def test_full_state_disk_refuses_writes_with_503_and_service_resumes(
    small_disk: Path, figures: Figures
) -> None:
    sched = SchedulerProcess(
        small_disk, "--heartbeat-interval", "1", "--node-ttl", "120", "--restart-grace", "120"
    )
    try:
        sched.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await _scenario(http, sched, small_disk, figures)
    finally:
        sched.kill()


async def _scenario(
    http: aiohttp.ClientSession, sched: SchedulerProcess, state: Path, fig: Figures
) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    agent = SimAgent(http, sched.url, sched.join_token, "disk", cpu=64, memory_mb=65536)
    agent.max_parallel = 64
    await agent.register()
    filler = state / "filler"
    st = os.statvfs(state)
    reserve = default_reserve(st.f_blocks * st.f_frsize)
    acked: dict[str, str] = {}
    refused: list[str] = []

    async def submit(name: str) -> tuple[int, Any]:
        fig.jobs += 1
        status, body = await admin.post(
            "/api/v1/jobs", _spec(name), headers={"Idempotency-Key": name}
        )
        if status in (200, 201):
            acked[name] = body["id"]
            fig.acknowledged += 1
        return status, body

    async def run_all(names: list[str]) -> None:
        """The agent takes the jobs' assignments and reports them completed."""
        ids = {acked[n] for n in names}
        await wait_until(lambda: _polled(agent, ids), timeout=15, interval=0.05)
        for job_id in ids:
            status, body = await agent.report(job_id, "completed", exit_code=0)
            assert status == 200, body

    # Plenty of space: jobs are taken and run.
    before = [f"before-{i}" for i in range(20)]
    for name in before:
        status, body = await submit(name)
        assert status == 201, body
    await run_all(before)

    # 1. A blob bigger than the space left fails with 503, not 500, and leaves nothing.
    _fill(filler, leave=reserve + MIB)
    fig.faults += 1
    status, body = await admin.call("POST", "/api/v1/blobs", data=os.urandom(3 * MIB))
    assert status == 503, body
    assert _error(body)["code"] == "unavailable"
    assert "full" in _error(body)["message"], body
    assert not any((state / "blobs" / "tmp").glob("*")), "a partial blob was left behind"
    status, body = await submit("above-reserve")
    assert status == 201, body
    await wait_until(lambda: _polled(agent, {acked["above-reserve"]}), timeout=15)
    status, body = await agent.report(acked["above-reserve"], "running")
    assert status == 200, body

    # 2. Under the reserve: clients' writes are refused before anything changes.
    _fill(filler, leave=reserve // 2)
    for i in range(5):
        name = f"refused-{i}"
        status, body = await submit(name)
        assert status == 503, body
        assert _error(body)["code"] == "unavailable"
        assert "reserve" in _error(body)["details"]["cause"], body
        refused.append(name)
    status, body = await admin.post(f"/api/v1/jobs/{acked['before-0']}/retry")
    assert status == 503, body
    status, body = await admin.get("/api/v1/jobs", params={"limit": 1000})
    assert status == 200, body
    listed = {j["name"] for j in body["jobs"]}
    assert not listed & set(refused), "a refused submit left a job behind"
    assert set(acked) <= listed
    status, body = await admin.get("/readyz")
    assert status == 503 and "reserve" in body["cause"], body
    await agent.heartbeat()  # the agent's bookkeeping still goes through
    status, body = await agent.api.call(
        "POST",
        f"/api/v1/nodes/{agent.node_id}/jobs/{acked['above-reserve']}/logs",
        data=b"a line of output\n",
        params={"attempt": 1, "offset": 0},
    )
    assert status == 503 and "reserve" in _error(body)["message"], body
    refused.append("a log append")

    # 3. No space at all: a commit fails; from then on every write is refused.
    _fill(filler, leave=0)
    fig.faults += 1
    job_id = acked["above-reserve"]
    failed_message = None
    for i in range(MAX_FILLING_REPORTS):
        # Progress messages are capped at 1,024 characters: send the largest allowed.
        message = f"{i:06d} " + "x" * 1000
        status, body = await agent.report(job_id, None, progress={"percent": 1, "message": message})
        if status == 503:
            failed_message = message
            fig.extra["reports_until_the_store_failed"] = i
            break
        assert status == 200, body
    assert failed_message is not None, "the store never failed on a full disk"
    assert _error(body)["code"] == "unavailable"
    store_cause = _error(body)["details"]["cause"]
    assert "full" in store_cause, body
    fig.extra["store_failure"] = store_cause
    status, body = await agent.report(job_id, "completed", exit_code=0)
    assert status == 503, body
    assert "cannot be written" in _error(body)["message"], body
    status, body = await submit("refused-while-failing")
    assert status == 503, body
    refused.append("refused-while-failing")
    status, body = await admin.get(f"/api/v1/jobs/{acked['before-1']}")
    assert status == 200 and body["state"] == "completed", body
    status, body = await admin.get("/readyz")
    assert status == 503 and "cannot be written" in body["cause"], body

    # 4. Space returns: the store writes again by itself, without a restart.
    filler.unlink()
    await wait_until(_ready(admin), timeout=15, interval=0.1)
    status, body = await agent.report(job_id, "completed", exit_code=0)
    assert status == 200, body
    after = [f"after-{i}" for i in range(10)]
    for name in after:
        status, body = await submit(name)
        assert status == 201, body
    await run_all(after)

    # 5. After a restart everything acknowledged is there, and nothing else.
    sched.kill()
    fig.faults += 1
    sched.start()
    admin.token = sched.admin_token
    for ident in acked.values():
        status, body = await admin.get(f"/api/v1/jobs/{ident}")
        if status != 200 or body["state"] != "completed":
            fig.losses += 1
        else:
            fig.terminal += 1
    status, body = await admin.get("/api/v1/jobs", params={"limit": 1000})
    names = [j["name"] for j in body["jobs"]]
    fig.duplicates = len(names) - len(set(names))
    assert not set(names) & set(refused)
    fig.extra["refused_writes"] = len(refused)
    assert (fig.losses, fig.duplicates) == (0, 0)
    # What the failed commit held was written once the disk had room again.
    status, body = await admin.get(f"/api/v1/jobs/{job_id}")
    assert body["progress"]["message"] == failed_message
    sched.stop()
    _check_database(state / "berth.db")


def _polled(agent: SimAgent, ids: set[str]) -> Any:
    async def check() -> bool:
        await agent.poll()
        return ids <= set(agent.running)

    return check()


def _ready(admin: Api) -> Any:
    async def check() -> bool:
        status, _ = await admin.get("/readyz")
        return status == 200

    return check


def _check_database(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
        assert verdict == "ok", verdict
        row = conn.execute("SELECT COUNT(*), MIN(idx), MAX(idx) FROM events").fetchone()
        count, low, high = row
        assert count == high - low + 1, f"events missing: {count} between {low} and {high}"
    finally:
        with contextlib.suppress(Exception):
            conn.close()
