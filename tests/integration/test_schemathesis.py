"""Schemathesis against a live scheduler: whatever requests the OpenAPI document allows,
valid or not, with an admin token, the scheduler never answers 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from scheduler.openapi import document
from tests.support import SchedulerProcess

schema = schemathesis.openapi.from_dict(document())

#: long polls and follows are cut short: this test is about answers, not waiting
MAX_WAIT_S = 0.2


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(Path(tmp_path_factory.mktemp("schemathesis")) / "state").start()
    yield proc
    proc.kill()


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: schemathesis.Case, live: SchedulerProcess) -> None:
    query = case.query or {}
    if "wait" in query:
        query["wait"] = MAX_WAIT_S
    query.pop("follow", None)
    case.query = query
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {live.admin_token}"},
        checks=[not_a_server_error],
        timeout=30,
    )
