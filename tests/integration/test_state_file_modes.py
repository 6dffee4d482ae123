"""The scheduler's state directory is private whatever the umask: the directory and
every directory in it 0700, every file 0600 (tokens, the webhook key, the SQLite
database and its -wal/-shm, blobs).

Before, `berth scheduler` started under umask 022 made the state directory 0755 and
``berth.db``, ``berth.db-wal`` and ``berth.db-shm`` 0644: any user of the host could
read every job's spec (environment included) and logs. The scheduler here is a real
process started under umask 022 over a state directory an older version left open; a
real agent process beside it keeps its own state directory private too.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import REPO, Api, SchedulerProcess, wait_until

# The modes of the SQLite store's files in the state directory.
pytestmark = pytest.mark.stores("sqlite")


def _modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (itself included) with its permission bits."""
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _not_private(root: Path) -> dict[str, str]:
    wrong = {}
    for name, mode in _modes(root).items():
        want = 0o700 if (root / name).is_dir() else 0o600
        if mode != want:
            wrong[name] = oct(mode)
    return wrong


def _start_agent(sched: SchedulerProcess, state_dir: Path) -> subprocess.Popen[bytes]:
    join_file = state_dir.parent / "join.token"
    join_file.write_text(sched.join_token)
    with open(state_dir.parent / "agent.log", "ab") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-c", "from cli.main import main; main()", "agent"),
                *("--scheduler", sched.url, "--join-token-file", str(join_file)),
                *("--state-dir", str(state_dir), "--name", "modes", "--executor", "process"),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def test_the_state_directory_and_its_files_are_private_under_umask_022(
    tmp_path: Path, loose_umask: None
) -> None:
    state = tmp_path / "state"
    # What an older version left: an open directory and an open database.
    state.mkdir(mode=0o755)
    (state / "berth.db").touch(mode=0o644)
    sched = SchedulerProcess(state).start()
    agent_dir = tmp_path / "agent"
    agent = None
    try:
        async with aiohttp.ClientSession() as http:
            admin = Api(http, sched.url, sched.admin_token)
            status, _ = await admin.call("POST", "/api/v1/blobs", data=b"some inputs\n")
            assert status in (200, 201)
            hook = {"url": "https://example.invalid/hook"}
            status, body = await admin.post(
                "/api/v1/jobs", {"image": "busybox", "env": {"K": "v"}, "webhook": hook}
            )
            assert status == 201, body
            agent = _start_agent(sched, agent_dir)
            await wait_until(lambda: (agent_dir / "node.json").exists(), timeout=30)
        for name in ("berth.db", "berth.db-wal", "berth.db-shm", "admin.token", "blobs"):
            assert (state / name).exists(), name
        assert _not_private(state) == {}
        assert stat.S_IMODE(agent_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((agent_dir / "node.json").stat().st_mode) == 0o600
    finally:
        if agent is not None:
            agent.kill()
            agent.wait(timeout=30)
        sched.kill()
