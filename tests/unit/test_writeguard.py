"""The write guard's decisions: the disk's reserve, the store's failure, bookkeeping."""

from __future__ import annotations

from pathlib import Path

from scheduler.store.sqlite import SQLiteStore
from scheduler.writeguard import (
    RESERVE_MAX_BYTES,
    RESERVE_MIN_BYTES,
    WriteGuard,
    default_reserve,
)

GIB = 1024**3


def test_the_default_reserve_is_a_share_of_the_disk_within_bounds() -> None:
    assert default_reserve(8 * 1024 * 1024) == RESERVE_MIN_BYTES
    assert default_reserve(GIB) == GIB // 20
    assert default_reserve(1000 * GIB) == RESERVE_MAX_BYTES


def test_writes_are_taken_while_the_disk_has_more_than_the_reserve(tmp_path: Path) -> None:
    guard = WriteGuard(tmp_path, SQLiteStore(tmp_path / "berth.db"), reserve_bytes=0)
    assert guard.refusal() is None
    assert guard.status() is None


def test_under_the_reserve_clients_are_refused_and_agents_bookkeeping_is_not(
    tmp_path: Path,
) -> None:
    guard = WriteGuard(tmp_path, SQLiteStore(tmp_path / "berth.db"), reserve_bytes=2**62)
    why = guard.refusal()
    assert why is not None and "reserve" in why and str(tmp_path) in why
    assert guard.refusal(bookkeeping=True) is None
    assert guard.status() == {"status": "unavailable", "cause": why}


def test_a_failing_store_refuses_every_write_with_its_cause(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "berth.db")
    guard = WriteGuard(tmp_path, store, reserve_bytes=0)
    store.failure = "database or disk is full"
    for bookkeeping in (False, True):
        why = guard.refusal(bookkeeping=bookkeeping)
        assert why is not None and "database or disk is full" in why
    store.failure = None
    assert guard.refusal() is None


def test_a_state_dir_not_made_yet_leaves_the_decision_to_the_store(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    guard = WriteGuard(missing, SQLiteStore(missing / "berth.db"), reserve_bytes=2**62)
    assert guard.refusal() is None
