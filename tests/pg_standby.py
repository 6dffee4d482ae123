"""A PostgreSQL primary with a synchronous streaming standby, for tests that lose the
database host.

The primary is a cluster of :mod:`tests.pg` (``initdb -A trust`` lets the superuser
connect for replication over the local socket, and PostgreSQL's defaults already have
``wal_level=replica`` and WAL senders). The standby is ``pg_basebackup -R`` of it,
taken and run as the same unprivileged user, on a socket directory and port of its
own. Once it streams, the primary names it in ``synchronous_standby_names`` (``'*'``,
any standby) with ``synchronous_commit=on``, and waits until ``pg_stat_replication``
calls it ``sync``: from then on a commit returns to its client only after the standby
has written its WAL, so whatever a client saw committed survives the primary.

``kill_primary`` takes the whole primary away at once (postmaster and every backend,
SIGKILL), as a lost host would; ``promote`` makes the standby the read-write server.
``dsn`` names both with ``target_session_attrs=read-write``, so a client that connects
again finds whichever of them is writable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import (
    SUPERUSER,
    PgCluster,
    cluster_dir,
    launch,
    required_bin,
    start_cluster,
)

#: how long the standby may take to stream and be reported ``sync`` (seconds)
SYNC_TIMEOUT_S = 60.0
#: how long promotion may take (seconds)
PROMOTE_TIMEOUT_S = 60
#: how long killed server processes may take to disappear (seconds)
KILL_TIMEOUT_S = 10.0


class PgStandbyPair:
    """A primary and its synchronous standby; ``dsn`` names both."""

    def __init__(self, primary: PgCluster, standby: PgCluster, standby_data: Path) -> None:
        self.primary = primary
        self.standby = standby
        self.standby_data = standby_data

    def dsn(self, db: str = "postgres", *, standby_first: bool = False) -> str:
        """Both servers in one DSN, the writable one chosen at connect time.

        asyncpg reads a comma-separated ``host`` (Unix socket directories start with
        ``/``) and a matching ``port`` list from the query string, tries them in order
        and keeps the first whose session is read-write. It has no spaces, so it also
        goes as a ``--store`` value. ``standby_first`` lists the standby first, so that
        only the session check, not the order, makes the choice."""
        servers = [self.primary, self.standby]
        if standby_first:
            servers.reverse()
        hosts = ",".join(str(s.sockdir) for s in servers)
        ports = ",".join(str(s.port) for s in servers)
        return (
            f"postgresql://{SUPERUSER}@/{db}?host={hosts}&port={ports}"
            "&target_session_attrs=read-write"
        )

    def replication_state(self) -> str:
        """The standby's ``sync_state`` as the primary reports it ('' while none)."""
        return self.primary.psql("SELECT string_agg(sync_state, ',') FROM pg_stat_replication")

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every process it started, and wait until
        they are gone: nothing of it writes, answers or commits after this returns.

        PostgreSQL puts each child process in a session of its own, so a signal to the
        postmaster's process group does not reach them; they are found by their parent.
        The postmaster is stopped first, so that it starts no new one meanwhile."""
        pid = self.primary.proc.pid
        os.kill(pid, signal.SIGSTOP)
        children = _children_of(pid)
        for child in children:
            _kill(child)
        _kill(pid)
        self.primary.proc.wait(KILL_TIMEOUT_S)
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while any(_alive(c) for c in children):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the primary's processes outlived SIGKILL: {children}")
            time.sleep(0.01)

    def promote(self) -> float:
        """Promote the standby and return once it takes writes; returns the seconds it
        took."""
        started = time.monotonic()
        done = self.standby.psql(f"SELECT pg_promote(true, {PROMOTE_TIMEOUT_S})")
        if done != "t":
            raise RuntimeError(f"the standby was not promoted: {done!r}")
        if self.standby.psql("SELECT pg_is_in_recovery()") != "f":
            raise RuntimeError("the promoted standby is still in recovery")
        return time.monotonic() - started

    def stop(self) -> None:
        self.standby.stop()
        self.primary.stop()


def start_pair(bindir: Path) -> PgStandbyPair:
    """A primary (``tests.pg.start_cluster``) and a streaming standby of it that the
    primary waits for on every commit."""
    primary = start_cluster(bindir)
    try:
        standby, data = _start_standby(bindir, primary)
    except BaseException:
        primary.stop()
        raise
    pair = PgStandbyPair(primary, standby, data)
    try:
        # Set only now, after the base backup, on the primary alone: a backup taken with
        # it set would carry it to the standby (postgresql.auto.conf), and once promoted
        # that one would wait on every commit for a standby of its own that never comes.
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        primary.psql("ALTER SYSTEM SET synchronous_commit = 'on'")
        primary.psql("SELECT pg_reload_conf()")
        _wait_sync(pair)
    except BaseException:
        pair.stop()
        raise
    return pair


def _start_standby(bindir: Path, primary: PgCluster) -> tuple[PgCluster, Path]:
    where = cluster_dir("berth-pg-standby-")
    # -R writes standby.signal and primary_conninfo (the primary's socket and port);
    # -X stream brings the WAL written during the copy along with it.
    backup = [str(bindir / "pg_basebackup"), "-R", "-X", "stream", "-c", "fast"]
    backup += ["-D", str(where.data), "-h", str(primary.sockdir), "-p", str(primary.port)]
    backup += ["-U", SUPERUSER]
    subprocess.run([*where.as_user, *backup], check=True, capture_output=True)
    # fsync is off as on the primary: the test loses the primary's processes, not the
    # standby host's power, so what the standby wrote is in its page cache to stay.
    return launch(bindir, where, ["-c", "fsync=off"]), where.data


def _wait_sync(pair: PgStandbyPair) -> None:
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while (state := pair.replication_state()) != "sync":
        if time.monotonic() > deadline:
            log = (pair.standby.root / "server.log").read_text(errors="replace")
            raise RuntimeError(f"the standby is not synchronous ({state!r}):\n{log}")
        time.sleep(0.05)


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, waiting for its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def pg_pair() -> Iterator[PgStandbyPair]:
    """A primary with a synchronous standby, for one test (it may kill the primary)."""
    pair = start_pair(required_bin())
    yield pair
    pair.stop()
