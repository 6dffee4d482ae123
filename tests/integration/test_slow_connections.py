"""Connections that cost descriptors and do nothing cannot shut the scheduler out.

Real scheduler processes, real sockets: half-sent headers, stalled bodies, keep-alive
idlers and one address holding many unauthenticated connections. The flood comes from
a child process of plain sockets, so this process's own descriptor limit is not the
bound; the scheduler runs under ``ulimit -n 1024``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import REPO, Api, SchedulerProcess, SimAgent, wait_until

# The behaviour is the listening port's, whatever the store.
pytestmark = pytest.mark.stores("sqlite")

#: what the header and body deadline is set to, and what the slowest close may add
BOUND_S = 2.0
SLACK_S = 3.0
#: the flood: more half-open connections than the scheduler has descriptors
FLOOD = 1100
NOFILE = 1024

#: The flooding child: opens COUNT connections at once, sends each half a request
#: header, then waits; prints one JSON line: for every connection, seconds from its
#: half header to the scheduler's EOF or reset (null: still open at the deadline).
FLOODER = r"""
import json, resource, selectors, socket, sys, time
port, count, deadline = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
HALF = b"GET /api/v1/nodes HTTP/1.1\r\nHost: berth\r\nX-Slow: "
sel = selectors.DefaultSelector()
sent, closed, errors = {}, {}, []
for i in range(count):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_WRITE, i)
end = time.monotonic() + deadline
while len(closed) + len(errors) < count and time.monotonic() < end:
    for key, mask in sel.select(timeout=0.1):
        s, i = key.fileobj, key.data
        now = time.monotonic()
        if i not in sent:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            try:
                if err:
                    raise OSError(err, "connect")
                s.send(HALF)
            except OSError as e:
                errors.append(repr(e))
                sel.unregister(s)
                s.close()
                continue
            sent[i] = now
            sel.modify(s, selectors.EVENT_READ, i)
            continue
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:
            closed[i] = now - sent[i]
            sel.unregister(s)
            s.close()
        else:
            errors.append("answered: " + data[:60].decode("latin-1"))
