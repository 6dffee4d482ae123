"""How long a user waits for a one-line job: `berth run` against `docker run --rm`.

Starts `berth dev` (a scheduler and a local agent on the docker executor, SQLite in a
temporary state dir) and lets it go idle, then times, alternately, ``berth run IMAGE --
echo hi`` (the installed CLI, a new process each time, as a user types it) and
``docker run --rm IMAGE echo hi``, each from the start of the process to its exit,
``--runs`` times. One JSON object: each side's median and all its runs, and
``median_ratio``, the median of the per-pair ratios (target <= 1.3).

Usage: python bench/run_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import ensure_test_image  # noqa: E402

#: idle time after the node is up, so that nothing of the start is still settling
SETTLE_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def timed(argv: list[str], env: dict[str, str], expect: bytes) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0 or done.stdout != expect:
        raise RuntimeError(
            f"{argv[:2]} failed ({done.returncode}): {done.stdout!r} {done.stderr!r}"
        )
    return took


def wait_for_node(url: str, token: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"{url}/api/v1/nodes", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                nodes = json.loads(r.read())
            if any(n["state"] in ("idle", "busy") for n in nodes["nodes"]):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("berth dev's node did not come up")


def main(runs: int) -> dict[str, object]:
    image = ensure_test_image()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    berth = berth_command()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        dev = subprocess.Popen(
            [*berth, "dev", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            token_file = state / "admin.token"
            deadline = time.monotonic() + 60
            while not token_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            token = token_file.read_text().strip()
            wait_for_node(url, token)
            time.sleep(SETTLE_S)
            env = {**os.environ, "BERTH_ADDR": url, "BERTH_TOKEN": token}
            run = [*berth, "run", image, "--", "echo", "hi"]
            docker = ["docker", "run", "--rm", image, "echo", "hi"]
            # One untimed of each: image and page caches warm for both.
            timed(run, env, b"hi\n")
            timed(docker, env, b"hi\n")
            berth_s, docker_s = [], []
            for i in range(runs):
                pair = [(berth_s, run), (docker_s, docker)]
                for into, argv in pair if i % 2 == 0 else reversed(pair):
                    into.append(timed(argv, env, b"hi\n"))
        finally:
            dev.terminate()
            dev.wait(timeout=30)
    ratios = [b / d for b, d in zip(berth_s, docker_s, strict=True)]
    return {
        "runs": runs,
        "berth_run_median_s": round(statistics.median(berth_s), 3),
        "docker_run_median_s": round(statistics.median(docker_s), 3),
        "median_ratio": round(statistics.median(ratios), 3),
        "target_ratio": 1.3,
        "berth_run_s": [round(x, 3) for x in berth_s],
        "docker_run_s": [round(x, 3) for x in docker_s],
    }


def berth_command() -> list[str]:
    """The `berth` entry point pip installed beside this interpreter (not a version
    manager's shim, which adds its own start-up to every call), else the module."""
    script = Path(sys.executable).with_name("berth")
    if script.is_file():
        probe = subprocess.run([str(script), "--help"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [str(script)]
    return [sys.executable, "-m", "cli.main"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(main(max(1, args.runs))))
