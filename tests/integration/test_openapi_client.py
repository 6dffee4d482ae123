"""A client generated from the served OpenAPI document by openapi-python-client, as an
API user makes theirs, drives a job through a real scheduler and agent: its functions
are named by the operationIds, its models are the API's, and a refusal is the one
typed Error (no error model per operation)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import requests

from tests.integration.conftest import StartAgent
from tests.support import SchedulerProcess

pytestmark = pytest.mark.stores("sqlite")

#: the generated package's name (a module of that name must not exist already)
PACKAGE = "berth_generated_client"


def _snake(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


@pytest.fixture
def generated(
    sched: SchedulerProcess, tmp_path: Path
) -> Iterator[tuple[ModuleType, dict[str, Any]]]:
    """The client package generated from the scheduler's own document, imported."""
    doc = requests.get(f"{sched.url}/api/v1/openapi.json", timeout=30)
    assert doc.status_code == 200
    spec = tmp_path / "openapi.json"
    spec.write_bytes(doc.content)
    out = tmp_path / "gen" / PACKAGE
    made = subprocess.run(
        [
            *(sys.executable, "-m", "openapi_python_client", "generate"),
            *("--path", str(spec), "--output-path", str(out), "--meta", "none"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    # Every operation is generated: the tool warns about those it had to leave out.
    assert "WARNING" not in made.stdout + made.stderr, made.stdout + made.stderr
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module(PACKAGE), doc.json()
    finally:
        sys.path.remove(str(out.parent))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


async def test_a_generated_client_submits_lists_gets_and_is_refused_with_the_error_model(
    sched: SchedulerProcess,
    agents: StartAgent,
    http: aiohttp.ClientSession,
    generated: tuple[ModuleType, dict[str, Any]],
) -> None:
    pkg, doc = generated
    # Each operation is one function module, named by its operationId, under its tag.
    for by_method in doc["paths"].values():
        for op in by_method.values():
            name = f"{PACKAGE}.api.{op['tags'][0]}.{_snake(op['operationId'])}"
            assert hasattr(importlib.import_module(name), "asyncio_detailed"), name
    models = {p.stem for p in Path(pkg.__file__).parent.joinpath("models").glob("*.py")}
    assert {"error", "error_info", "job", "job_spec", "job_list", "stats"} <= models
    assert not [m for m in models if re.search(r"_response_[45]", m)], sorted(models)

    from berth_generated_client import AuthenticatedClient
    from berth_generated_client.api.jobs import (
        get_job,
        list_jobs,
        submit_job,
    )
    from berth_generated_client.api.system import get_stats
    from berth_generated_client.models import (
        Error,
        Job,
        JobList,
        JobSpec,
        JobState,
        Stats,
    )

    agents("gen")
    client = AuthenticatedClient(base_url=sched.url, token=sched.admin_token, timeout=60)
    async with client:
        spec = JobSpec.from_dict({"image": "busybox", "command": ["sh", "-c", "echo typed"]})
        spec.name = "typed"
        submitted = await submit_job.asyncio_detailed(client=client, body=spec)
        assert submitted.status_code == 201
        job = submitted.parsed
        assert isinstance(job, Job) and job.state is JobState.QUEUED and job.name == "typed"

        listed = await list_jobs.asyncio(client=client)
        assert isinstance(listed, JobList) and job.id in [j.id for j in listed.jobs]

        # A blocking get per change of the job, until it has ended.
        deadline = time.monotonic() + 30
        now = job
        while now.state not in (JobState.COMPLETED, JobState.FAILED):
            assert time.monotonic() < deadline, now.state
            got = await get_job.asyncio(client=client, id=job.id, index=now.index, wait=5)
            assert isinstance(got, Job)
            now = got
        assert now.state is JobState.COMPLETED and now.exit_code == 0

        bad = JobSpec.from_dict({"image": "busybox", "priority": 1000})
        refused = await submit_job.asyncio_detailed(client=client, body=bad)
        assert refused.status_code == 400
        error = refused.parsed
        assert isinstance(error, Error)
        assert error.error.code == "invalid"
        assert error.error.details["field"] == "$.priority"

        stats = await get_stats.asyncio(client=client)
        assert isinstance(stats, Stats)
        assert stats.jobs["completed"] == 1
