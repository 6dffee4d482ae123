"""An agent's usage samples: kept until a report delivers them, bounded meanwhile."""

from __future__ import annotations

from agent.executors.base import UsageSample
from agent.usage import UsageTracker
from common.history_models import MAX_SAMPLES_PER_REPORT, UsagePoint


def test_samples_wait_for_the_next_report_and_go_once() -> None:
    tracker = UsageTracker(report_interval_s=5.0)
    tracker.add(UsageSample(150.0, 12.3456), at=100.0)
    tracker.add(UsageSample(-3.0, 2e9), at=102.0)
    assert tracker.take_samples() == [
        UsagePoint(100.0, 150.0, 12.346),
        # Clamped into the model's bounds, as the Usage is.
        UsagePoint(102.0, 0.0, 1e9),
    ]
    assert tracker.take_samples() == []


def test_samples_a_report_did_not_deliver_go_first_with_the_next() -> None:
    tracker = UsageTracker(report_interval_s=5.0)
    tracker.add(UsageSample(1.0, 1.0), at=1.0)
    failed = tracker.take_samples()
    tracker.add(UsageSample(2.0, 2.0), at=2.0)
    tracker.unsent(failed)
    assert [p.t for p in tracker.take_samples()] == [1.0, 2.0]


def test_while_reports_fail_only_the_newest_samples_are_kept() -> None:
    tracker = UsageTracker(report_interval_s=5.0)
    for i in range(MAX_SAMPLES_PER_REPORT + 10):
        tracker.add(UsageSample(1.0, 1.0), at=float(i))
    kept = tracker.take_samples()
    assert len(kept) == MAX_SAMPLES_PER_REPORT
    assert kept[0].t == 10.0
    assert kept[-1].t == MAX_SAMPLES_PER_REPORT + 9
