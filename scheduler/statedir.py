"""The scheduler's state directory is private: 0700, and everything in it 0600 (files)
or 0700 (directories), whatever the umask it was started with.

It holds the admin and join tokens, the webhook key, the secrets key, the database
(every job's spec, environment included, and its logs) and the blobs; none of it is
for other users of the host.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: what the scheduler creates may be read by its own user only
UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
#: the names the scheduler writes at the top of its state directory (the database with
#: its -wal and -shm, the tokens, the webhook and secrets keys, the blobs)
OWN_ENTRIES = ("berth.db", "admin.token", "join.token", "webhook.key", "secrets.key", "blobs")


def make_private(state_dir: Path) -> None:
    """Create ``state_dir`` or tighten it and what it holds (an older version may have
    left it open), and set the process umask so that what comes later (SQLite's -wal
    and -shm, blobs, temporary files) is private from the start.

    The umask is process-wide: call this from the scheduler's own process, which starts
    no children that would inherit it."""
    os.umask(UMASK)
    state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(state_dir, DIR_MODE)
    # The scheduler's own entries only (the directory may hold other things, such as
    # `berth dev`'s agent), and not what lies deeper: others cannot reach it through
    # a 0700 directory, and a walk of every blob would slow each start.
    for path in state_dir.iterdir():
        if not path.name.startswith(OWN_ENTRIES):
            continue
        mode = path.lstat().st_mode
        # Links are left alone: chmod would change what they point to.
        if stat.S_ISDIR(mode):
            os.chmod(path, DIR_MODE)
        elif stat.S_ISREG(mode):
            os.chmod(path, FILE_MODE)
