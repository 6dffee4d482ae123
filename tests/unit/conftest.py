from __future__ import annotations

import pytest

from tests.unit.test_cluster import FakeClock


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock()
