"""Dashboard sessions: each token's are capped on their own, and one token's logins
never end another token's session."""

from __future__ import annotations

import pytest

from common.errors import TooManyRequests
from scheduler.sessions import Sessions


def test_a_tokens_oldest_session_ends_past_its_cap() -> None:
    book = Sessions(per_token=3, total=100)
    other = book.open("admin")
    opened = [book.open("reader") for _ in range(5)]
    assert [book.get(s.id) is not None for s in opened] == [False, False, True, True, True]
    assert book.get(other.id) is other


def test_when_every_slot_is_taken_a_new_login_is_refused_not_another_tokens_session() -> None:
    book = Sessions(per_token=2, total=4)
    held = [book.open(token) for token in ("a", "a", "b", "b")]
    with pytest.raises(TooManyRequests):
        book.open("c")
    assert all(book.get(s.id) is s for s in held)
    # A token at its own cap still replaces its own oldest session.
    newer = book.open("a")
    assert book.get(held[0].id) is None and book.get(newer.id) is newer


def test_closing_a_session_frees_its_tokens_slot() -> None:
    book = Sessions(per_token=1, total=10)
    first = book.open("a")
    book.close(first.id)
    second = book.open("a")
    assert book.get(second.id) is second
