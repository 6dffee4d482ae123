"""The per-job disk quota's measure and the bounds on shipped output (pure pieces)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import (
    CONTAINER_LOG_MAX_FILES,
    CONTAINER_LOG_MAX_SIZE,
    LOG_HEAD_BYTES,
    LOG_TAIL_BYTES,
)
from agent.diskuse import MIB, quota_exceeded, used_bytes
from agent.executors.base import AttemptInfo
from agent.executors.docker import container_options
from agent.runner import OUTPUT_CUT_MARKER, OUTPUT_DROPPED_MARKER, OUTPUT_TAIL_MARKER
from common.models import JobResources, JobSpec
from scheduler.state import LOG_CAP_BYTES


def _write(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(1024) * (1024 * mib))


def test_used_bytes_counts_allocated_blocks_once_and_follows_no_link(tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "deep" / "er").mkdir(parents=True)
    elsewhere.mkdir()
    _write(work / "deep" / "er" / "a", 3)
    os.link(work / "deep" / "er" / "a", work / "hard")  # the same blocks again
    _write(elsewhere / "big", 5)
    (work / "link").symlink_to(elsewhere)
    with open(work / "sparse", "wb") as f:
        f.truncate(100 * MIB)  # claims 100 MiB, holds none
    used = used_bytes([str(work), str(tmp_path / "missing")])
    assert 3 * MIB <= used < 4 * MIB
    assert used_bytes([str(work), str(elsewhere)]) >= 8 * MIB


def test_the_quota_reason_names_what_was_written_and_the_limit() -> None:
    assert quota_exceeded(64 * MIB, 64) is None
    assert quota_exceeded(200 * MIB + 5, 64) == "disk quota exceeded: wrote 200 MiB, limit 64 MiB"


def test_what_the_agent_ships_fits_under_the_schedulers_log_cap() -> None:
    # Head, both markers at their longest and the tail: the scheduler never cuts it.
    longest = OUTPUT_DROPPED_MARKER % (2**63, LOG_TAIL_BYTES)
    assert len(OUTPUT_TAIL_MARKER % LOG_TAIL_BYTES) <= len(longest)
    total = LOG_HEAD_BYTES + len(OUTPUT_CUT_MARKER) + len(longest) + LOG_TAIL_BYTES
    assert total <= LOG_CAP_BYTES


def test_a_containers_log_file_is_rotated_and_bounded() -> None:
    info = AttemptInfo(job_id="j", attempt=1, node_id="n", timeout_s=10, memory_mb=64)
    spec = JobSpec(image="x", command="true", resources=JobResources(cpu=0.1, memory_mb=64))
    host = container_options(info, spec)["host_config"]
    assert host["log_config"] == {
        "type": "json-file",
        "config": {"max-size": CONTAINER_LOG_MAX_SIZE, "max-file": str(CONTAINER_LOG_MAX_FILES)},
    }