print(json.dumps({
    "sent": len(sent),
    "open_for": [closed.get(i) for i in sorted(sent)],
    "errors": errors[:20],
    "error_count": len(errors),
}))
"""


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _metrics(http: aiohttp.ClientSession, sched: SchedulerProcess) -> str:
    headers = {"Authorization": f"Bearer {sched.admin_token}"}
    async with http.get(f"{sched.url}/metrics", headers=headers) as r:
        assert r.status == 200
        return await r.text()


def _connect(sched: SchedulerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", sched.port), timeout=10)


def _request(path: str, token: str | None, *, method: str = "GET", length: int = 0) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: berth\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if method != "GET":
        head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
    return (head + "\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response (status, body) by its Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), body


def _seconds_to_eof(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes ``sock`` (EOF or reset), None if it is still open
    after ``timeout``; data it sends first is read and dropped."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return time.monotonic() - start
            sock.settimeout(max(0.01, timeout - (time.monotonic() - start)))
    except ConnectionResetError:
        return time.monotonic() - start
    except TimeoutError:
        return None


# --- the flood ----------------------------------------------------------------------------


@pytest.fixture
def crowded(tmp_path: Path) -> Iterator[SchedulerProcess]:
    """A scheduler under ulimit -n 1024 whose retention and blob sweep run all the time."""
    proc = SchedulerProcess(
        tmp_path / "state",
        "--header-timeout",
        str(BOUND_S),
        "--retention-interval",
        "0.2",
        nofile=NOFILE,
    ).start()
    yield proc
    proc.kill()


async def test_half_sent_headers_are_closed_while_agents_and_clients_carry_on(
    crowded: SchedulerProcess,
) -> None:
    sched = crowded
    #: kind -> (when it ended, how long it took) of every call that succeeded
    outcomes: dict[str, list[tuple[float, float]]] = {"heartbeat": [], "poll": [], "api": []}
    failures: list[str] = []
    done = asyncio.Event()

    async def timed(kind: str, call: Awaitable[Any]) -> None:
        start = time.monotonic()
        try:
            await call
        except Exception as e:  # every failure is reported, none may happen
            failures.append(f"{kind}: {e!r}")
        else:
            outcomes[kind].append((time.monotonic(), time.monotonic() - start))

    async def heartbeats(agent: SimAgent) -> None:
        while not done.is_set():
            await timed("heartbeat", agent.heartbeat())
            await asyncio.sleep(0.1)

    async def polls(agent: SimAgent) -> None:
        while not done.is_set():
            await timed("poll", agent.poll(wait=1))

    async def api_calls() -> None:
        # A new connection for every request: each must get in through the flood.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as fresh:
            api = Api(fresh, sched.url, sched.admin_token)

            async def submit() -> None:
                status, body = await api.post("/api/v1/jobs", {"image": "busybox"})
                assert status == 201, body
                status, body = await api.get("/api/v1/nodes")
                assert status == 200, body

            while not done.is_set():
                await timed("api", submit())
                await asyncio.sleep(0.1)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        agent = SimAgent(http, sched.url, sched.join_token, "steady", max_parallel=1000)
        await agent.register()
        loops = [
            asyncio.create_task(heartbeats(agent)),
            asyncio.create_task(polls(agent)),
            asyncio.create_task(api_calls()),
        ]
        await asyncio.sleep(0.5)
        flood_began = time.monotonic()
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOODER,
            str(sched.port),
            str(FLOOD),
            str(BOUND_S + 3 * SLACK_S),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        out, _ = await asyncio.wait_for(flooder.communicate(), timeout=60)
        flood_ended = time.monotonic()
        await asyncio.sleep(0.5)
        done.set()
        await asyncio.gather(*loops)
        metrics = await _metrics(http, sched)

    flood = json.loads(out)
    open_for = flood["open_for"]
    still_open = [t for t in open_for if t is None]
    longest = max((t for t in open_for if t is not None), default=0.0)
    figures = {
        "sent": flood["sent"],
        "still_open": len(still_open),
        "longest_open_s": round(longest, 2),
        "calls_during_flood": {
            k: sum(flood_began < end < flood_ended for end, _ in v) for k, v in outcomes.items()
        },
        "slowest_call_s": {
            k: round(max((took for _, took in v), default=0.0), 2) for k, v in outcomes.items()
        },
        "shed": {
            r: _metric(metrics, f'berth_connections_shed_total{{reason="{r}"}}')
            for r in ("header_timeout", "fd_reserve", "address_cap", "body_timeout")
        },
    }
    print(figures)
    assert flood["error_count"] == 0, flood["errors"]
    assert flood["sent"] == FLOOD
    # Every half-open connection was closed by the scheduler within the bound (the
    # oldest ones sooner, to keep descriptors in reserve).
    assert not still_open, figures
    assert longest <= BOUND_S + SLACK_S, figures
    assert figures["shed"]["fd_reserve"] > 0, figures
    assert figures["shed"]["header_timeout"] > 0, figures
    assert figures["shed"]["address_cap"] == 0, figures  # loopback is not capped by default
    # The agent and the clients never noticed.
    assert not failures, failures[:10]
    assert all(n >= 1 for n in figures["calls_during_flood"].values()), figures
    log = sched.log_path.read_text()
    assert "Too many open files" not in log
    assert "out of system resource" not in log
    assert "Traceback" not in log


# --- deadlines of one connection ------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(
        tmp_path_factory.mktemp("strict") / "state",
        "--header-timeout",
        "1",
        "--keepalive-timeout",
        "3",
    ).start()
    yield proc
    proc.kill()


def test_a_stalled_body_gets_408_and_the_connection_closes(strict: SchedulerProcess) -> None:
    with _connect(strict) as sock:
        sock.sendall(_request("/api/v1/jobs", strict.admin_token, method="POST", length=200))
        sock.sendall(b'{"image": "busy')
        start = time.monotonic()
        status, body = _read_response(sock)
        answered = time.monotonic() - start
        assert status == 408
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
        assert 0.9 <= answered <= 1 + SLACK_S
        closed = _seconds_to_eof(sock, 1 + SLACK_S)
        assert closed is not None
    assert "Traceback" not in strict.log_path.read_text()


def test_a_stalled_body_without_a_token_is_answered_and_closed(strict: SchedulerProcess) -> None:
    with _connect(strict) as sock:
        sock.sendall(_request("/api/v1/jobs", None, method="POST", length=200))
        sock.sendall(b'{"image": ')
        status, _ = _read_response(sock)
        assert status == 401
        # The unread rest of the body does not keep the connection open.
        closed = _seconds_to_eof(sock, 1 + SLACK_S)
        assert closed is not None
    assert "Traceback" not in strict.log_path.read_text()


def test_a_slow_but_steady_body_is_read_in_full(strict: SchedulerProcess) -> None:
    body = orjson.dumps({"image": "busybox", "name": "steady"})
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
    assert len(pieces) >= 4
    with _connect(strict) as sock:
        sock.sendall(_request("/api/v1/jobs", strict.admin_token, method="POST", length=len(body)))
        start = time.monotonic()
        for piece in pieces:
            time.sleep(0.4)
            sock.sendall(piece)
        # Longer than the bound in all, never as long between bytes.
        assert time.monotonic() - start > 1.0
        status, answer = _read_response(sock)
        assert status == 201, answer


def test_a_header_trickled_a_byte_at_a_time_must_still_end_in_time(
    strict: SchedulerProcess,
) -> None:
    with _connect(strict) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        start = time.monotonic()
        closed_at = None
        sock.settimeout(0.25)
        while time.monotonic() - start < 1 + SLACK_S:
            try:
                sock.sendall(b"X")
                if not sock.recv(1):
                    closed_at = time.monotonic() - start
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - start
                break
        assert closed_at is not None and closed_at >= 0.9


def test_an_idle_keep_alive_connection_outlives_the_header_bound_until_its_own(
    strict: SchedulerProcess,
) -> None:
    with _connect(strict) as sock:
        sock.sendall(_request("/api/v1/nodes", strict.admin_token))
        assert _read_response(sock)[0] == 200
        # Idle past the header bound: keep-alive, not a late header.
        time.sleep(1.5)
        sock.sendall(_request("/api/v1/nodes", strict.admin_token))
        assert _read_response(sock)[0] == 200
        closed = _seconds_to_eof(sock, 3 + SLACK_S)
        assert closed is not None and closed >= 2.5


def test_a_connection_that_sends_nothing_is_closed_after_the_bound(
    strict: SchedulerProcess,
) -> None:
    with _connect(strict) as sock:
        closed = _seconds_to_eof(sock, 1 + SLACK_S)
        assert closed is not None and closed >= 0.9


# --- the per-address cap ------------------------------------------------------------------

CAP = 8


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[SchedulerProcess]:
    """Loopback counted like any address, and a header bound long enough to hold."""
    proc = SchedulerProcess(
        tmp_path_factory.mktemp("capped") / "state",
        "--header-timeout",
        "60",
        "--max-unauthenticated-per-address",
        str(CAP),
        "--unauthenticated-exempt",
        "",
    ).start()
    yield proc
    proc.kill()


def _still_open(sock: socket.socket) -> bool:
    return _seconds_to_eof(sock, 0.3) is None


def _open_unauthenticated(sched: SchedulerProcess, n: int) -> list[socket.socket]:
    socks = [_connect(sched) for _ in range(n)]
    for s in socks:
        s.sendall(b"GET /api/v1/nodes HTTP/1.1\r\nHost: berth\r\n")
    return socks


async def _settled(http: aiohttp.ClientSession, sched: SchedulerProcess) -> None:
    """Until the scheduler has counted every unauthenticated connection as closed (the
    start-up probes' and a test's closed sockets are counted a moment later)."""

    async def none_unauthenticated() -> bool:
        text = await _metrics(http, sched)
        return _metric(text, 'berth_connections{state="unauthenticated"}') == 0

    await wait_until(none_unauthenticated, timeout=10)


async def test_unauthenticated_connections_past_the_cap_are_closed_at_once(
    capped: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    await _settled(http, capped)
    held = _open_unauthenticated(capped, CAP)
    try:
        assert all(_still_open(s) for s in held)
        with _connect(capped) as extra:
            closed = _seconds_to_eof(extra, 2.0)
            assert closed is not None and closed < 1.0
        # A wrong token does not count as authenticated either.
        held[0].sendall(b"Authorization: Bearer wrong\r\n\r\n")
        assert _read_response(held[0])[0] == 401
        with _connect(capped) as extra:
            assert _seconds_to_eof(extra, 2.0) is not None
    finally:
        for s in held:
            s.close()
    await _settled(http, capped)
    text = await _metrics(http, capped)
    assert _metric(text, 'berth_connections_shed_total{reason="address_cap"}') >= 2


async def test_authenticated_connections_do_not_count_against_the_cap(
    capped: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    await _settled(http, capped)
    agents = [_connect(capped) for _ in range(CAP)]
    try:
        for s in agents:
            s.sendall(_request("/api/v1/nodes", capped.admin_token))
            assert _read_response(s)[0] == 200
        # CAP authenticated connections held, and still CAP unauthenticated ones fit.
        held = _open_unauthenticated(capped, CAP)
        try:
            assert all(_still_open(s) for s in held)
            with _connect(capped) as extra:
                assert _seconds_to_eof(extra, 2.0) is not None
            # The authenticated connections were never touched.
            for s in agents:
                s.sendall(_request("/api/v1/nodes", capped.admin_token))
                assert _read_response(s)[0] == 200
        finally:
            for s in held:
                s.close()
    finally:
        for s in agents:
            s.close()
