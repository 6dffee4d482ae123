"""A real, throwaway PostgreSQL cluster for the tests, one per test session.

Debian's ``postgresql`` package provides the binaries; the server refuses to run as
root, so the cluster belongs to an unprivileged system user (made here when missing).
It listens on a Unix socket in a temporary directory only, and each test gets a fresh
database of its own. Without the binaries the tests that need it are skipped, except
under ``CI=true``, where they fail.

A conftest registers the fixtures by importing them::

    from tests.pg import pg_cluster, pg_dsn  # noqa: F401
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

#: the system user that owns and runs the cluster
PG_USER = "berth-pg"
#: the database superuser the tests connect as
SUPERUSER = "postgres"
#: how long the server may take to start or stop (seconds)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def find_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda p: int(Path(p).parent.parent.name))
    return Path(newest).parent


class PgCluster:
    """One running cluster; ``dsn`` names a database in it."""

    def __init__(self, bindir: Path, root: Path, port: int, proc: subprocess.Popen[bytes]):
        self.bindir = bindir
        self.root = root
        self.sockdir = root / "sock"
        self.port = port
        self.proc = proc
        self._numbers = itertools.count(1)

    def dsn(self, db: str = "postgres") -> str:
        """A DSN for ``db``, usable by asyncpg and as a ``--store`` value (no spaces)."""
        return f"postgresql://{SUPERUSER}@/{db}?host={self.sockdir}&port={self.port}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run ``sql`` with psql as the superuser; returns its unaligned output."""
        where = ["-h", str(self.sockdir), "-p", str(self.port), "-U", SUPERUSER, "-d", db]
        quiet = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        out = subprocess.run(
            [str(self.bindir / "psql"), *quiet, *where, "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    async def connect(self, db: str = "postgres") -> Any:
        """An admin connection (the superuser) to ``db``, e.g. to kill backends with
        ``pg_terminate_backend``; the caller closes it."""
        return await asyncpg.connect(self.dsn(db))

    def new_database(self) -> str:
        """A fresh, empty database; returns its name."""
        name = f"test_{next(self._numbers)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server with a fast shutdown and start it again on the same data
        directory, socket and port, ``down_s`` seconds later; returns once it answers.

        Every open session is ended, as when the database host restarts; what was
        committed is kept. The server runs with the command line and as the user it was
        first started with (the owner of the cluster's directory).
        """
        # The command line start_cluster gave (a list of str and Path).
        argv: list[Any] = list(self.proc.args)  # type: ignore[arg-type]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(STOP_TIMEOUT_S)
        time.sleep(down_s)
        user: dict[str, Any] = {}
        if os.geteuid() == 0:
            st = self.root.stat()
            user = {"user": st.st_uid, "group": st.st_gid, "extra_groups": []}
        with (self.root / "server.log").open("ab") as logfile:
            self.proc = subprocess.Popen(
                argv, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True, **user
            )
        _wait_ready(self)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown: open sessions are ended, then it exits.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=False,
        )
    # Another test process may have made the user (or held the lock) at the same moment.
    for _ in range(50):
        try:
            return pwd.getpwnam(PG_USER)
        except KeyError:
            time.sleep(0.1)
    raise RuntimeError(f"useradd {PG_USER} failed (exit {made.returncode})")


def _free_port() -> int:
    # Only the socket file's name uses it (no TCP), but a port free on the host keeps
    # it clear of a cluster started there the usual way.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ClusterDir:
    """A new temporary directory for one cluster, owned by the user the server runs as."""

    root: Path
    data: Path
    sockdir: Path
    #: the command prefix that runs a program as that user (empty when not root)
    as_user: list[str]
    #: subprocess.Popen arguments that start the server as that user
    user: dict[str, Any]


def cluster_dir(prefix: str = "berth-pg-") -> ClusterDir:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    sockdir = root / "sock"
    sockdir.mkdir()
    as_user: list[str] = []
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        # The server refuses to run as root: the cluster is the system user's.
        pw = _ensure_user()
        for path in (root, sockdir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", PG_USER, "--"]
        user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    root.chmod(0o755)
    return ClusterDir(root, root / "data", sockdir, as_user, user)


def launch(bindir: Path, where: ClusterDir, settings: list[str]) -> PgCluster:
    """Start the server on ``where``'s data directory; returns once it answers."""
    port = _free_port()
    logfile = (where.root / "server.log").open("wb")
    base = ["-c", "listen_addresses=", "-c", "max_connections=200"]
    proc = subprocess.Popen(
        [
            str(bindir / "postgres"),
            *("-D", str(where.data), "-k", str(where.sockdir), "-p", str(port)),
            *base,
            *settings,
        ],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        # Its own session: a ^C at the terminal reaches pytest, which stops it in order.
        start_new_session=True,
        **where.user,
    )
    logfile.close()
    cluster = PgCluster(bindir, where.root, port, proc)
    try:
        _wait_ready(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_cluster(bindir: Path, fsync: bool = False) -> PgCluster:
    """initdb and start a cluster in a new temporary directory; ``fsync`` as in
    production (benchmarks), else off (tests)."""
    where = cluster_dir()
    initdb = [str(bindir / "initdb"), "-A", "trust", "-N", "-U", SUPERUSER, "-D", str(where.data)]
    # No locale: ids sort as bytes, as in SQLite, and no locale need be installed.
    subprocess.run(
        [*where.as_user, *initdb, "--no-locale", "-E", "UTF8"], check=True, capture_output=True
    )
    # Throwaway data: skipping fsync makes every commit and CREATE DATABASE cheap;
    # nothing here has to survive a power loss. Never outside tests.
    return launch(bindir, where, [] if fsync else ["-c", "fsync=off"])


def required_bin() -> Path:
    """PostgreSQL's ``bin`` directory; without it a test fails under CI and is skipped
    elsewhere."""
    bindir = find_bin()
    if bindir is None:
        reason = "PostgreSQL is not installed (Debian package postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return bindir


def _wait_ready(cluster: PgCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    ready = [str(cluster.bindir / "pg_isready"), "-q", "-h", str(cluster.sockdir)]
    ready += ["-p", str(cluster.port), "-U", SUPERUSER]
    while subprocess.run(ready, check=False).returncode != 0:
        if cluster.proc.poll() is not None or time.monotonic() > deadline:
            log = (cluster.root / "server.log").read_text(errors="replace")
            raise RuntimeError(f"PostgreSQL did not start:\n{log}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the whole test session."""
    cluster = start_cluster(required_bin())
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """The DSN of a fresh database of its own for one test."""
    name = pg_cluster.new_database()
    yield pg_cluster.dsn(name)
    # Best effort: what a test left connected is ended; the cluster goes at the end.
    with contextlib.suppress(subprocess.CalledProcessError):
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
