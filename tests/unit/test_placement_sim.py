"""The placement-quality simulator's bookkeeping, on cases small enough to check by hand."""

from __future__ import annotations

from typing import Any

import pytest

from bench.placement_quality import POLICIES, SIZE_MIX, cluster, drain, main, steady
from bench.placement_sim import (
    JobPlan,
    NodePlan,
    Outcome,
    Simulation,
    figures,
    percentile,
    work_bound,
)

GIB = 1024
GREEDY = POLICIES["greedy"]


def job(arrival_s: float, cpu: float, runtime_s: float, memory_mb: int = GIB) -> JobPlan:
    """A job whose estimate is exact."""
    return JobPlan(arrival_s, cpu, memory_mb, runtime_s, runtime_s, runtime_s * 1.25)


def simulate(
    nodes: list[NodePlan], jobs: list[JobPlan], overrides: dict[str, Any]
) -> tuple[Simulation, Outcome, dict[str, Any]]:
    sim = Simulation(nodes, jobs, overrides=overrides, seed=1)
    outcome = sim.run()
    return sim, outcome, figures(outcome)


def one_node_three_jobs(overrides: dict[str, Any]) -> tuple[Simulation, Outcome, dict[str, Any]]:
    """One 4-CPU node. Two 2-CPU jobs fill it at 0 (ending at 10 and 20); a 4-CPU job
    arrives at 1 and can start only at 20, when the node is empty again."""
    nodes = [NodePlan("n1", 4.0, 16 * GIB)]
    jobs = [job(0, 2, 10), job(0, 2, 20), job(1, 4, 5, memory_mb=2 * GIB)]
    return simulate(nodes, jobs, overrides)


def test_one_node_three_jobs_start_and_end_when_worked_out_by_hand() -> None:
    sim, outcome, fig = one_node_three_jobs(GREEDY)
    assert outcome.started_s == [0, 0, 20]
    assert outcome.ended_s == [10, 20, 25]
    assert fig["unfinished"] == 0
    assert fig["makespan_s"] == 25
    # work 2x10 + 2x20 + 4x5 = 80 CPU-s on 4 CPUs, and the second job ends at 20 at best
    assert fig["lower_bound_s"] == 20
    assert fig["makespan_ratio"] == 1.25
    assert fig["last_start_s"] == 20
    # Everything ended: nothing of it is left in the state's memory.
    state = sim.state
    assert state.jobs == {} and len(state.archive) == 3
    assert not state.changes and not state.queue
    assert all(n.allocated.cpu == 0 and not n.running_jobs for n in state.nodes.values())


def test_waits_are_given_overall_and_by_size_class() -> None:
    _sim, _outcome, fig = one_node_three_jobs(GREEDY)
    wait = fig["wait"]
    assert wait["all"] == {"jobs": 3, "mean_s": 6.333, "p50_s": 0, "p99_s": 18.62, "max_s": 19}
    assert wait["<16"]["jobs"] == 3
    assert wait["16+"] == {"jobs": 0, "mean_s": 0, "p50_s": 0, "p99_s": 0, "max_s": 0}


def test_use_is_integrated_over_time_and_over_the_pending_time() -> None:
    _sim, _outcome, fig = one_node_three_jobs(GREEDY)
    # CPU: full for 10 s, half for 10 s, full for 5 s: 20 of 25 CPU-s x 4.
    assert fig["cpu_use"] == pytest.approx(0.8)
    # The 4-CPU job waits from 1 to 20: full for 9 s, then half for 10 s.
    assert fig["pending_s"] == 19
    assert fig["cpu_use_while_pending"] == pytest.approx(14 / 19, abs=1e-5)
    # Memory while pending: 2 GiB of 16 for 9 s, then 1 GiB for 10 s.
    assert fig["memory_use_while_pending"] == pytest.approx((9 / 8 + 10 / 16) / 19, abs=1e-5)
    assert fig["fragmentation"] == {"jobs": 0, "events": 0, "time_share": 0.0}
    assert fig["reserved_idle_share"] == 0.0


