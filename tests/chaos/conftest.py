"""Chaos suite: real scheduler, agent and dockerd processes, real faults (SIGKILL, a
restarted dockerd, a full disk), every wait bounded.

Each test fills a :class:`Figures` record (jobs, faults injected, acknowledged,
terminal, losses, duplicates, seconds, and what else it measured). The record is
written to ``test-artifacts/chaos/<suite>.json`` when the test ends, pass or fail, and
every record is printed at the end of the run so that CI output shows them. Figures
are measurements, not assertions: the tests assert outcomes, never durations.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from tests.e2e.conftest import docker_image  # noqa: F401 - the e2e fixture, reused
from tests.support import REPO

ARTIFACTS = REPO / "test-artifacts" / "chaos"

_RECORDS: list[dict[str, Any]] = []


@dataclass
class Figures:
    suite: str
    #: jobs the test submitted (or tried to)
    jobs: int = 0
    #: faults injected (kills, restarts, a full disk)
    faults: int = 0
    #: submits answered 2xx
    acknowledged: int = 0
    #: acknowledged jobs that reached a terminal state
    terminal: int = 0
    #: acknowledged jobs missing, not ended, or ended other than as the test expects
    losses: int = 0
    #: (job, attempt) pairs whose end was accepted twice, or jobs created twice
    duplicates: int = 0
    seconds: float = 0.0
    #: what else the suite measured
    extra: dict[str, Any] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic, repr=False)

    def record(self, outcome: str) -> dict[str, Any]:
        self.seconds = round(time.monotonic() - self._started, 2)
        row = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        extra = row.pop("extra")
        row.update(extra)
        row["outcome"] = outcome
        return row


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """A figures record named after the test's module; saved and printed at its end."""
    suite = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    fig = Figures(suite)
    yield fig
    report = getattr(request.node, "_chaos_call_report", None)
    outcome = "passed" if report is not None and report.passed else "failed"
    row = fig.record(outcome)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{fig.suite}.json").write_text(json.dumps(row, indent=2) + "\n")
    _RECORDS.append(row)
    print(f"\nchaos figures: {json.dumps(row)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item._chaos_call_report = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RECORDS:
        return
    terminalreporter.section("chaos figures")
    for row in _RECORDS:
        terminalreporter.write_line(json.dumps(row))
