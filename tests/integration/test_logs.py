"""Job logs on a real scheduler process: appends by the agent route, reads of a range,
downloads, follows (chunked text and SSE with resume), earlier attempts, the size cap,
blocking queries, and `berth logs` run as a real command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from common.client import BerthClient
from tests.support import REPO, Api, SchedulerProcess, SimAgent, wait_until

SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 1, "memory_mb": 64}}
#: the jobs of these tests run on the module's worker, whatever other agents register
ON_WORKER = {**SPEC, "constraints": {"labels": {"pool": "logs"}}}
SSE = {"Accept": "text/event-stream"}
DEADLINE_S = 60.0
LOG_CAP = 10 * 1024 * 1024
MARKER = b"\n[berth: log truncated at 10 MiB]\n"


@dataclass
class Worker:
    """A simulated agent that keeps heartbeating, and helpers to run jobs on it."""

    agent: SimAgent
    admin: Api

    async def start(self, **spec: Any) -> str:
        """Submit a job and report it running; returns its id."""
        status, job = await self.admin.post("/api/v1/jobs", {**ON_WORKER, **spec})
        assert status == 201, job
        await self.take(job["id"])
        status, body = await self.agent.report(job["id"], "running")
        assert status == 200, body
        return str(job["id"])

    async def take(self, job_id: str) -> int:
        """Wait for the job's assignment to this agent; returns its attempt."""

        async def assigned() -> bool:
            await self.agent.poll(wait=1.0)
            return job_id in self.agent.running

        await wait_until(assigned, timeout=DEADLINE_S, interval=0.01)
        return self.agent.running[job_id]

    async def append(
        self, job_id: str, offset: int, data: bytes, attempt: int | None = None
    ) -> tuple[int, Any]:
        return await self.agent.api.call(
            "POST",
            f"/api/v1/nodes/{self.agent.node_id}/jobs/{job_id}/logs",
            data=data,
            params={
                "attempt": self.agent.running.get(job_id, 1) if attempt is None else attempt,
                "offset": offset,
            },
            headers={"Content-Type": "application/octet-stream"},
        )

    async def end(self, job_id: str, state: str, exit_code: int | None = None) -> None:
        status, body = await self.agent.report(job_id, state, exit_code=exit_code)
        assert status == 200, body


