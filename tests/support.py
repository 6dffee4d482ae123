"""Real scheduler processes and simulated agents for tests and benchmarks.

A SimAgent speaks the agent protocol over HTTP exactly as the real agent does, but
"runs" a job by reporting it; it stands in for a worker host, not for the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int | str, what: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created), unmounted afterwards; it needs
    root, which CI has: there a missing root is a failure, elsewhere a skip."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} mounts a tmpfs and needs root; CI runs as root")
        pytest.skip("needs root to mount a tmpfs")
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    """What an unprivileged writer may still write on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


#: scheduler flags for benchmarks and load tests: throughput is measured, not the
#: per-token limits, though one token does all of it
UNLIMITED = (
    "--log-level",
    "warning",
    "--submit-rate",
    "0",
    "--max-streams-per-token",
    "10000",
)


#: scheduler flags for tests that compare state before and after a request: no node is
#: ever late, offline or past a restart grace while the module runs
QUIET = ("--heartbeat-interval", "36000", "--node-ttl", "36000", "--restart-grace", "36000")


class SchedulerProcess:
    """A real `berth scheduler` process on a loopback port with its own state dir.

    Unless its flags name a ``--store``, it runs on SQLite in its state directory, or,
    while ``databases`` is set (the integration suite's PostgreSQL runs), on the
    PostgreSQL database that gives for its state directory: one database per state
    directory, so a restart on the same directory finds its state again.
    """

    #: state directory -> DSN of a database of its own; None: SQLite
    databases: ClassVar[Callable[[Path], str] | None] = None

    def __init__(
        self,
        state_dir: Path,
        *extra: str,
        port: int | None = None,
        scheme: str = "http",
        nofile: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        #: the open-files limit (soft and hard) to start it under; None: this process's
        self.nofile = nofile
        self.port = port or free_port()
        # "https" when ``extra`` gives it --tls-cert/--tls-key
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}-scheduler.log"

    def start(self, timeout: float = 20.0) -> SchedulerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "scheduler",
            "--state-dir",
            str(self.state_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.extra,
        ]
        databases = SchedulerProcess.databases  # the class's: a function, not a method
        if databases is not None and "--store" not in self.extra:
            cmd += ["--store", databases(self.state_dir)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        nofile = self.nofile
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=None
            if nofile is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scheduler exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                if (self.state_dir / "admin.token").exists():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"scheduler did not start: {self.log_path.read_text()[-2000:]}")

    @property
    def admin_token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    @property
    def join_token(self) -> str:
        return (self.state_dir / "join.token").read_text().strip()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def start_process_agent(
    sched: SchedulerProcess, where: Path, name: str, *extra: str
) -> subprocess.Popen[bytes]:
    """A real `berth agent` process for ``sched`` (process executor, two slots,
    labelled ``host=<name>``; later flags override these), its state and its log
    (``<name>.log``) in ``where``. The caller kills it."""
    token_file = where / f"{name}.join"
    token_file.write_text(sched.join_token)
    log = open(where / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    cmd = [
        *(sys.executable, "-c", "from cli.main import main; main()", "agent"),
        *("--scheduler", sched.url, "--join-token-file", str(token_file)),
        *("--state-dir", str(where / name), "--name", name, "--executor", "process"),
        *("--label", f"host={name}", "--max-parallel", "2", *extra),
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async or plain predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


class Api:
    """A thin HTTP helper for tests: JSON in, (status, JSON) out."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.session = session
        self.url = url
        self.token = token

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(extra or {})
        return h

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        async with self.session.request(
            method,
            self.url + path,
            json=body,
            data=data,
            headers=self._headers(headers),
            params=params,
        ) as r:
            text = await r.read()
            try:
                import orjson

                return r.status, orjson.loads(text) if text else None
            except ValueError:
                return r.status, text

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kw)


@dataclass
class SimAgent:
    """A simulated worker host speaking the agent protocol over HTTP."""

    session: aiohttp.ClientSession
    url: str
    join_token: str
    name: str
    cpu: float = 4.0
    memory_mb: int = 8192
    max_parallel: int = 4
    labels: dict[str, str] = field(default_factory=dict)
    node_id: str = ""
    token: str = ""
    after: int = 0
    running: dict[str, int] = field(default_factory=dict)

    @property
    def api(self) -> Api:
        return Api(self.session, self.url, self.token)

    async def register(self) -> None:
        api = Api(self.session, self.url, self.join_token)
        status, body = await api.post(
            "/api/v1/nodes/register",
            {
                "name": self.name,
                "capacity": {"cpu": self.cpu, "memory_mb": self.memory_mb},
                "labels": self.labels,
                "max_parallel": self.max_parallel,
                "executor": "process",
                # Registering again is this node's only with its own token.
                **({"node_token": self.token} if self.token else {}),
            },
        )
        assert status == 200, body
        self.node_id, self.token = body["node_id"], body["node_token"]

    async def heartbeat(self, ram_free_mb: int | None = None) -> list[dict[str, Any]]:
        metrics = {"cpu_percent": 5.0, "ram_total_mb": self.memory_mb}
        metrics["ram_free_mb"] = self.memory_mb if ram_free_mb is None else ram_free_mb
        status, body = await self.api.post(
            f"/api/v1/nodes/{self.node_id}/heartbeat",
            {
                "metrics": metrics,
                "running": [{"job_id": j, "attempt": a} for j, a in self.running.items()],
            },
        )
        assert status == 200, body
        commands: list[dict[str, Any]] = body["commands"]
        return commands

    async def poll(self, wait: float = 0.0) -> list[dict[str, Any]]:
        status, body = await self.api.get(
            f"/api/v1/nodes/{self.node_id}/assignments",
            params={"after": self.after, "wait": wait},
        )
        assert status == 200, body
        self.after = body["index"]
        for a in body["assignments"]:
            self.running[a["job_id"]] = a["attempt"]
        assignments: list[dict[str, Any]] = body["assignments"]
        return assignments

    async def report(self, job_id: str, state: str | None, **extra: Any) -> tuple[int, Any]:
        attempt = extra.pop("attempt", None) or self.running.get(job_id, 1)
        status, body = await self.api.post(
            f"/api/v1/nodes/{self.node_id}/jobs/{job_id}/report",
            {"attempt": attempt, "state": state, **extra},
        )
        if state not in (None, "running") and status == 200:
            self.running.pop(job_id, None)
        return status, body


def scheduler_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env
