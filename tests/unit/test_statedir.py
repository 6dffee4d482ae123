"""The state directory is tightened, and only the scheduler's own entries in it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from scheduler.statedir import make_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_state_dir_and_the_schedulers_entries_are_tightened_and_nothing_else(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    old = os.umask(0o022)
    try:
        state.mkdir(mode=0o755)
        for name in ("berth.db", "berth.db-wal", "admin.token", "run.sh"):
            (state / name).touch(mode=0o755)
        (state / "blobs").mkdir(mode=0o755)
        make_private(state)
        made = state / "later"
        made.touch(mode=0o666)
    finally:
        os.umask(old)
    assert _mode(state) == 0o700
    assert [_mode(state / n) for n in ("berth.db", "berth.db-wal", "admin.token")] == [0o600] * 3
    assert _mode(state / "blobs") == 0o700
    assert _mode(state / "run.sh") == 0o755
    # What the process creates afterwards is private from the start.
    assert _mode(made) == 0o600