@pytest.fixture(scope="module")
def logsched(
    tmp_path_factory: pytest.TempPathFactory, store_kind: str
) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(tmp_path_factory.mktemp("logs") / "state").start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
async def logs_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_read=DEADLINE_S)
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def worker(
    logsched: SchedulerProcess, logs_http: aiohttp.ClientSession
) -> AsyncIterator[Worker]:
    agent = SimAgent(
        logs_http,
        logsched.url,
        logsched.join_token,
        "logs",
        cpu=64,
        max_parallel=64,
        labels={"pool": "logs"},
    )
    await agent.register()
    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, AssertionError, OSError):
                for cmd in await agent.heartbeat():
                    if cmd["action"] == "cancel":
                        agent.running.pop(cmd["job_id"], None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    task = asyncio.create_task(beat())
    yield Worker(agent, Api(logs_http, logsched.url, logsched.admin_token))
    stop.set()
    await task


# --- reading --------------------------------------------------------------------------------


async def read_log(
    api: Api, job_id: str, **params: Any
) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with api.session.get(
        f"{api.url}/api/v1/jobs/{job_id}/logs",
        params=params,
        headers={"Authorization": f"Bearer {api.token}"},
    ) as r:
        return r.status, await r.read(), dict(r.headers)


async def test_appended_logs_read_back_whole_as_a_range_and_as_a_download(
    worker: Worker, logsched: SchedulerProcess
) -> None:
    job_id = await worker.start()
    assert await worker.append(job_id, 0, b"line 1\n") == (200, {"offset": 7})
    assert await worker.append(job_id, 7, b"line 2\r\n\xff\x00") == (200, {"offset": 17})

    status, body, headers = await read_log(worker.admin, job_id)
    assert status == 200 and body == b"line 1\nline 2\r\n\xff\x00"
    assert headers["X-Berth-Log-Offset"] == "17" and headers["X-Berth-Attempt"] == "1"
    assert headers["Content-Type"].startswith("text/plain")
    assert "Content-Disposition" not in headers

    status, body, headers = await read_log(worker.admin, job_id, offset=7)
    assert (status, body, headers["X-Berth-Log-Offset"]) == (200, b"line 2\r\n\xff\x00", "17")
    status, body, headers = await read_log(worker.admin, job_id, offset=17)
    assert (status, body, headers["X-Berth-Log-Offset"]) == (200, b"", "17")

    status, body, headers = await read_log(worker.admin, job_id, download=1)
    assert status == 200 and body == b"line 1\nline 2\r\n\xff\x00"
    assert headers["Content-Disposition"] == f'attachment; filename="{job_id}-1.log"'

    async with BerthClient(logsched.url, logsched.admin_token) as client:
        assert await client.read_logs(job_id) == (b"line 1\nline 2\r\n\xff\x00", 17, 1)
        assert await client.read_logs(job_id, offset=13) == (b"\r\n\xff\x00", 17, 1)

    status, body, _ = await read_log(worker.admin, job_id, offset="x")
    assert status == 400 and orjson.loads(body)["error"]["details"]["field"] == "offset"
    status, body, _ = await read_log(worker.admin, "nosuchjob")
    assert status == 404
    await worker.end(job_id, "completed", 0)


async def test_duplicate_and_overlapping_appends_are_dropped_and_a_gap_is_refused(
    worker: Worker, logsched: SchedulerProcess
) -> None:
    job_id = await worker.start()
    assert await worker.append(job_id, 0, b"abc") == (200, {"offset": 3})
    assert await worker.append(job_id, 0, b"abc") == (200, {"offset": 3})
    assert await worker.append(job_id, 0, b"abcdef") == (200, {"offset": 6})
    assert await worker.append(job_id, 3, b"def") == (200, {"offset": 6})
    assert await worker.append(job_id, 4, b"efgh") == (200, {"offset": 8})
    assert await worker.append(job_id, 8, b"") == (200, {"offset": 8})

    status, body = await worker.append(job_id, 20, b"xyz")
    assert status == 409
    assert body["error"]["code"] == "conflict"
    assert body["error"]["details"]["offset"] == 8
    # Resent from the offset the scheduler named, the bytes land.
    assert await worker.append(job_id, 8, b"ij") == (200, {"offset": 10})
    assert (await read_log(worker.admin, job_id))[1] == b"abcdefghij"

    status, body = await worker.append(job_id, 10, b"zz", attempt=2)
    assert status == 409 and body["error"]["code"] == "stale_attempt"
    status, body = await worker.append(job_id, 10, b"zz", attempt=0)
    assert status == 400 and body["error"]["details"]["field"] == "attempt"
    other = SimAgent(worker.agent.session, logsched.url, logsched.join_token, "other")
    await other.register()
    status, body = await other.api.call(
        "POST",
        f"/api/v1/nodes/{worker.agent.node_id}/jobs/{job_id}/logs",
        data=b"zz",
        params={"attempt": 1, "offset": 10},
    )
    assert status == 403
    status, body = await other.api.call(
        "POST",
        f"/api/v1/nodes/{other.node_id}/jobs/{job_id}/logs",
        data=b"zz",
        params={"attempt": 1, "offset": 10},
    )
    assert status == 409 and body["error"]["code"] == "stale_attempt"
    assert (await read_log(worker.admin, job_id))[1] == b"abcdefghij"
    await worker.end(job_id, "completed", 0)


# --- following ---------------------------------------------------------------------------------


async def test_follow_streams_the_bytes_as_they_come_until_the_job_ends(
    worker: Worker, logsched: SchedulerProcess
) -> None:
    job_id = await worker.start()
    got = bytearray()
    ended_at: float | None = None

    async def follow() -> None:
        nonlocal ended_at
        async with worker.admin.session.get(
            f"{logsched.url}/api/v1/jobs/{job_id}/logs",
            params={"follow": 1},
            headers={"Authorization": f"Bearer {logsched.admin_token}"},
        ) as r:
            assert r.status == 200 and r.headers["X-Berth-Attempt"] == "1"
            async for chunk in r.content.iter_any():
                got.extend(chunk)
        ended_at = time.monotonic()

    follower = asyncio.create_task(follow())
    offset = 0
    for i in range(5):
        line = f"line {i}\n".encode()
        status, body = await worker.append(job_id, offset, line)
        assert status == 200
        offset = body["offset"]
        # Each line reaches the follower while the job still runs.
        await wait_until(lambda n=offset: len(got) >= n, timeout=DEADLINE_S, interval=0.01)
        assert ended_at is None
    assert bytes(got) == b"".join(f"line {i}\n".encode() for i in range(5))
    ending = time.monotonic()
    await worker.end(job_id, "completed", 0)
    async with asyncio.timeout(DEADLINE_S):
        await follower
    assert ended_at is not None and ended_at >= ending
    assert bytes(got) == b"".join(f"line {i}\n".encode() for i in range(5))

    # A follow of an attempt that is over returns what there is at once.
    status, body, _ = await read_log(worker.admin, job_id, follow=1, offset=7)
    assert status == 200 and body == got[7:]


async def test_client_follow_logs_yields_the_bytes_until_the_attempt_ends(
    worker: Worker, logsched: SchedulerProcess
) -> None:
    job_id = await worker.start()
    got = bytearray()
    async with BerthClient(logsched.url, logsched.admin_token) as client:

        async def follow() -> None:
            async for chunk in client.follow_logs(job_id):
                got.extend(chunk)

        follower = asyncio.create_task(follow())
        assert (await worker.append(job_id, 0, b"hello\n"))[0] == 200
        await wait_until(lambda: bytes(got) == b"hello\n", timeout=DEADLINE_S, interval=0.01)
        assert (await worker.append(job_id, 6, b"world\n"))[0] == 200
        await wait_until(lambda: len(got) == 12, timeout=DEADLINE_S, interval=0.01)
        await worker.end(job_id, "failed", 2)
        async with asyncio.timeout(DEADLINE_S):
            await follower
        assert bytes(got) == b"hello\nworld\n"
        # From an offset, of an attempt that is over: the rest, then the end.
        assert [c async for c in client.follow_logs(job_id, offset=6)] == [b"world\n"]


async def test_client_follow_logs_resumes_across_a_scheduler_restart(tmp_path: Path) -> None:
    """The follow drops when the scheduler is killed; it goes on from the byte offset
    it reached once the scheduler is back: no byte is lost or repeated."""
    # A fresh connection per request: pooled ones die with the killed scheduler.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    proc = SchedulerProcess(tmp_path / "state").start()
    try:
        agent = SimAgent(http, proc.url, proc.join_token, "restart", labels={"pool": "logs"})
        await agent.register()
        w = Worker(agent, Api(http, proc.url, proc.admin_token))
        job_id = await w.start()
        got = bytearray()
        async with BerthClient(proc.url, proc.admin_token) as client:

            async def follow() -> None:
                async for chunk in client.follow_logs(job_id):
                    got.extend(chunk)

            follower = asyncio.create_task(follow())
            assert (await w.append(job_id, 0, b"before\n"))[0] == 200
            await wait_until(lambda: bytes(got) == b"before\n", timeout=DEADLINE_S)
            proc.kill()
            proc.start()
            assert (await w.append(job_id, 7, b"after\n"))[0] == 200
            await w.end(job_id, "completed", 0)
            async with asyncio.timeout(DEADLINE_S):
                await follower
        assert bytes(got) == b"before\nafter\n"
    finally:
        proc.kill()
        await http.close()


async def read_sse_frames(
    resp: aiohttp.ClientResponse, stop: Any, buf: bytes = b""
) -> tuple[list[tuple[str | None, str, str]], bytes]:
    """Frames (id, event, data) until ``stop(frames)`` is true."""
    frames: list[tuple[str | None, str, str]] = []
    while not stop(frames):
        chunk = await resp.content.readany()
        if not chunk:
            break
        buf += chunk
        text = buf.replace(b"\r\n", b"\n")
        *blocks, rest = text.split(b"\n\n")
        buf = rest
        for block in blocks:
            ident, event, data = None, "message", []
            for line in block.decode().split("\n"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    ident = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
            if data:
                frames.append((ident, event, "\n".join(data)))
    return frames, buf


async def test_sse_log_stream_resumes_with_last_event_id_and_ends_with_the_outcome(
    worker: Worker, logsched: SchedulerProcess
) -> None:
    job_id = await worker.start()
    url = f"{logsched.url}/api/v1/jobs/{job_id}/logs"
    auth = {"Authorization": f"Bearer {logsched.admin_token}", **SSE}
    assert (await worker.append(job_id, 0, b"one\n"))[0] == 200
    async with worker.admin.session.get(url, headers=auth) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        frames, _ = await read_sse_frames(r, lambda f: len(f) >= 1)
        r.close()
    # The id is the byte offset after the chunk; a newline ends the data with an empty line.
    assert frames == [("4", "log", "one\n")]

    # While no one listens, more comes; a reconnect from the last id gets only that.
    assert (await worker.append(job_id, 4, b"two\n"))[0] == 200
    assert (await worker.append(job_id, 8, b"three\n"))[0] == 200
    async with worker.admin.session.get(url, headers={**auth, "Last-Event-ID": "4"}) as r:
        frames, buf = await read_sse_frames(r, lambda f: f and f[-1][0] == "14")
        assert "".join(data for _, _, data in frames) == "two\nthree\n"
        assert [event for _, event, _ in frames] == ["log"] * len(frames)
        await worker.end(job_id, "failed", 5)
        rest, _ = await read_sse_frames(r, lambda f: f and f[-1][1] == "end", buf)
    assert rest[-1][1] == "end"
    assert orjson.loads(rest[-1][2]) == {
        "attempt": 1,
        "offset": 14,
        "state": "failed",
        "exit_code": 5,
    }
    assert all(event == "log" for _, event, _ in rest[:-1])

    # Of an attempt that is over, with the offset past the end: just the end.
    async with worker.admin.session.get(url, headers={**auth, "Last-Event-ID": "14"}) as r:
        frames, _ = await read_sse_frames(r, lambda f: f and f[-1][1] == "end")
    assert [event for _, event, _ in frames] == ["end"]


async def test_earlier_attempts_keep_their_logs(worker: Worker, logsched: SchedulerProcess) -> None:
    job_id = await worker.start(max_retries=1)
    assert (await worker.append(job_id, 0, b"first try\n"))[0] == 200
    await worker.end(job_id, "failed", 1)
    # The retry waits a backoff of about a second, then runs again on the same agent.
    assert await worker.take(job_id) == 2
    assert (await worker.agent.report(job_id, "running"))[0] == 200
    assert (await worker.append(job_id, 0, b"second try\n"))[0] == 200

    status, body, headers = await read_log(worker.admin, job_id)
    assert (body, headers["X-Berth-Attempt"]) == (b"second try\n", "2")
    status, body, headers = await read_log(worker.admin, job_id, attempt=1)
    assert (body, headers["X-Berth-Attempt"]) == (b"first try\n", "1")
    status, body, _ = await read_log(worker.admin, job_id, attempt=3)
    assert status == 400 and orjson.loads(body)["error"]["details"]["field"] == "attempt"

    # The SSE end of an earlier attempt names the attempt and where its log ends.
    async with worker.admin.session.get(
        f"{logsched.url}/api/v1/jobs/{job_id}/logs",
        params={"attempt": 1},
        headers={"Authorization": f"Bearer {logsched.admin_token}", **SSE},
    ) as r:
        frames, _ = await read_sse_frames(r, lambda f: f and f[-1][1] == "end")
    assert frames[0] == ("10", "log", "first try\n")
    assert orjson.loads(frames[-1][2]) == {"attempt": 1, "offset": 10}
    await worker.end(job_id, "completed", 0)
    status, body, _ = await read_log(worker.admin, job_id, attempt=1)
    assert body == b"first try\n"


async def test_the_log_is_capped_at_10_mib_with_a_visible_marker(worker: Worker) -> None:
    job_id = await worker.start()
    chunk = b"x" * 999_999 + b"\n"
    offset = 0
    for _ in range(11):
        status, body = await worker.append(job_id, offset, chunk)
        assert status == 200, body
        offset = body["offset"]
    assert offset == LOG_CAP + len(MARKER)
    # Past the cap, appends are acknowledged and dropped.
    assert await worker.append(job_id, offset, b"more\n") == (200, {"offset": offset})
    status, tail, headers = await read_log(worker.admin, job_id, offset=LOG_CAP - 5)
    assert tail == b"xxxxx" + MARKER
    assert headers["X-Berth-Log-Offset"] == str(LOG_CAP + len(MARKER))
    status, whole, _ = await read_log(worker.admin, job_id)
    assert len(whole) == LOG_CAP + len(MARKER)
    assert whole[: len(chunk)] == chunk
    await worker.end(job_id, "completed", 0)


# --- blocking queries ---------------------------------------------------------------------------


async def test_blocking_list_query_returns_on_a_change_or_when_the_wait_runs_out(
    admin: Api,
) -> None:
    status, page = await admin.get("/api/v1/jobs")
    assert status == 200
    index = page["index"]

    t0 = time.monotonic()
    async with admin.session.get(
        f"{admin.url}/api/v1/jobs",
        params={"index": index, "wait": 0.5},
        headers={"Authorization": f"Bearer {admin.token}"},
    ) as r:
        quiet = orjson.loads(await r.read())
        assert r.headers["X-Berth-Index"] == str(index)
    assert time.monotonic() - t0 >= 0.45
    assert quiet["index"] == index

    blocked = asyncio.create_task(
        admin.get("/api/v1/jobs", params={"index": index, "wait": DEADLINE_S})
    )
    status, job = await admin.post("/api/v1/jobs", SPEC)
    assert status == 201
    t0 = time.monotonic()
    status, changed = await asyncio.wait_for(blocked, DEADLINE_S)
    assert status == 200
    assert changed["index"] > index
    assert [j["id"] for j in changed["jobs"]] == [job["id"]]
    assert time.monotonic() - t0 < DEADLINE_S / 2

    # The first placement pass says why it waits (no node): that moves it once.
    status, job = await admin.get(
        f"/api/v1/jobs/{job['id']}", params={"index": job["index"], "wait": DEADLINE_S}
    )
    assert job["state"] == "queued" and job["reason"].startswith("no node is taking jobs")

    # One job: blocks until that job moves past the index it names.
    t0 = time.monotonic()
    status, same = await admin.get(
        f"/api/v1/jobs/{job['id']}", params={"index": job["index"], "wait": 0.5}
    )
    assert time.monotonic() - t0 >= 0.45
    assert same["index"] == job["index"] and same["state"] == "queued"
    one = asyncio.create_task(
        admin.get(f"/api/v1/jobs/{job['id']}", params={"index": job["index"], "wait": DEADLINE_S})
    )
    await admin.post(f"/api/v1/jobs/{job['id']}/cancel")
    status, cancelled = await asyncio.wait_for(one, DEADLINE_S)
    assert cancelled["state"] == "cancelled" and cancelled["index"] > job["index"]

    status, body = await admin.get("/api/v1/jobs", params={"index": index, "wait": "forever"})
    assert status == 400 and body["error"]["details"]["field"] == "wait"


# --- `berth logs` ------------------------------------------------------------------------------


def berth(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cli.main import main; main()", *args]


def cli_env(sched: SchedulerProcess) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BERTH_ADDR=sched.url, BERTH_TOKEN=sched.admin_token, PYTHONPATH=str(REPO))
    return env


async def run_cli(sched: SchedulerProcess, *args: str, cwd: Path = REPO) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        *berth(*args),
        env=cli_env(sched),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


class Follower:
    """`berth logs -f` as a running process whose output is collected as it comes."""

    def __init__(self, sched: SchedulerProcess, *args: str) -> None:
        self.sched = sched
        self.args = args
        self.out = bytearray()
        self.err = bytearray()
        self.proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []

    async def start(self) -> Follower:
        self.proc = await asyncio.create_subprocess_exec(
            *berth("logs", "-f", *self.args),
            env=cli_env(self.sched),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(self.proc.stdout, self.out)),
            asyncio.create_task(self._pump(self.proc.stderr, self.err)),
        ]
        return self

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(65536):
            into.extend(chunk)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), DEADLINE_S)
        await asyncio.gather(*self._pumps)
        return code


