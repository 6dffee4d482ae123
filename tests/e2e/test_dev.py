"""`berth dev`: one command brings up a scheduler and a local agent that runs jobs;
Ctrl-C stops both."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import psutil

from tests.support import REPO, Api, free_port, wait_until


async def test_berth_dev_runs_a_job_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, docker_image: str
) -> None:
    port = free_port()
    proc = berth_dev(tmp_path / "state", port, "--executor", "docker")
    try:
        token_file = tmp_path / "state" / "admin.token"
        await wait_until(token_file.exists, timeout=30)
        async with aiohttp.ClientSession() as http:
            api = Api(http, f"http://127.0.0.1:{port}", token_file.read_text().strip())

            async def node_up() -> bool:
                try:
                    status, body = await api.get("/api/v1/nodes")
                except aiohttp.ClientConnectionError:
                    return False  # the tokens are written before the port listens
                return status == 200 and any(n["state"] == "idle" for n in body["nodes"])

            await wait_until(node_up, timeout=30, interval=0.2)
            _, job = await api.post(
                "/api/v1/jobs", {"image": docker_image, "command": ["echo", "hello"]}
            )

            async def done() -> bool:
                _, j = await api.get(f"/api/v1/jobs/{job['id']}")
                return bool(j["state"] == "completed")

            await wait_until(done, timeout=60, interval=0.2)
            _, logs = await api.call("GET", f"/api/v1/jobs/{job['id']}/logs")
            assert logs == b"hello\n" or logs == "hello\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode()
    assert f"http://127.0.0.1:{port}/" in text and "admin.token" in text
    # Both daemons are gone: nothing listens on the port any more.
    await wait_until(lambda: not _listening(port), timeout=10)


def berth_dev(state_dir: Path, port: int, *flags: str) -> subprocess.Popen[bytes]:
    """`berth dev` on a loopback port, its output kept for the test to read."""
    berth = [sys.executable, "-c", "from cli.main import main; main()"]
    where = ["--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}"]
    return subprocess.Popen(
        [*berth, "dev", *where, *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def free_ports_below_ephemeral(count: int) -> int:
    """A port P with P .. P+count-1 free, below the kernel's range for the local ports
    of outgoing connections: the standbys of `berth dev` take the ports after the
    leader's, and an agent's connection made meanwhile must not hold one of them."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 8000), low - count)
        if all(_bindable(port + n) for n in range(count)):
            return port
    raise RuntimeError("no run of free ports below the ephemeral range")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def test_berth_dev_with_standbys_keeps_running_jobs_after_the_leader_is_killed(
    tmp_path: Path, pg_dsn: str
) -> None:
    """`berth dev --store postgresql://... --standbys 2`: three schedulers and an agent
    that knows them all; once the leader is killed, a standby leads and jobs still run."""
    port = free_ports_below_ephemeral(3)
    proc = berth_dev(
        tmp_path / "state", port, "--executor", "process", "--store", pg_dsn, "--standbys", "2"
    )
    urls = [f"http://127.0.0.1:{port + n}" for n in range(3)]
    try:
        token_file = tmp_path / "state" / "admin.token"
        await wait_until(token_file.exists, timeout=30)
        token = token_file.read_text().strip()
        async with aiohttp.ClientSession() as http:

            async def leader() -> dict[str, str] | None:
                for url in urls:
                    try:
                        status, body = await Api(http, url, token).get("/api/v1/schedulers")
                    except aiohttp.ClientConnectionError:
                        continue
                    if status == 200:
                        led = [s for s in body["schedulers"] if s["role"] == "leader"]
                        if led and len(body["schedulers"]) >= 3:
                            return dict(led[0])
                return None

            first = await wait_until(leader, timeout=30, interval=0.2)
            assert first["url"] == urls[0]
            await _run_one(Api(http, urls[0], token))

            pid = _pid_listening_on(port)
            os.kill(pid, signal.SIGKILL)

            async def new_leader() -> dict[str, str] | None:
                found = await leader()
                return found if found is not None and found["url"] != urls[0] else None

            second = await wait_until(new_leader, timeout=30, interval=0.2)
            await _run_one(Api(http, second["url"], token))
        assert proc.poll() is None, "berth dev must keep running while a scheduler is left"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode()
    assert all(url in text for url in urls)
    await wait_until(lambda: not any(_listening(port + n) for n in range(3)), timeout=10)


async def _run_one(api: Api) -> None:
    """Submit `echo hello` and wait until it completed."""

    async def node_up() -> bool:
        status, body = await api.get("/api/v1/nodes")
        return status == 200 and any(n["state"] in ("idle", "busy") for n in body["nodes"])

    await wait_until(node_up, timeout=30, interval=0.2)
    status, job = await api.post("/api/v1/jobs", {"image": "busybox", "command": ["echo", "hi"]})
    assert status == 201, job

    async def done() -> bool:
        _, j = await api.get(f"/api/v1/jobs/{job['id']}")
        return bool(j["state"] == "completed")

    await wait_until(done, timeout=60, interval=0.2)


def _pid_listening_on(port: int) -> int:
    """The process that listens on a loopback port (the scheduler berth dev started)."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise AssertionError(f"nothing listens on port {port}")
