"""`berth dev`: one command brings up a scheduler and a local agent that runs jobs;
Ctrl-C stops both."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support import REPO, Api, free_port, wait_until


async def test_berth_dev_runs_a_job_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, docker_image: str
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "dev",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            f"127.0.0.1:{port}",
            "--executor",
            "docker",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
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


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
