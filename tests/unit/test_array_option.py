"""The ``--array`` syntax of `berth submit`: Slurm's 0-LAST%MAX, or a count."""

from __future__ import annotations

import pytest

from cli.array_cmd import parse_array
from common.models import ArraySpec


@pytest.mark.parametrize(
    ("text", "count", "limit"),
    [
        ("0-99%10", 100, 10),
        ("0-99", 100, None),
        ("0-0", 1, None),
        ("100", 100, None),
        ("7%2", 7, 2),
        (" 0-9 ", 10, None),
        ("0-99999", 100_000, None),
    ],
)
def test_ranges_and_counts_give_the_tasks_and_their_limit(
    text: str, count: int, limit: int | None
) -> None:
    assert parse_array(text) == ArraySpec(count=count, max_concurrent=limit)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("5-9", "start at 0"),
        ("1-3%2", "start at 0"),
        ("0", "1 to 100000"),
        ("0-100000", "1 to 100000"),
        ("200000", "1 to 100000"),
        ("10%0", "%MAX must be"),
        ("1,3,5", "is not N"),
        ("0-9:2", "is not N"),
        ("", "is not N"),
        ("-3", "is not N"),
    ],
)
def test_what_it_cannot_take_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_array(text)
