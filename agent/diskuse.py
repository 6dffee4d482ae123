"""How much of the agent's disk a job has written: the watched per-job disk quota.

Where the storage driver cannot bound a container's writable layer itself (dockerd's
``storage_opt size`` needs overlay2 on xfs mounted with ``pquota``), and for the
workspace and checkpoint directories, which no driver bounds, the runner measures what
the job's directories hold every ``DISK_CHECK_INTERVAL_S`` seconds (``du``: allocated
blocks, each file once however many links it has, links not followed, other
filesystems not entered) and fails the job past ``--max-job-disk-mb``. A job writing
faster than that is stopped within one interval, not at the exact byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

MIB = 1024 * 1024


def used_bytes(roots: Iterable[str]) -> int:
    """Bytes of disk allocated to the files under ``roots`` (blocking)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        try:
            top = os.lstat(root)
        except OSError:
            continue  # not there (yet, or any more)
        stack = [root]
        while stack:
            path = stack.pop()
            try:
                entries = list(os.scandir(path))
            except OSError:
                continue  # removed meanwhile, or not a directory
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False) and st.st_dev == top.st_dev:
                    stack.append(entry.path)
    return total


def quota_exceeded(used: int, limit_mb: int) -> str | None:
    """The job's failure reason when ``used`` bytes are past the limit, else None."""
    if used <= limit_mb * MIB:
        return None
    return f"disk quota exceeded: wrote {used // MIB} MiB, limit {limit_mb} MiB"
