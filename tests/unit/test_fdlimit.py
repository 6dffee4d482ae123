"""Raising the open-files limit and counting open descriptors."""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Iterator

import pytest

from common.fdlimit import open_fd_count, raise_nofile_limit


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield before
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_limit_is_raised_to_the_hard_one_and_logged(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    hard = limits[1]
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip("needs a finite hard limit of at least 512")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    with caplog.at_level(logging.INFO, logger="common.fdlimit"):
        assert raise_nofile_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert f"open files limit: {hard} (raised from 256" in caplog.text
    # Already there: nothing to change.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="common.fdlimit"):
        assert raise_nofile_limit() == hard
    assert "(the hard limit)" in caplog.text


def test_open_descriptors_are_counted() -> None:
    before = open_fd_count()
    if before is None:
        pytest.skip("no /proc/self/fd or /dev/fd here")
    r, w = os.pipe()
    try:
        assert open_fd_count() == before + 2
    finally:
        os.close(r)
        os.close(w)
