"""The text of `berth job`: a queued job's reservation and the expected runtime, on
plain Job objects with a fixed clock; and `berth submit --expected-runtime`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cli.job_detail import job_detail, reservation_text
from cli.jobs_cmd import _rules_of, _with_rules
from cli.live_cmd import CommandError
from cli.text import ago, until, utc
from common.models import Job, JobResources, JobSpec, Reservation
from common.states import JobState

NOW = datetime(2026, 12, 3, 13, 53, 0, tzinfo=UTC)


def queued(
    spec: JobSpec | None = None, reservation: Reservation | None = None, reason: str | None = None
) -> Job:
    return Job(
        id="0123456789abcd",
        name="big",
        state=JobState.QUEUED,
        spec=spec or JobSpec(image="busybox", resources=JobResources(cpu=4)),
        created_at=NOW - timedelta(minutes=3),
        queued_at=NOW - timedelta(minutes=3),
        reason=reason,
        reservation=reservation,
    )


def lines_of(text: str, label: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(label)]


def test_a_reservation_names_its_node_and_estimated_start() -> None:
    start = NOW + timedelta(minutes=12)
    job = queued(
        reason="reserved: node n3 from 14:05:00",
        reservation=Reservation(node_id="b" * 14, node="n3", start=start),
    )
    text = job_detail(job, NOW)
    assert lines_of(text, "reserved") == [
        "reserved  node n3 from 2026-12-03 14:05:00 UTC (estimated start, in 12m)"
    ]
    assert lines_of(text, "queued") == [
        "queued    3m ago, waiting: reserved: node n3 from 14:05:00"
    ]


def test_a_reservation_without_an_end_in_sight_says_the_start_is_unknown() -> None:
    job = queued(reservation=Reservation(node_id="b" * 14, node="n3", start=None))
    assert lines_of(job_detail(job, NOW), "reserved") == [
        "reserved  node n3, start unknown (a job there has no end in sight)"
    ]


def test_a_start_that_has_come_is_due_now() -> None:
    r = Reservation(node_id="b" * 14, node="n3", start=NOW - timedelta(seconds=5))
    assert reservation_text(r, NOW).endswith("(estimated start, due now)")


def test_only_a_queued_job_shows_its_reservation() -> None:
    r = Reservation(node_id="b" * 14, node="n3", start=NOW)
    assert lines_of(job_detail(queued(), NOW), "reserved") == []
    running = queued(reservation=r)
    running.state = JobState.RUNNING
    assert lines_of(job_detail(running, NOW), "reserved") == []


def test_the_expected_runtime_is_shown_with_the_timeout_when_set() -> None:
    assert lines_of(job_detail(queued(), NOW), "runtime") == []
    spec = JobSpec(image="busybox", timeout_s=3600, expected_runtime_s=600)
    assert lines_of(job_detail(queued(spec=spec), NOW), "runtime") == [
        "runtime   expected 600s, timeout 3600s"
    ]


def test_relative_and_absolute_times() -> None:
    assert until(NOW + timedelta(hours=2, minutes=5), NOW) == "in 2h"
    assert until(NOW + timedelta(seconds=40), NOW) == "in 40s"
    assert until(NOW, NOW) == "due now"
    assert ago(NOW - timedelta(days=3), NOW) == "3d ago"
    assert ago(None, NOW) == "-"
    plus_one = timezone(timedelta(hours=1))
    assert utc(datetime(2026, 12, 3, 15, 5, tzinfo=plus_one)) == "2026-12-03 14:05:00 UTC"


def test_submit_expected_runtime_sets_the_spec_field() -> None:
    [spec] = _with_rules([JobSpec(image="busybox")], _rules_of(expected_runtime=600.0))
    assert spec.expected_runtime_s == 600.0
    [spec] = _with_rules([JobSpec(image="busybox")], _rules_of(expected_runtime=None))
    assert spec.expected_runtime_s is None
    with pytest.raises(CommandError) as refused:
        _with_rules([JobSpec(image="busybox")], _rules_of(expected_runtime=0.0))
    assert "expected_runtime_s" in refused.value.message
