"""Reservations and size-aware node choice, on plain node and job values."""

from __future__ import annotations

import random

import pytest

from scheduler.placement import RESERVED, Pass, score_binpack, size_scale
from scheduler.reservations import Held, Release, earliest_start, plan, releases_of
from tests.unit.test_placement import NOW, job, node, placed_on, run


def ends(*items: tuple[float, float]) -> list[Release]:
    """Releases of (seconds from now, cpu), 1 GiB each."""
    return sorted((Release(NOW + at, cpu, 1024, 0) for at, cpu in items), key=lambda r: r.end)


# --- when a node first has room --------------------------------------------------------


def test_a_node_with_room_now_can_start_the_job_now() -> None:
    n = node(cpu=4, total_cpu=8)
    assert earliest_start(n, ends((60, 4)), job(cpu=4), NOW) == (NOW, (4, 16_384, 0, 4))


def test_the_start_is_the_end_that_frees_enough() -> None:
    n = node(cpu=1, total_cpu=8, memory_mb=8192, total_memory_mb=16_384)
    found = earliest_start(n, ends((60, 2), (300, 3), (900, 2)), job(cpu=6), NOW)
    assert found is not None and found[0] == NOW + 300


def test_a_job_past_its_estimate_is_expected_back_now() -> None:
    releases = releases_of([(NOW - 1000, 600.0, 2.0, 512, 0), (NOW, 60.0, 1.0, 512, 0)])
    assert [r.end for r in releases] == [NOW - 400, NOW + 60]
    found = earliest_start(node(cpu=0, total_cpu=2), releases, job(cpu=2), NOW)
    assert found is not None and found[0] == NOW


def test_a_node_too_small_whatever_ends_never_has_room() -> None:
    assert earliest_start(node(cpu=0, total_cpu=2), ends((60, 2)), job(cpu=4), NOW) is None


def test_a_node_in_cooldown_has_room_no_sooner_than_the_cooldown_ends() -> None:
    n = node(cpu=8, cooldown_until=NOW + 120)
    found = earliest_start(n, [], job(cpu=2), NOW)
    assert found is not None and found[0] == NOW + 120


# --- where a job is reserved -------------------------------------------------------------


def test_the_reservation_goes_where_the_job_could_start_first() -> None:
    nodes = [node("late", cpu=0, total_cpu=8), node("soon", cpu=0, total_cpu=8)]
    releases = {"late": ends((900, 8)), "soon": ends((60, 8))}
    chosen = plan(nodes, releases.__getitem__, job(cpu=8), NOW, {}, size_aware=True)
    assert chosen is not None and chosen.node_id == "soon"
    assert chosen.held.start == NOW + 60 and chosen.held.cpu == 0


def test_between_equal_starts_the_smaller_node_is_reserved_when_size_aware() -> None:
    nodes = [node("big", cpu=0, total_cpu=64), node("small", cpu=0, total_cpu=16)]
    releases = {"big": ends((60, 64)), "small": ends((60, 16))}
    chosen = plan(nodes, releases.__getitem__, job(cpu=16), NOW, {}, size_aware=True)
    assert chosen is not None and chosen.node_id == "small"


def test_a_node_not_taking_jobs_or_not_matching_is_never_reserved() -> None:
    nodes = [node("drained", cpu=0, total_cpu=8, draining=True), node("other", labels={"a": "b"})]
    chosen = plan(
        nodes, lambda _: ends((60, 8)), job(cpu=4, constraints={"a": "c"}), NOW, {}, size_aware=True
    )
    assert chosen is None


def test_a_second_job_shares_a_reserved_node_only_at_the_same_start() -> None:
    nodes = [node("n1", cpu=0, total_cpu=16, slots=8)]
    first = plan(nodes, lambda _: ends((60, 16)), job("a", cpu=8), NOW, {}, size_aware=True)
    assert first is not None
    held = {"n1": first.held}
    second = plan(nodes, lambda _: ends((60, 16)), job("b", cpu=8), NOW, held, size_aware=True)
    assert second is not None and second.held.start == NOW + 60
    assert second.held.jobs == ["a", "b"] and second.held.cpu == 0
    third = plan(
        nodes, lambda _: ends((60, 16)), job("c", cpu=1), NOW, {"n1": second.held}, size_aware=True
    )
    assert third is None


# --- what may use a reserved node ----------------------------------------------------------


def test_a_reserved_node_takes_jobs_that_end_before_it_or_fit_beside_it() -> None:
    held = Held(start=NOW + 600, cpu=2, memory_mb=4096, gpus=0, slots=2, jobs=["big"])
    assert held.admits(job(cpu=6, estimate=600.0), NOW)
    assert not held.admits(job(cpu=6, estimate=601.0), NOW)
    assert held.admits(job(cpu=2, estimate=10_000.0), NOW)
    held.take(job(cpu=2, estimate=10_000.0), NOW)
    assert held.cpu == 0 and held.slots == 1
    assert not held.admits(job(cpu=1, estimate=10_000.0), NOW)
    held.take(job(cpu=6, estimate=60.0), NOW)  # gone before the start: nothing taken
    assert held.cpu == 0 and held.slots == 1


def test_a_pass_keeps_a_held_node_for_the_reserved_job() -> None:
    one_pass = Pass([node("n1", cpu=4, total_cpu=8)], now=NOW, rng=random.Random(0))
    one_pass.hold("n1", Held(start=NOW + 300, cpu=0, memory_mb=0, gpus=0, slots=0, jobs=["big"]))
    assert one_pass.offer(job("long", cpu=1, estimate=3600.0)) == "no node fits the request"
    assert one_pass.pending(job("long", cpu=1, estimate=3600.0)) == {RESERVED: 1}
    decision = one_pass.offer(job("short", cpu=1, estimate=60.0))
    assert not isinstance(decision, str) and decision.node_id == "n1"


# --- size-aware binpack ----------------------------------------------------------------------


def test_size_aware_binpack_puts_a_small_job_on_a_small_node() -> None:
    nodes = [
        node("big", cpu=40, total_cpu=64, memory_mb=160_000, total_memory_mb=256_000),
        node("small", cpu=8, total_cpu=8, memory_mb=32_000, total_memory_mb=32_000),
    ]
    assert placed_on(run(nodes, [job(cpu=1, memory_mb=4096)])) == {"j1": "big"}
    assert placed_on(run(nodes, [job(cpu=1, memory_mb=4096)], size_aware=True)) == {"j1": "small"}


def test_size_aware_scores_measure_room_in_the_largest_nodes_units() -> None:
    nodes = [node("big", cpu=8, total_cpu=64), node("small", cpu=8, total_cpu=8)]
    scale = size_scale(nodes)
    assert scale == (64.0, 16_384.0)
    request = job(cpu=4)
    assert score_binpack(nodes[0], request, scale) == pytest.approx(
        score_binpack(nodes[1], request, scale)
    )
