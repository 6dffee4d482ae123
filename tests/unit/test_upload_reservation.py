"""Uploads reserve their declared size: one that does not fit next to the uploads in
flight is refused, what an upload has written is no longer promised, and other writes
are judged by the free space itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.errors import Unavailable
from scheduler.store.sqlite import SQLiteStore
from scheduler.writeguard import WriteGuard


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_uploads_in_flight_hold_their_space_until_written_or_ended(tmp_path: Path) -> None:
    guard = WriteGuard(tmp_path, SQLiteStore(tmp_path / "berth.db"), reserve_bytes=0)
    # Halves of what is free now, with room to spare for whatever else writes meanwhile.
    half = _free(tmp_path) // 2 - 64 * 1024 * 1024
    with guard.reserve(half) as first:
        with guard.reserve(half):
            assert guard.promised_bytes == 2 * half
            with pytest.raises(Unavailable) as refused, guard.reserve(half):
                pass
            assert "reserved for uploads in flight" in refused.value.message
            # Other writes are judged by the free space, not by promises.
            assert guard.refusal() is None
        first.wrote(half // 2)
        assert guard.promised_bytes == half - half // 2
        with guard.reserve(half):
            pass
    assert guard.promised_bytes == 0
