"""Fixtures of the deploy tests: the images deploy/build-images.sh makes, and the tests'
place at the end of the run.

Building the base and the images takes minutes. tests/run.sh starts the script in the
background as soon as dockerd answers and names its directory in
``BERTH_DEPLOY_BUILD_DIR`` (``log``, ``pid``, then ``done`` or ``failed``); these tests
run last, so the build overlaps the rest of the suite, and wait for it; one that failed
(a chaos test restarts dockerd meanwhile) is run once more here. Run alone, they build
the images themselves. Without dockerd (or mmdebstrap) they are skipped, except
under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import REPO

HERE = Path(__file__).parent
#: the longest a build may take, waited for or run here (seconds)
BUILD_TIMEOUT_S = 1800.0
#: the images the script makes
IMAGES = ("berth-scheduler:latest", "berth-agent:latest", "berth-postgres:latest")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the deploy tests to the end of the run (their images build meanwhile)."""
    mine = [item for item in items if HERE in Path(str(item.path)).parents]
    if mine:
        others = [item for item in items if HERE not in Path(str(item.path)).parents]
        items[:] = others + mine


def missing(what: str) -> None:
    """Skip for want of ``what``; under CI=true fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI needs it")
    pytest.skip(what)


def docker_answers() -> bool:
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _wait_for_background_build(where: Path) -> str | None:
    """Wait for tests/run.sh's build to end: None when it succeeded, else why not."""
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while True:
        # The marker is written before the build's process ends: look after the pid.
        ended = not _pid_alive(where / "pid")
        if (where / "done").exists():
            return None
        if (where / "failed").exists():
            return f"deploy/build-images.sh failed in the background:\n{_tail(where / 'log')}"
        if ended:
            return f"deploy/build-images.sh stopped unfinished:\n{_tail(where / 'log')}"
        if time.monotonic() > deadline:
            pytest.fail(f"deploy/build-images.sh still runs after {BUILD_TIMEOUT_S:g} s")
        time.sleep(1)


def _build_here(log: Path, earlier: str = "") -> None:
    with open(log, "wb") as out:
        done = subprocess.run(
            ["bash", str(REPO / "deploy" / "build-images.sh")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=BUILD_TIMEOUT_S,
        )
    if done.returncode != 0:
        pytest.fail(f"{earlier}deploy/build-images.sh failed:\n{_tail(log)}")


@pytest.fixture(scope="session")
def deploy_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """The scheduler, agent and PostgreSQL images, built from this checkout."""
    if not docker_answers():
        missing("dockerd does not answer (`docker info` failed)")
    if shutil.which("mmdebstrap") is None:
        missing("mmdebstrap is not installed")
    background = os.environ.get("BERTH_DEPLOY_BUILD_DIR")
    failed = _wait_for_background_build(Path(background)) if background else ""
    if failed is not None:
        # Built again, once, with the rest of the suite over: the background build may
        # have met dockerd restarted by a chaos test.
        log = tmp_path_factory.mktemp("deploy-build") / "build.log"
        _build_here(log, f"{failed}\n\nand again here:\n" if failed else "")
    for image in IMAGES:
        present = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        assert present.returncode == 0, f"the build left no {image}"
    return IMAGES