async def test_berth_logs_prints_the_bytes_of_an_attempt(
    worker: Worker, logsched: SchedulerProcess
) -> None:
    job_id = await worker.start()
    data = b"plain\r\nbinary \xff\xfe\x00\n"
    assert (await worker.append(job_id, 0, data))[0] == 200
    assert await run_cli(logsched, "logs", job_id) == (0, data, "")
    assert await run_cli(logsched, "logs", "--attempt", "1", job_id) == (0, data, "")
    code, _, err = await run_cli(logsched, "logs", "nosuchjob")
    assert code == 66 and err == "berth: no job 'nosuchjob'\n"
    code, _, err = await run_cli(logsched, "logs", "--attempt", "7", job_id)
    assert code == 70 and err.startswith("berth: ") and len(err.splitlines()) == 1
    await worker.end(job_id, "completed", 0)


@pytest.mark.parametrize(
    ("state", "exit_code", "expected"),
    [
        ("completed", 0, 0),
        ("failed", 3, 3),
        ("failed", None, 1),
        ("timed_out", None, 124),
        ("cancelled", None, 130),
    ],
)
async def test_berth_logs_follow_prints_while_the_job_runs_and_exits_with_its_code(
    worker: Worker, logsched: SchedulerProcess, state: str, exit_code: int | None, expected: int
) -> None:
    job_id = await worker.start()
    follower = await Follower(logsched, job_id).start()
    assert (await worker.append(job_id, 0, b"started\n"))[0] == 200
    await wait_until(lambda: follower.out == b"started\n", timeout=DEADLINE_S, interval=0.01)
    assert follower.proc is not None and follower.proc.returncode is None
    assert (await worker.append(job_id, 8, b"finishing\n"))[0] == 200
    if state == "cancelled":
        await worker.admin.post(f"/api/v1/jobs/{job_id}/cancel")
    else:
        await worker.end(job_id, state, exit_code)
    assert await follower.wait() == expected
    assert follower.out == b"started\nfinishing\n"
    if expected:
        assert follower.err.decode().startswith(f"berth: job {job_id} attempt 1 {state}")


async def test_berth_logs_follow_goes_on_with_the_retry(
    worker: Worker, logsched: SchedulerProcess
) -> None:
    job_id = await worker.start(max_retries=1)
    follower = await Follower(logsched, job_id).start()
    assert (await worker.append(job_id, 0, b"try one\n"))[0] == 200
    await wait_until(lambda: follower.out == b"try one\n", timeout=DEADLINE_S, interval=0.01)
    await worker.end(job_id, "failed", 9)
    assert await worker.take(job_id) == 2
    assert (await worker.agent.report(job_id, "running"))[0] == 200
    assert (await worker.append(job_id, 0, b"try two\n"))[0] == 200
    await wait_until(lambda: follower.out.endswith(b"try two\n"), DEADLINE_S, interval=0.01)
    await worker.end(job_id, "completed", 0)
    assert await follower.wait() == 0
    assert follower.out == b"try one\ntry two\n"
    assert b"following attempt 2" in follower.err
