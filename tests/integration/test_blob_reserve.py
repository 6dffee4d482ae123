"""Concurrent uploads cannot together fill the state directory's disk.

The state directory is a small tmpfs mounted for the test (root only; CI runs as root
and may not skip). Three uploads start at once, each small enough to pass a check of
the free space at its start, together eating into the reserve kept for the scheduler's
own bookkeeping; while they are written, and after, another user submits jobs. Each
upload reserves its declared size as it starts, so the one that does not fit is
refused before its body is read, those accepted are stored, and the other user's
writes are never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scheduler.writeguard import default_reserve
from tests.support import Api, SchedulerProcess, free_bytes, small_tmpfs, wait_until

TMPFS_SIZE = 64 * 1024 * 1024
UPLOADS = 3
#: how long the test waits for a refusal while every upload holds back its body
REFUSAL_WAIT_S = 10.0
CHUNK = 256 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE mounted for the test, unmounted after it."""
    with small_tmpfs(tmp_path / "state", TMPFS_SIZE, "the upload reservation test") as mnt:
        yield mnt


async def _slow_body(size: int, gate: asyncio.Event) -> AsyncIterator[bytes]:
    """A body that sends one chunk, then holds the rest back until ``gate`` opens."""
    yield os.urandom(CHUNK)
    await gate.wait()
    sent = CHUNK
    while sent < size:
        n = min(CHUNK, size - sent)
        yield os.urandom(n)
        sent += n


async def _upload(
    http: aiohttp.ClientSession, url: str, token: str, size: int, gate: asyncio.Event
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Length": str(size)}
    try:
        async with http.post(
            f"{url}/api/v1/blobs", data=_slow_body(size, gate), headers=headers
        ) as r:
            return r.status, await r.json(content_type=None)
    except aiohttp.ClientError as e:
        # The scheduler answered and closed before the body was sent in full.
        return -1, repr(e)


async def test_concurrent_uploads_reserve_their_size_and_cannot_fill_the_disk(
    small_disk: Path,
) -> None:
    sched = SchedulerProcess(small_disk, "--log-level", "warning").start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await _scenario(http, sched, small_disk)
    finally:
        sched.kill()


async def _scenario(http: aiohttp.ClientSession, sched: SchedulerProcess, state: Path) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    tokens = []
    for name in ("alice", "bob", "carol", "dave"):
        status, made = await admin.post("/api/v1/tokens", {"role": "submit", "name": name})
        assert status == 201, made
        tokens.append(made["token"])
    dave = Api(http, sched.url, tokens[3])
    st = os.statvfs(state)
    reserve = default_reserve(st.f_blocks * st.f_frsize)
    usable = free_bytes(state) - reserve
    # Two fit in what is above the reserve; three together would leave half the reserve.
    size = (usable + reserve // 2) // UPLOADS + 1

    gate = asyncio.Event()
    uploads = [
        asyncio.create_task(_upload(http, sched.url, tokens[i], size, gate)) for i in range(UPLOADS)
    ]
    # On a scheduler that reserves nothing, no upload is refused at its start.
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: any(u.done() for u in uploads), timeout=REFUSAL_WAIT_S)
    refused_at_start = sum(u.done() for u in uploads)

    # Another user's writes while the uploads are written.
    submits: list[int] = []

    async def keep_submitting() -> None:
        while not all(u.done() for u in uploads):
            status, _ = await dave.post("/api/v1/jobs", {"image": "busybox"})
            submits.append(status)

    writer = asyncio.create_task(keep_submitting())
    gate.set()
    results = await asyncio.gather(*uploads)
    await writer
    status, _ = await dave.post("/api/v1/jobs", {"image": "busybox"})
    submits.append(status)

    stored = [r for r in results if r[0] == 201]
    refused = [r for r in results if r[0] != 201]
    figures = {
        "upload_mib": round(size / 2**20, 1),
        "usable_mib": round(usable / 2**20, 1),
        "refused_at_start": refused_at_start,
        "stored": len(stored),
        "refused": [r[0] for r in refused],
        "submits": len(submits),
        "submits_refused": sum(s != 201 for s in submits),
        "free_after_mib": round(free_bytes(state) / 2**20, 1),
    }
    print(f"\nupload reservation figures: {figures}")
    assert refused_at_start == 1, figures
    assert len(stored) == 2, figures
    assert refused[0][0] == 503 and "reserved" in refused[0][1]["error"]["message"], figures
    assert figures["submits_refused"] == 0, figures
    assert free_bytes(state) >= reserve, figures
