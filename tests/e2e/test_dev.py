"""`berth dev`: one command brings up a scheduler and a local agent that runs jobs;
Ctrl-C stops both."""

from __future__ import annotations

import os
import random
import shutil
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
    state = tmp_path / "state"
    proc = berth_dev(state, port, "--executor", "docker")
    try:
        token_file = state / "admin.token"
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
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = dev_output(state)
    assert f"http://127.0.0.1:{port}/" in text and "admin.token" in text
    # Both daemons are gone: nothing listens on the port any more.
    await wait_until(lambda: not _listening(port), timeout=10)


async def test_berth_dev_suggests_a_first_job_with_an_image_docker_already_has(
    tmp_path: Path, docker_image: str
) -> None:
    """No registry here: the suggested `berth run` names a small image that is present
    (the suite's own busybox image at least), so it runs without a pull."""
    port = free_port()
    state = tmp_path / "state"
    proc = berth_dev(state, port)
    try:
        command = suggested(await banner(state))
        image = command.split("berth run ", 1)[1].split()[0]
        present = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        assert present.returncode == 0, f"{image} is not a local image: {command}"
        done = run_as_a_user_would(command)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello\n"
    finally:
        _interrupt(proc)
    assert "local processes" not in dev_output(state)


async def test_berth_dev_without_dockerd_suggests_a_job_of_the_host(tmp_path: Path) -> None:
    """dockerd out of reach: the agent runs jobs as processes, and the suggested command
    is one of this host's; it works as printed."""
    port = free_port()
    state = tmp_path / "state"
    proc = berth_dev(state, port, env={"DOCKER_HOST": f"unix://{tmp_path}/no-dockerd.sock"})
    try:
        lines = await banner(state)
        assert any("jobs run as local processes" in line for line in lines), lines
        done = run_as_a_user_would(suggested(lines))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello\n"
    finally:
        _interrupt(proc)
    assert "falling back to the process executor" in dev_output(state)


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, then a kill if it is not gone in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def berth_dev(
    state_dir: Path, port: int, *flags: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`berth dev` on a loopback port; its output goes to dev.log beside the state
    directory (see dev_output), where a test reads it while it runs."""
    berth = [sys.executable, "-c", "from cli.main import main; main()"]
    where = ["--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}"]
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    with dev_log(state_dir).open("wb") as log:
        return subprocess.Popen(
            [*berth, "dev", *where, *flags],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def dev_log(state_dir: Path) -> Path:
    return state_dir.parent / "dev.log"


def dev_output(state_dir: Path) -> str:
    return dev_log(state_dir).read_text(errors="replace")


async def banner(state_dir: Path) -> list[str]:
    """The lines `berth dev` prints once both daemons run."""
    await wait_until(lambda: "Ctrl-C stops" in dev_output(state_dir), timeout=60, interval=0.1)
    text = dev_output(state_dir)
    start = text.index("Berth is running.")
    return text[start : text.index("Ctrl-C stops", start)].splitlines()


def suggested(lines: list[str]) -> str:
    """The command after `try:` in the banner."""
    tried = [line.split("try:", 1)[1].strip() for line in lines if "try:" in line]
    assert len(tried) == 1, lines
    return tried[0]


def run_as_a_user_would(command: str) -> subprocess.CompletedProcess[str]:
    """A suggested command line run by a shell in the directory `berth dev` ran in,
    with the installed `berth` first on PATH."""
    scripts = str(Path(sys.executable).parent)
    path = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
    assert shutil.which("berth", path=path), "pip install -e . puts berth beside python"
    return subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
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
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = dev_output(tmp_path / "state")
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
