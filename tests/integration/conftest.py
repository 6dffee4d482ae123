from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.pg import PgCluster
from tests.support import Api, SchedulerProcess, start_process_agent

#: every integration test runs on each store, unless marked ``stores(...)``
STORES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("stores")
        kinds = only.args if only else STORES
        metafunc.parametrize("store_kind", kinds, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store every scheduler the module starts runs on: SQLite in its state
    directory, or a PostgreSQL database of its own per state directory."""
    if request.param != "postgresql":
        yield request.param
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    databases: dict[Path, str] = {}

    def database_for(state_dir: Path) -> str:
        if state_dir not in databases:
            databases[state_dir] = cluster.dsn(cluster.new_database())
        return databases[state_dir]

    SchedulerProcess.databases = database_for
    try:
        yield request.param
    finally:
        SchedulerProcess.databases = None


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[SchedulerProcess]:
    """A real scheduler process with short liveness intervals."""
    proc = SchedulerProcess(
        tmp_path / "state",
        "--heartbeat-interval",
        "0.5",
        "--node-ttl",
        "2",
        "--restart-grace",
        "3",
    ).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
def admin(sched: SchedulerProcess, http: aiohttp.ClientSession) -> Api:
    return Api(http, sched.url, sched.admin_token)


#: starts a real agent of the ``sched`` fixture's scheduler: a name, then extra flags
StartAgent = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def agents(sched: SchedulerProcess, tmp_path: Path) -> Iterator[StartAgent]:
    """Real `berth agent` processes (process executor, two slots, labelled
    ``host=<name>``) for ``sched``; later flags override these. Killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *extra: str) -> subprocess.Popen[bytes]:
        proc = start_process_agent(sched, tmp_path, name, *extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