def test_free_cpu_on_a_reserved_node_counts_as_reserved_idle() -> None:
    """With reservations the waiting 4-CPU job reserves the node: from 10 to 20 its two
    free CPUs are kept for it (the job would run the same without, but no other job
    could use them either)."""
    _sim, outcome, fig = one_node_three_jobs(POLICIES["default"])
    assert outcome.started_s == [0, 0, 20]
    assert outcome.integrals.reserved_idle_cpu == pytest.approx(20)
    assert fig["reserved_idle_share"] == pytest.approx(20 / (4 * 25))
    assert fig["reserved_idle_cpu_h"] == pytest.approx(20 / 3600, abs=1e-4)


def test_a_job_that_fits_the_total_free_room_but_no_node_is_fragmented() -> None:
    """Two 4-CPU nodes each run a 3-CPU job until 10. A 2-CPU job arriving at 1 fits the
    2 free CPUs in all but on neither node. A 1-CPU job starts at 2 and ends at 5:
    meanwhile only 1 CPU is free in all, so the 2-CPU job enters the condition twice."""
    nodes = [NodePlan("n1", 4.0, 16 * GIB), NodePlan("n2", 4.0, 16 * GIB)]
    jobs = [job(0, 3, 10), job(0, 3, 10), job(1, 2, 5), job(2, 1, 3)]
    _sim, outcome, fig = simulate(nodes, jobs, GREEDY)
    assert outcome.started_s == [0, 0, 10, 2]
    assert outcome.ended_s == [10, 10, 15, 5]
    assert fig["pending_s"] == 9
    frag = fig["fragmentation"]
    assert frag["jobs"] == 1
    assert frag["events"] == 2
    assert frag["time_share"] == pytest.approx(6 / 9, abs=1e-5)


def test_a_job_no_node_can_hold_ends_the_run_unfinished() -> None:
    nodes = [NodePlan("n1", 4.0, 16 * GIB)]
    _sim, outcome, fig = simulate(nodes, [job(0, 1, 10), job(0, 8, 10)], GREEDY)
    assert outcome.started_s == [0, None]
    assert fig["unfinished"] == 1
    assert fig["wait"]["all"]["jobs"] == 1


def test_the_lower_bound_is_the_work_or_the_latest_possible_end() -> None:
    nodes = [NodePlan("n1", 4.0, 16 * GIB)]
    assert work_bound(nodes, [job(0, 4, 10), job(0, 4, 10)]) == 20
    assert work_bound(nodes, [job(0, 1, 10), job(5, 1, 30)]) == 35


def test_percentile_is_linear_between_ranks() -> None:
    assert percentile([], 99) == 0
    assert percentile([5], 99) == 5
    assert percentile([0, 10], 50) == 5
    assert percentile([3, 1, 2], 100) == 3


def test_the_size_mix_puts_six_percent_of_jobs_and_two_fifths_of_the_work_at_16_cpus() -> None:
    assert sum(SIZE_MIX.values()) == pytest.approx(100)
    large = {cpu: w for cpu, w in SIZE_MIX.items() if cpu >= 16}
    assert sum(large.values()) == pytest.approx(6)
    work = sum(cpu * w for cpu, w in SIZE_MIX.items())
    assert sum(cpu * w for cpu, w in large.items()) / work == pytest.approx(0.418, abs=0.001)


def test_workloads_are_fixed_by_their_seed() -> None:
    assert steady(1, 50) == steady(1, 50)
    assert steady(1, 50) != steady(2, 50)
    jobs = drain(3, 50)
    assert all(j.arrival_s == 0 for j in jobs)
    assert all(j.runtime_s < j.expected_runtime_s * 1.0001 < j.timeout_s for j in jobs)
    assert sum(n.cpu for n in cluster()) == 2240


def test_the_command_prints_figures_and_goals_per_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = main(["--jobs", "40", "--seeds", "1", "--policies", "greedy,default"])
    assert set(doc["steady"]["by_policy"]) == {"greedy", "default"}
    assert doc["drain"]["jobs"] == 12
    assert doc["drain"]["by_policy"]["default"]["seeds"]["1"]["unfinished"] == 0
    goal = doc["goals"]["default"]["p99_wait_48_s"]
    assert set(goal) == {"median", "target", "met"}
    assert '"goals"' in capsys.readouterr().out
