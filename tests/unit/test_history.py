"""The cluster's history as pure logic: ranges, steps, samples, averages and tiers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.history_models import Gauge, GpuGauge, SampleNode, StatsSample
from common.models import GpuUse, Node, NodeMetrics, Resources
from common.states import JobState, NodeState
from scheduler import history
from scheduler.events import Event

NOW = 1_800_000_000.0
DAY = 86400.0


def _sample(
    t: float, *, queued: int = 0, started: int = 0, cpu_used: float = 0.0, nodes: int = 1
) -> StatsSample:
    return StatsSample(
        t=t,
        queued=queued,
        running=1,
        jobs={"queued": queued, "running": 1},
        started=started,
        ended=0,
        cpu=Gauge(8.0, 2.0, cpu_used),
        memory_mb=Gauge(1024.0, 512.0, 100.0),
        gpus=GpuGauge(2, 1, 0.5),
        nodes=[
            SampleNode(f"n{i}", f"node-{i}", Gauge(4.0, 1.0, cpu_used), Gauge(), GpuGauge())
            for i in range(nodes)
        ],
    )


# --- ranges and steps ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, NOW - 3600),
        ("", NOW - 3600),
        ("15m", NOW - 900),
        ("1h", NOW - 3600),
        ("24h", NOW - DAY),
        ("7d", NOW - 7 * DAY),
        ("90", NOW - 90),
        ("1700000000", 1_700_000_000.0),
    ],
)
def test_since_is_a_duration_back_from_now_or_a_unix_time(raw: str | None, expected: float) -> None:
    assert history.parse_since(raw, NOW) == expected


@pytest.mark.parametrize("raw", ["banana", "-1h", "0m", "2y", "1h30m", "400d", str(NOW + 2 * DAY)])
def test_a_since_that_is_neither_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="since"):
        history.parse_since(raw, NOW)


@pytest.mark.parametrize("raw", ["0", "-5", "1.5", "x", str(8 * 86400)])
def test_a_step_must_be_whole_seconds_within_a_week(raw: str) -> None:
    with pytest.raises(ValueError, match="step"):
        history.parse_step(raw)
    assert history.parse_step("60") == 60
    assert history.parse_step(None) is None


def test_a_range_is_served_in_at_most_720_points_from_the_coarsest_tier_that_fits() -> None:
    # An hour of 10 s samples: every sample.
    assert history.choose(NOW - 3600, NOW, 10.0, None) == (0, 10)
    # A day: two minutes a point, read from the minute averages.
    assert history.choose(NOW - DAY, NOW, 10.0, None) == (1, 120)
    # Six hours: 30 s a point, from the samples (a minute is coarser than that).
    assert history.choose(NOW - 6 * 3600, NOW, 10.0, None) == (0, 30)
    # Two days: the minute averages, four minutes a point.
    assert history.choose(NOW - 2 * DAY, NOW, 10.0, None) == (1, 240)
    # A week: the five-minute averages, whole multiples of them.
    tier, step = history.choose(NOW - 7 * DAY, NOW, 10.0, None)
    assert (tier, step) == (2, 900)
    # Older than anything kept: the coarsest tier.
    assert history.choose(NOW - 30 * DAY, NOW, 10.0, None)[0] == 2
    # Half-second samples still make whole-second steps.
    assert history.choose(NOW - 60, NOW, 0.5, None) == (0, 1)


def test_a_step_asked_for_is_kept_unless_it_makes_too_many_points() -> None:
    assert history.choose(NOW - 3600, NOW, 10.0, 1) == (0, 1)
    assert history.choose(NOW - 3600, NOW, 10.0, 300) == (2, 300)
    assert history.choose(NOW - 3600, NOW, 10.0, 90) == (0, 90)
    with pytest.raises(ValueError, match="step"):
        history.choose(NOW - 7 * DAY, NOW, 10.0, 1)


# --- samples -------------------------------------------------------------------------


def _node(node_id: str, state: NodeState, cpu_percent: float, free_mb: int) -> Node:
    return Node(
        id=node_id,
        name=f"name-{node_id}",
        state=state,
        capacity=Resources(cpu=8.0, memory_mb=4096, gpus=2),
        registered_at=datetime.fromtimestamp(NOW, UTC),
        reserved=Resources(cpu=1.0, memory_mb=96),
        allocated=Resources(cpu=3.0, memory_mb=1000, gpus=1),
        metrics=NodeMetrics(
            cpu_percent=cpu_percent,
            ram_total_mb=4096,
            ram_free_mb=free_mb,
            gpus=[GpuUse(index=0, utilization_percent=50.0), GpuUse(index=1)],
        ),
    )


def test_a_sample_adds_up_nodes_that_are_not_offline() -> None:
    counts = {JobState.QUEUED: 3, JobState.RUNNING: 2, JobState.COMPLETED: 7}
    nodes = [
        _node("a", NodeState.BUSY, 50.0, 3096),
        _node("b", NodeState.IDLE, 25.0, 4000),
        _node("c", NodeState.OFFLINE, 90.0, 0),
    ]
    s = history.sample(NOW, counts, nodes, started=4, ended=5)
    assert (s.t, s.queued, s.running, s.started, s.ended) == (NOW, 3, 2, 4, 5)
    assert s.jobs == {"queued": 3, "running": 2, "completed": 7}
    # Capacity is what a node offers less what it keeps for its host; used is the
    # host's CPU share of all its cores.
    assert s.cpu == Gauge(14.0, 6.0, 6.0)
    assert s.memory_mb == Gauge(8000.0, 2000.0, 1096.0)
    assert s.gpus == GpuGauge(4, 2, 1.0)
    assert [n.id for n in s.nodes] == ["a", "b"]
    assert s.nodes[0] == SampleNode(
        "a", "name-a", Gauge(7.0, 3.0, 4.0), Gauge(4000.0, 1000.0, 1000.0), GpuGauge(2, 1, 0.5)
    )


def test_a_node_without_metrics_yet_uses_nothing() -> None:
    node = _node("a", NodeState.IDLE, 0, 0)
    node.metrics = None
    cpu, mem, gpus = history.node_gauges(node)
    assert (cpu.used, mem.used, gpus.used) == (0.0, 0.0, 0.0)


def test_the_tally_counts_starts_and_ends_but_not_resumes() -> None:
    def state(index: int, new: str, old: str) -> Event:
        ts = datetime.fromtimestamp(NOW, UTC)
        return Event(index, "job.state", ts, job_id="j", data={"state": new, "from": old})

    tally = history.Tally()
    tally.see(
        [
            state(1, "running", "assigned"),
            state(2, "paused", "running"),
            state(3, "running", "paused"),
            state(4, "completed", "running"),
            state(5, "cancelled", "queued"),
            Event(6, "job.progress", datetime.fromtimestamp(NOW, UTC), data={"percent": 5}),
        ]
    )
    assert tally.take() == (1, 2)
    assert tally.take() == (0, 0)


# --- averaging -----------------------------------------------------------------------


def test_a_rollup_averages_gauges_and_sums_counters_per_aligned_step() -> None:
    samples = [
        _sample(NOW + 0, queued=1, started=1, cpu_used=1.0),
        _sample(NOW + 10, queued=2, started=0, cpu_used=2.0),
        _sample(NOW + 20, queued=6, started=3, cpu_used=6.0),
        _sample(NOW + 60, queued=4, started=1, cpu_used=4.0),
    ]
    out = history.rollup(samples, 60.0)
    assert [s.t for s in out] == [NOW, NOW + 60]
    first, second = out
    assert (first.queued, first.started, first.cpu.used) == (3, 4, 3.0)
    assert first.jobs == {"queued": 3, "running": 1}
    assert first.nodes[0].cpu.used == 3.0
    assert (second.queued, second.started, second.cpu.used) == (4, 1, 4.0)


def test_a_node_is_averaged_over_the_samples_it_appears_in() -> None:
    out = history.rollup(
        [_sample(NOW, cpu_used=2.0, nodes=1), _sample(NOW + 1, cpu_used=4.0, nodes=2)], 10
    )
    (s,) = out
    by_id = {n.id: n for n in s.nodes}
    assert by_id["n0"].cpu.used == 3.0
    assert by_id["n1"].cpu.used == 4.0


def test_the_reply_splits_points_and_nodes_within_the_range() -> None:
    samples = [_sample(NOW + i, queued=i) for i in range(0, 40, 10)]
    reply = history.history(samples, NOW + 5, NOW + 40, 20)
    assert (reply.since, reply.until, reply.step) == (NOW + 5, NOW + 40, 20)
    assert [(p.t, p.queued) for p in reply.points] == [(NOW, 10), (NOW + 20, 25)]
    (node,) = reply.nodes
    assert (node.id, node.name) == ("n0", "node-0")
    assert [p.t for p in node.points] == [NOW, NOW + 20]


# --- coarser tiers -------------------------------------------------------------------


def test_coarser_steps_come_due_once_complete_and_then_not_again() -> None:
    roller = history.Roller(10.0, [NOW - 120, NOW - 600])
    # NOW is a multiple of 300 s: the minutes since NOW - 120 and the five-minute
    # steps since NOW - 600 are complete.
    assert roller.due(NOW + 30) == [(1, NOW - 120, NOW), (2, NOW - 600, NOW)]
    roller.stored(1, NOW)
    roller.stored(2, NOW)
    assert roller.due(NOW + 59) == []
    assert roller.due(NOW + 61) == [(1, NOW, NOW + 60)]


def test_with_nothing_stored_yet_coarser_steps_start_where_tier_0_may_reach() -> None:
    roller = history.Roller(10.0, [None, None])
    due = dict((tier, (start, end)) for tier, start, end in roller.due(NOW))
    assert due[1] == (NOW - DAY, NOW)
    assert due[2] == (NOW - DAY, NOW)


def test_each_tier_is_cut_at_its_own_age() -> None:
    assert history.Roller(0.5, []).cutoffs(NOW) == {
        0: NOW - DAY,
        1: NOW - 3 * DAY,
        2: NOW - 7 * DAY,
    }
